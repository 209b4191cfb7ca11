"""A gunicorn configuration that puts obsml around the app: ``gunicorn -c python:obsml.gunicorn app:app``.

Its ``post_worker_init`` hook wraps the app each worker serves (``worker.wsgi``; ``worker.asgi``
under gunicorn's own ``-k asgi`` worker) with obsml's middleware, configured from ``OBSML_*``:
after the app is loaded in the worker, with or without ``--preload``, in every worker gunicorn
starts or replaces. An app already wrapped by obsml is left alone.

``-c`` replaces gunicorn's default ``./gunicorn.conf.py``. To keep a configuration of your own,
name it in ``OBSML_GUNICORN_CONFIG``: it is run first, its settings become this module's, and its
own ``post_worker_init`` runs after obsml has wrapped the app. ``graceful_timeout`` is set above
``OBSML_FLUSH_TIMEOUT`` unless that configuration (or gunicorn's command line) sets it.
See the README, "obsml run and gunicorn".
"""

from __future__ import annotations

import os
import runpy
from collections.abc import Callable
from typing import Any

from ._run import gunicorn_graceful_timeout

__all__ = ["graceful_timeout", "post_worker_init"]


def _user_config() -> dict[str, Any]:
    path = os.environ.get("OBSML_GUNICORN_CONFIG")
    if not path:
        return {}
    # Run as gunicorn runs a config file, so the user's file behaves the same under us.
    return runpy.run_path(path, run_name="__config__")


_user = _user_config()
_user_post_worker_init: Callable[[Any], object] | None = _user.get("post_worker_init")
# gunicorn reads this module's names: the user's settings (never private names) become ours.
globals().update({name: value for name, value in _user.items()
                  if not name.startswith("_") and name != "post_worker_init"})

graceful_timeout: int = _user.get("graceful_timeout") or gunicorn_graceful_timeout()


def post_worker_init(worker: Any) -> None:
    """gunicorn's hook, in each worker once its app is loaded: wrap that app, then run the user's hook."""
    from .asgi import ObsmlMiddleware
    from .wsgi import ObsmlWSGIMiddleware

    if hasattr(worker, "asgi"):  # gunicorn's ASGI worker (-k asgi)
        if not isinstance(worker.asgi, ObsmlMiddleware):
            worker.asgi = ObsmlMiddleware(worker.asgi)
    elif not isinstance(worker.wsgi, ObsmlWSGIMiddleware):
        worker.wsgi = ObsmlWSGIMiddleware(worker.wsgi)
    if _user_post_worker_init is not None:
        _user_post_worker_init(worker)
