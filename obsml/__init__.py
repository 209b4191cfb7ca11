"""obsml: observability for ML model servers.

Wrap an ASGI app with :class:`ObsmlMiddleware` or a WSGI app with :class:`ObsmlWSGIMiddleware`;
every request becomes an OpenTelemetry span with its bodies, correlation id, timings and
exceptions. See the README.
"""

from __future__ import annotations

from .__version__ import __version__
from ._capture import RequestIds, current_request, record_exception
from ._collector import Collected, Collector
from ._contracts import ObjectStore
from ._exceptions import ConfigError, ObsmlError, PluginError, PluginImportError
from ._pipeline import flush
from ._settings import Settings
from ._sinks import ObjectData, Sink
from ._stats import stats
from .asgi import ObsmlMiddleware
from .wsgi import ObsmlWSGIMiddleware

__all__ = [
    "Collected",
    "Collector",
    "ConfigError",
    "ObjectData",
    "ObjectStore",
    "ObsmlError",
    "ObsmlMiddleware",
    "ObsmlWSGIMiddleware",
    "PluginError",
    "PluginImportError",
    "RequestIds",
    "Settings",
    "Sink",
    "__version__",
    "current_request",
    "flush",
    "record_exception",
    "stats",
]

for _name in __all__:
    if not _name.startswith("__"):
        globals()[_name].__module__ = "obsml"
del _name
