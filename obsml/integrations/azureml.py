"""Azure ML's inference server (``azmlinfsrv``) under obsml, with no change to the scoring script.

``GUNICORN_CMD_ARGS="-c python:obsml.integrations.azureml" azmlinfsrv --entry_script score.py``

azmlinfsrv serves a Flask app under gunicorn and has no place for a middleware, so this is a
gunicorn configuration: :mod:`obsml.gunicorn` (whose ``post_worker_init`` wraps each worker's app,
and which chains a configuration of your own named in ``OBSML_GUNICORN_CONFIG``) plus what the
server needs:

- correlation ids read from ``x-request-id``, then ``x-ms-client-request-id`` (unless
  ``OBSML_CORRELATION_HEADERS`` says otherwise), and obsml's id handed to the server as its
  ``x-request-id`` when the request has none: the span, ``x-correlation-id`` and the server's
  ``x-request-id`` carry the same id;
- an exception raised by ``run()`` (or its timeout), which the server turns into a 500 itself, put
  on the span as an ``exception`` event;
- ``print()`` output of the scoring script recorded with its request (``OBSML_CAPTURE_PRINT`` on
  unless set: Application Insights kept it as trace items, and the server's users relied on it).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable
from typing import Any

# Before obsml.gunicorn reads its settings; the workers inherit the environment.
os.environ.setdefault("OBSML_CORRELATION_HEADERS", "x-request-id,x-ms-client-request-id,x-correlation-id")
os.environ.setdefault("OBSML_CAPTURE_PRINT", "true")

from gunicorn.config import KNOWN_SETTINGS

import obsml.gunicorn as _gunicorn  # the module: it holds the settings of a configuration of the user's too

from .._capture import current_request, record_exception
from .._types import Environ, StartResponse, WSGIApp

__all__ = ["graceful_timeout", "post_worker_init"]

# gunicorn reads this module's names: obsml.gunicorn's settings, a configuration of the user's included.
globals().update({setting.name: getattr(_gunicorn, setting.name) for setting in KNOWN_SETTINGS
                  if setting.name != "post_worker_init" and hasattr(_gunicorn, setting.name)})
graceful_timeout: int = _gunicorn.graceful_timeout


class _ServerRequestId:
    """Hands obsml's correlation id to azmlinfsrv as ``x-request-id`` when the request has none
    (the server would make up a uuid of its own). Sits inside obsml's middleware."""

    __slots__ = ("app",)

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if "HTTP_X_REQUEST_ID" not in environ:
            ids = current_request()
            if ids is not None:
                environ["HTTP_X_REQUEST_ID"] = ids.correlation_id
        return self.app(environ, start_response)


def _recording_run_exceptions(invoke_run: Callable[..., Any]) -> Callable[..., Any]:
    from azureml_inference_server_http.server.user_script import UserScriptException, UserScriptTimeout

    @functools.wraps(invoke_run)
    def recorded(*args: Any, **kwargs: Any) -> Any:
        try:
            return invoke_run(*args, **kwargs)
        except UserScriptException as exc:  # the server answers 500 and keeps the exception to itself
            record_exception(exc.user_ex)
            raise
        except UserScriptTimeout as exc:
            record_exception(exc)
            raise

    return recorded


def post_worker_init(worker: Any) -> None:
    """gunicorn's hook in each worker: obsml around the app (obsml.gunicorn), then the server's parts."""
    _gunicorn.post_worker_init(worker)
    from azureml_inference_server_http.server.routes import main_blueprint

    middleware = worker.wsgi
    if not isinstance(middleware.app, _ServerRequestId):
        middleware.app = _ServerRequestId(middleware.app)
        user_script = main_blueprint.user_script
        user_script.invoke_run = _recording_run_exceptions(user_script.invoke_run)
