"""The app ``obsml run`` serves: imported in each server worker, it wraps ``OBSML_RUN_APP`` with obsml.

Settings come from ``OBSML_*``; ``OBSML_RUN_INTERFACE`` (asgi or wsgi) is what ``obsml run``
detected or was told.
"""

from __future__ import annotations

import os
from typing import Any

from ._exceptions import ConfigError
from ._run import APP_VARIABLE, INTERFACE_VARIABLE, interface_of, load_app


def _wrapped() -> Any:
    from .asgi import ObsmlMiddleware
    from .wsgi import ObsmlWSGIMiddleware

    target = os.environ.get(APP_VARIABLE)
    if not target:
        raise ConfigError(f"{APP_VARIABLE} is not set: serve obsml._served:app through obsml run")
    app = load_app(target)
    interface = os.environ.get(INTERFACE_VARIABLE) or interface_of(app, target)
    if isinstance(app, (ObsmlMiddleware, ObsmlWSGIMiddleware)):
        return app
    return ObsmlMiddleware(app) if interface == "asgi" else ObsmlWSGIMiddleware(app)


app = _wrapped()
