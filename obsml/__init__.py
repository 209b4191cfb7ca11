"""obsml: observability for ML model servers.

Wrap an ASGI app with :class:`ObsmlMiddleware` or a WSGI app with :class:`ObsmlWSGIMiddleware`;
every request becomes an OpenTelemetry span with its bodies, correlation id, timings and
exceptions. See the README.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .__version__ import __version__
from ._exceptions import ConfigError, ObsmlError, PluginError, PluginImportError

if TYPE_CHECKING:
    from ._capture import RequestIds, current_request, record_exception
    from ._collector import Collected, Collector
    from ._contracts import ObjectStore
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

# Imported on first use (PEP 562): the middleware pulls in OpenTelemetry's SDK and fsspec, which the
# ``obsml`` command line (``obsml --help``, ``obsml query``) does without.
_LAZY = {
    "Collected": "._collector", "Collector": "._collector", "ObjectData": "._sinks", "ObjectStore": "._contracts",
    "ObsmlMiddleware": ".asgi", "ObsmlWSGIMiddleware": ".wsgi", "RequestIds": "._capture", "Settings": "._settings",
    "Sink": "._sinks", "current_request": "._capture", "flush": "._pipeline", "record_exception": "._capture",
    "stats": "._stats",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'obsml' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    value.__module__ = "obsml"
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


for _name in ("ConfigError", "ObsmlError", "PluginError", "PluginImportError"):
    globals()[_name].__module__ = "obsml"
del _name
