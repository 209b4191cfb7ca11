"""``obsml run``: serve any ASGI or WSGI app under uvicorn, gunicorn or granian, wrapped by obsml.

The server is given the import string of :mod:`obsml._served`, which each worker imports (forked
or spawned): it loads the app named in ``OBSML_RUN_APP`` and wraps it. This process becomes the
server (``exec``), so signals reach the server as if it had been started directly.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, Literal

from ._exceptions import ConfigError

Interface = Literal["asgi", "wsgi"]
DEFAULT_SERVER: dict[Interface, str] = {"asgi": "uvicorn", "wsgi": "gunicorn"}
APP_VARIABLE = "OBSML_RUN_APP"
INTERFACE_VARIABLE = "OBSML_RUN_INTERFACE"
SERVED = "obsml._served:app"
GUNICORN_GRACEFUL_TIMEOUT = 30  # gunicorn's default --graceful-timeout
_GRACE_BEYOND_FLUSH = 5  # for the requests in flight, besides the flush


def gunicorn_graceful_timeout() -> int:
    """A gunicorn ``graceful_timeout`` that leaves a worker the whole ``OBSML_FLUSH_TIMEOUT`` at exit."""
    from ._settings import Settings

    return max(GUNICORN_GRACEFUL_TIMEOUT, math.ceil(Settings.load().flush_timeout) + _GRACE_BEYOND_FLUSH)


def load_app(target: str) -> Any:
    """The object ``module:attribute`` names, imported as the servers import it (from the current directory)."""
    module_name, colon, attribute = target.partition(":")
    if not colon or not module_name or not attribute:
        raise ConfigError(f"{target!r} is not an app: expected module:attribute, such as main:app")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            raise  # the module exists; something it imports does not: that error says what
        raise ConfigError(f"cannot import {module_name!r} from {os.getcwd()}: no such module") from None
    app: Any = module
    for name in attribute.split("."):
        try:
            app = getattr(app, name)
        except AttributeError:
            raise ConfigError(f"module {module_name!r} has no attribute {attribute!r}") from None
    return app


def interface_of(app: Any, target: str) -> Interface:
    """ASGI or WSGI, by the rule the README gives ("obsml run and gunicorn").

    obsml's own middleware says which it is. Otherwise the callable is the app itself (a function)
    or its class's ``__call__``: a coroutine function is ASGI (Starlette, FastAPI, Litestar, Django's
    ASGIHandler); a plain callable taking exactly two positional arguments is WSGI (Flask, Django's
    WSGIHandler, Falcon). Anything else cannot be told apart, and ``--interface`` must say.
    """
    from .asgi import ObsmlMiddleware
    from .wsgi import ObsmlWSGIMiddleware

    if isinstance(app, ObsmlMiddleware):
        return "asgi"
    if isinstance(app, ObsmlWSGIMiddleware):
        return "wsgi"
    if not callable(app):
        raise ConfigError(f"{target} is not an ASGI or WSGI app: it is not callable (type {type(app).__name__})")
    plain = inspect.isroutine(app) or isinstance(app, functools.partial)
    call = app if plain else type(app).__call__
    if inspect.iscoroutinefunction(call):
        return "asgi"
    if _takes_exactly_two(app):
        return "wsgi"
    raise ConfigError(
        f"cannot tell whether {target} is an ASGI or a WSGI app (it is neither a coroutine function nor a "
        "callable of (environ, start_response)): pass --interface asgi or --interface wsgi"
    )


def _takes_exactly_two(app: Any) -> bool:
    try:
        signature = inspect.signature(app)
    except (TypeError, ValueError):  # a builtin without a signature
        return False
    try:
        signature.bind(None, None)
    except TypeError:
        return False
    try:
        signature.bind(None, None, None)
    except TypeError:
        return True
    return False


def server_command(server: str, interface: Interface, workers: int | None, options: Sequence[str]) -> list[str]:
    """The server's command line, serving :mod:`obsml._served`; the user's options after obsml's defaults."""
    command = [sys.executable, "-m", server]
    if workers is not None:
        command += ["--workers", str(workers)]
    if server == "uvicorn":
        if interface == "wsgi":
            raise ConfigError(
                "uvicorn serves WSGI apps only through a deprecated adapter, with no shutdown to flush in: "
                "use --server gunicorn or --server granian"
            )
        # The lifespan shutdown is obsml's flush (uvicorn skips atexit on SIGTERM): last, so it wins.
        return [*command, *options, "--lifespan", "on", SERVED]
    if server == "gunicorn":
        if interface == "asgi":
            command += ["--worker-class", "asgi"]  # gunicorn's own ASGI worker, with a lifespan shutdown
        grace = gunicorn_graceful_timeout()
        if grace > GUNICORN_GRACEFUL_TIMEOUT:  # only then: a user's config file may set it too
            command += ["--graceful-timeout", str(grace)]
        return [*command, *options, SERVED]
    return [*command, "--interface", interface, *options, SERVED]


def run(target: str, *, server: str | None, interface: Interface | None, workers: int | None,
        options: Sequence[str]) -> int:
    """Exec the server; returns (2) only when the app or the options are refused."""
    try:
        if interface is None:
            interface = interface_of(load_app(target), target)
        command = server_command(server or DEFAULT_SERVER[interface], interface, workers, options)
    except ConfigError as exc:
        print(f"obsml run: {exc}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, {**os.environ, APP_VARIABLE: target, INTERFACE_VARIABLE: interface})
