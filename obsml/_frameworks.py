"""What obsml knows of web frameworks: the route a request matched, and the exceptions a framework
turns into a 5xx response itself, which therefore never reach obsml's frame.

A framework is looked up in ``sys.modules`` when a middleware is created (the app it wraps exists
by then, so its framework is imported) and hooked there, once; obsml never imports one. Each hook
is the framework's documented one where it has one, only reads, and calls on unchanged:

============  ===============================================  =====================================
framework     route (``http.route``, the framework's spelling)  exceptions it answers itself
============  ===============================================  =====================================
Flask         the request's URL rule, in ``start_response``     ``got_request_exception`` signal
Django        ``request.resolver_match.route``, when the        ``got_request_exception`` signal
              handler obsml wraps resolves the URL
Starlette     ``scope["route"]``, after the app                 none: they escape through obsml
Litestar      ``scope["path_template"]``, after the app         ``app.after_exception`` hook
Falcon        ``req.uri_template``, from a middleware           ``app.set_error_reporter`` (4.4+)
              component's ``process_response``
============  ===============================================  =====================================

A client error the framework renders from its own HTTP exception (a 404, a validation 400) is not
an exception event, as Flask's and Django's signals never announce one. Any other exception heard
is an event, and the response the framework then sends decides the span's status.
"""

from __future__ import annotations

import sys
from typing import Any

from ._capture import CURRENT_CAPTURE
from ._stats import guarded
from ._types import Scope


def hook_wsgi_app(app: Any) -> None:
    """Hook the framework of the WSGI app a middleware wraps (when obsml knows it)."""
    with guarded("hooking into a web framework"):
        _hook_flask(app)
        _hook_django(app)
        _hook_falcon(app)


def hook_asgi_app(app: Any) -> bool:
    """Hook the framework of the ASGI app a middleware wraps; True when the first request's scope
    must be shown to :func:`hook_scope` too (obsml inside a Litestar app, as its middleware)."""
    with guarded("hooking into a web framework"):
        _hook_django(app)
        _hook_falcon(app)
        litestar = sys.modules.get("litestar")
        if litestar is not None:
            if isinstance(app, litestar.Litestar):
                _hook_litestar(app)
            else:
                return True
    return False


def hook_scope(scope: Scope) -> None:
    """Litestar builds the middleware it is given inside each route, out of reach of the app; the
    app is in the scope of every request, and hooking it before the first request is in time."""
    with guarded("hooking into a web framework"):
        app = scope.get("litestar_app")
        if app is not None:
            _hook_litestar(app)


def wsgi_route(environ: dict[str, Any]) -> str | None:
    """Flask's URL rule: werkzeug keeps the request, with its matched rule, in the environ until
    the request context ends (still there when the app calls ``start_response``)."""
    request = environ.get("werkzeug.request")
    if request is None:  # not werkzeug: nothing to ask
        return None
    rule = getattr(getattr(request, "url_rule", None), "rule", None)
    if not isinstance(rule, str):
        return None
    root = getattr(request, "root_path", "")
    return root + rule if root else rule


def asgi_route(scope: Scope) -> str | None:
    """Starlette and FastAPI put the matched route in the scope, Litestar its path template."""
    route = scope.get("route")
    if route is not None:
        path = getattr(route, "path_format", None) or getattr(route, "path", None)
    else:
        path = scope.get("path_template")
    if not isinstance(path, str):
        return None
    root = scope.get("root_path")
    return root + path if root else path


def _record_failure(exc: BaseException, route: str | None = None) -> None:
    """An exception escaped the app's code into the framework, which answers it. The event says so;
    the response the framework then sends says whether the request failed (Falcon's and Litestar's
    hooks also hear exceptions the app's own error handlers turn into, say, a 422)."""
    capture = CURRENT_CAPTURE.get()
    if capture is not None:
        capture.note_exception(exc, escaped=True)
        if route is not None and capture.route is None:
            capture.route = route


# Flask


def _hook_flask(app: Any) -> None:
    flask = sys.modules.get("flask")
    if flask is None:
        return
    owner = app if isinstance(app, flask.Flask) else getattr(app, "__self__", None)  # app or app.wsgi_app
    if isinstance(owner, flask.Flask):
        # The hook Sentry's Flask integration uses too; sent outside debug mode, where Flask answers 500.
        flask.got_request_exception.connect(_flask_exception, owner, weak=False)


def _flask_exception(sender: object, exception: BaseException, **_: object) -> None:
    with guarded("hearing a Flask exception"):
        _record_failure(exception)


# Django


def _hook_django(app: Any) -> None:
    signals = sys.modules.get("django.core.signals")
    if signals is None:
        return
    # Global, so connected once (dispatch_uid): it records onto whichever request is current.
    signals.got_request_exception.connect(_django_exception, weak=False, dispatch_uid="obsml")
    base = sys.modules.get("django.core.handlers.base")
    if base is not None and isinstance(app, base.BaseHandler) and not isinstance(app.resolve_request, _DjangoRoute):
        # No signal says which URL pattern matched; the handler's resolve_request is where Django
        # sets request.resolver_match, for WSGI and ASGI alike. Only this handler is wrapped.
        app.resolve_request = _DjangoRoute(app.resolve_request)


def _django_exception(sender: object, request: Any = None, **_: object) -> None:
    # Django sends the request only: the exception is the one being handled (asgiref re-raises it
    # in the thread where the async handler runs this).
    exc = sys.exc_info()[1]
    if exc is None:
        return
    with guarded("hearing a Django exception"):
        _record_failure(exc, _django_route(request))


class _DjangoRoute:
    """The handler's ``resolve_request``, then the matched route noted on the current request."""

    __slots__ = ("resolve",)

    def __init__(self, resolve: Any) -> None:
        self.resolve = resolve

    def __call__(self, request: Any) -> Any:
        match = self.resolve(request)  # Resolver404 and the rest go on unchanged
        capture = CURRENT_CAPTURE.get()
        if capture is not None:
            with guarded("reading a Django route"):
                capture.route = _django_route(request)
        return match


def _django_route(request: Any) -> str | None:
    """Django's own route (``items/<int:item_id>``), rooted like the path: ``/items/<int:item_id>``."""
    route = getattr(getattr(request, "resolver_match", None), "route", None)
    if not isinstance(route, str):
        return None
    # A re_path route starts with its regex anchor; the leading "/" already says "from the root".
    return f"{request.path.removesuffix(request.path_info)}/{route.removeprefix('^')}"


# Litestar


def _hook_litestar(app: Any) -> None:
    hooks = app.after_exception  # read on every exception, so a hook added late still runs
    if not any(isinstance(hook, _LitestarHook) for hook in hooks):
        hooks.append(_LitestarHook(sys.modules["litestar.exceptions"].HTTPException))


class _LitestarHook:
    """An ``after_exception`` hook: Litestar's documented place to hear an exception it answers."""

    __slots__ = ("http_exception",)

    def __init__(self, http_exception: type[Exception]) -> None:
        self.http_exception = http_exception

    async def __call__(self, exc: Exception, scope: Scope) -> None:
        with guarded("hearing a Litestar exception"):
            if not isinstance(exc, self.http_exception) or exc.status_code >= 500:  # type: ignore[attr-defined]
                _record_failure(exc)


# Falcon


def _hook_falcon(app: Any) -> None:
    falcon = sys.modules.get("falcon")
    if falcon is None or not isinstance(app, falcon.App):
        return
    previous = getattr(app, "_report_error", None)  # Falcon keeps one reporter: chain the app's own
    if isinstance(previous, _FalconReporter):
        return  # hooked by another obsml middleware already
    falcon_asgi = sys.modules.get("falcon.asgi")
    is_asgi = falcon_asgi is not None and isinstance(app, falcon_asgi.App)
    app.add_middleware(_FalconAsyncRoute() if is_asgi else _FalconRoute())
    if hasattr(app, "set_error_reporter"):  # Falcon 4.4+
        app.set_error_reporter(_FalconReporter(previous, falcon.HTTPError, falcon.HTTPStatus))


def _falcon_route(req: Any) -> str | None:
    template = req.uri_template  # None until routed, and for a request no route matched
    if template is None:
        return None
    root = req.root_path
    return root + template if root else template  # type: ignore[no-any-return]


def _note_falcon_route(req: Any) -> None:
    capture = CURRENT_CAPTURE.get()
    if capture is not None:
        with guarded("reading a Falcon route"):
            route = _falcon_route(req)
            if route is not None:
                capture.route = route


class _FalconRoute:
    """A WSGI middleware component that only reads the route the request matched."""

    def process_response(self, req: Any, resp: Any, resource: object, req_succeeded: bool) -> None:
        _note_falcon_route(req)


class _FalconAsyncRoute:
    """The same for a ``falcon.asgi.App``, whose components must be coroutines."""

    async def process_response(self, req: Any, resp: Any, resource: object, req_succeeded: bool) -> None:
        _note_falcon_route(req)


class _FalconReporter:
    """Falcon's error reporter: every exception it handles, before the app's own reporter."""

    __slots__ = ("http_error", "http_status", "previous")

    def __init__(self, previous: Any, http_error: type[Exception], http_status: type[Exception]) -> None:
        self.previous = previous
        self.http_error = http_error
        self.http_status = http_status

    def __call__(self, req: Any, error: Exception, params: dict[str, Any], handled: bool) -> None:
        with guarded("hearing a Falcon exception"):
            if not isinstance(error, self.http_status) and (
                not isinstance(error, self.http_error) or error.status_code >= 500  # type: ignore[attr-defined]
            ):
                _record_failure(error, _falcon_route(req))
        if self.previous is not None:
            self.previous(req, error, params, handled)
