"""obsml: observability for ML model servers.

Wrap an ASGI app with :class:`ObsmlMiddleware`; every request becomes an OpenTelemetry span
with its bodies, correlation id, timings and exceptions. See the README.
"""

from __future__ import annotations

from .__version__ import __version__
from ._exceptions import ConfigError, ObsmlError, PluginError, PluginImportError
from ._pipeline import flush
from ._settings import Settings
from ._stats import stats
from .asgi import ObsmlMiddleware

__all__ = [
    "ConfigError",
    "ObsmlError",
    "ObsmlMiddleware",
    "PluginError",
    "PluginImportError",
    "Settings",
    "__version__",
    "flush",
    "stats",
]

for _name in __all__:
    if not _name.startswith("__"):
        globals()[_name].__module__ = "obsml"
del _name
