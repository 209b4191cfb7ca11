"""KServe's ModelServer under obsml, its own workers included.

Call :func:`instrument` at the top of the model's script, not under ``if __name__ == "__main__"``::

    import kserve
    from obsml.integrations import kserve as obsml_kserve

    obsml_kserve.instrument()

With ``--workers 2`` and more, KServe *spawns* its workers: each imports the script afresh
(without running its ``__main__`` block), so a call at the top wraps the app in every worker.
KServe builds its app in each worker from ``kserve.model_server:app``, adding its middleware,
routes and exception handlers to it; :func:`instrument` puts obsml around that whole app (its
500 handler included: a generic 500 keeps its body and correlation id) while passing those calls
through to it.
"""

from __future__ import annotations

from typing import Any

from ..asgi import ObsmlMiddleware

__all__ = ["instrument"]


class _ObsmlAroundApp(ObsmlMiddleware):
    """obsml around the whole FastAPI app, which KServe still configures through this object."""

    def __getattr__(self, name: str) -> Any:  # add_middleware, include_router, add_exception_handler...
        return getattr(self.app, name)


def instrument(**options: Any) -> None:
    """Wrap KServe's app (``kserve.model_server.app``) with obsml, once per process;
    ``options`` are :class:`obsml.Settings` fields, over the ``OBSML_*`` variables."""
    import kserve.model_server

    if not isinstance(kserve.model_server.app, ObsmlMiddleware):
        kserve.model_server.app = _ObsmlAroundApp(kserve.model_server.app, **options)
