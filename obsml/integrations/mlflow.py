"""MLflow's scoring server under obsml: ``mlflow models serve`` runs uvicorn on MLflow's own app,
with no place for a middleware, so serve this module's instead.

``OBSML_MLFLOW_MODEL_URI=./model uvicorn obsml.integrations.mlflow:app --port 5000``

``app`` is built when first read, in each worker: MLflow's app for the model at
``OBSML_MLFLOW_MODEL_URI`` (any URI ``mlflow.pyfunc.load_model`` takes), wrapped by obsml with
its ``OBSML_*`` settings. :func:`scoring_app` builds one in code. MLflow answers a failed
prediction itself (a 4xx or 500 with the error); obsml puts the model's exception on the span.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from .._capture import record_exception
from ..asgi import ObsmlMiddleware

__all__ = ["MODEL_URI_VARIABLE", "scoring_app"]

MODEL_URI_VARIABLE = "OBSML_MLFLOW_MODEL_URI"


def scoring_app(model_uri: str, **options: Any) -> ObsmlMiddleware:
    """MLflow's scoring app (``/invocations``, ``/ping``, ``/health``, ``/version``) for the model at
    ``model_uri``, wrapped by obsml; ``options`` are :class:`obsml.Settings` fields."""
    from mlflow.pyfunc import scoring_server

    # As `mlflow models serve` loads it (MLFLOW's model config variable included).
    model = scoring_server.load_model_with_mlflow_config(model_uri)
    model.predict = _recording_exceptions(model.predict)
    return ObsmlMiddleware(scoring_server.init(model), **options)


def _recording_exceptions(predict: Any) -> Any:
    # MLflow turns the model's exception into a response; the prediction runs in a thread that
    # carries the request's context (asyncio.to_thread), so obsml can still put it on the span.
    @functools.wraps(predict)
    def recorded(*args: Any, **kwargs: Any) -> Any:
        try:
            return predict(*args, **kwargs)
        except Exception as exc:
            record_exception(exc)
            raise

    return recorded


@functools.cache
def _app_from_environment() -> ObsmlMiddleware:
    model_uri = os.environ.get(MODEL_URI_VARIABLE)
    if not model_uri:
        from .._exceptions import ConfigError

        raise ConfigError(f"obsml.integrations.mlflow:app serves the model at {MODEL_URI_VARIABLE}, which is not set")
    return scoring_app(model_uri)


def __getattr__(name: str) -> Any:
    if name == "app":  # built on first use: importing the module loads no model
        return _app_from_environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
