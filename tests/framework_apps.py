"""The same small model server in Flask, Starlette, Django, Litestar and Falcon, each wrapped by obsml.

Every app has ``/items/<id>`` (a templated route), ``/fail`` (raises ``ModelFailed``, which the
framework answers with a 500 itself), ``/handled`` (catches ``ModelFailed``, records it with
``obsml.record_exception`` and answers 200) and ``/missing`` (the framework's own 404).
The factories take a store; gunicorn calls the WSGI ones as ``framework_apps:django_wsgi()``.
"""

from __future__ import annotations

from typing import Any

import django
import falcon
import falcon.asgi
from django.conf import settings
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application
from django.http import Http404, HttpRequest, JsonResponse
from django.urls import path
from flask import Flask, abort
from litestar import Litestar, get
from litestar import Response as LitestarResponse
from litestar.exceptions import NotFoundException
from litestar.middleware import DefineMiddleware
from litestar.params import FromPath
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse as StarletteJSON
from starlette.routing import Route

import obsml
from obsml import ObsmlMiddleware, ObsmlWSGIMiddleware


class ModelFailed(Exception):
    pass


class InputRefused(Exception):
    """Answered with a 422 by the app's own error handler (Litestar and Falcon apps: ``/refused``)."""


def _predict(item_id: int) -> dict[str, Any]:
    return {"item": item_id, "score": 0.5}


def _handled() -> dict[str, Any]:
    try:
        raise ModelFailed("primary model timed out; answered with the fallback")
    except ModelFailed as exc:
        return {"fallback": True, "recorded": obsml.record_exception(exc)}


def _store_options(store: str | None) -> dict[str, Any]:
    return {"service": "frameworks"} if store is None else {"service": "frameworks", "store": store}


# Flask: obsml wraps the Flask object itself here (tests/wsgi_apps.py wraps app.wsgi_app).

flask_app = Flask(__name__)


@flask_app.get("/items/<int:item_id>")
def flask_item(item_id: int) -> dict[str, Any]:
    return _predict(item_id)


@flask_app.get("/fail")
def flask_fail() -> dict[str, Any]:
    raise ModelFailed("model exploded in Flask")


@flask_app.get("/handled")
def flask_handled() -> dict[str, Any]:
    return _handled()


@flask_app.get("/missing")
def flask_missing() -> dict[str, Any]:
    abort(404)


def flask_wsgi(store: str | None = None) -> ObsmlWSGIMiddleware:
    return ObsmlWSGIMiddleware(flask_app, **_store_options(store))


# Starlette: obsml added as its middleware; the exception escapes through obsml on its own.


async def starlette_item(request: Request) -> StarletteJSON:
    return StarletteJSON(_predict(request.path_params["item_id"]))


async def starlette_fail(request: Request) -> StarletteJSON:
    raise ModelFailed("model exploded in Starlette")


async def starlette_handled(request: Request) -> StarletteJSON:
    return StarletteJSON(_handled())


async def starlette_missing(request: Request) -> StarletteJSON:
    raise HTTPException(404, "no such model")


def starlette_app(store: str) -> Starlette:
    app = Starlette(routes=[
        Route("/items/{item_id:int}", starlette_item),
        Route("/fail", starlette_fail),
        Route("/handled", starlette_handled),
        Route("/missing", starlette_missing),
    ])
    app.add_middleware(ObsmlMiddleware, **_store_options(store))
    return app


# Django: one settings object per process, this module is the URLconf.


def django_item(request: HttpRequest, item_id: int) -> JsonResponse:
    return JsonResponse(_predict(item_id))


def django_fail(request: HttpRequest) -> JsonResponse:
    raise ModelFailed("model exploded in Django")


def django_handled(request: HttpRequest) -> JsonResponse:
    return JsonResponse(_handled())


def django_missing(request: HttpRequest) -> JsonResponse:
    raise Http404("no such model")


urlpatterns = [
    path("items/<int:item_id>", django_item),
    path("fail", django_fail),
    path("handled", django_handled),
    path("missing", django_missing),
]

if not settings.configured:
    settings.configure(
        DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="obsml-tests-only",
        MIDDLEWARE=[], INSTALLED_APPS=[], LOGGING_CONFIG=None,
    )
    django.setup()


def django_wsgi(store: str | None = None) -> ObsmlWSGIMiddleware:
    return ObsmlWSGIMiddleware(get_wsgi_application(), **_store_options(store))


def django_asgi(store: str | None = None) -> ObsmlMiddleware:
    return ObsmlMiddleware(get_asgi_application(), **_store_options(store))


# Litestar: obsml around the whole app, or inside it as Litestar middleware.


@get("/items/{item_id:int}", sync_to_thread=False)
def litestar_item(item_id: FromPath[int]) -> dict[str, Any]:
    return _predict(item_id)


@get("/fail", sync_to_thread=False)
def litestar_fail() -> dict[str, Any]:
    raise ModelFailed("model exploded in Litestar")


@get("/handled", sync_to_thread=False)
def litestar_handled() -> dict[str, Any]:
    return _handled()


@get("/missing", sync_to_thread=False)
def litestar_missing() -> dict[str, Any]:
    raise NotFoundException("no such model")


@get("/refused", sync_to_thread=False)
def litestar_refused() -> dict[str, Any]:
    raise InputRefused("income must be a number")


def litestar_refusal(request: Any, exc: InputRefused) -> LitestarResponse[dict[str, str]]:
    return LitestarResponse({"refused": str(exc)}, status_code=422)


_LITESTAR = {
    "route_handlers": [litestar_item, litestar_fail, litestar_handled, litestar_missing, litestar_refused],
    "exception_handlers": {InputRefused: litestar_refusal},
}


def litestar_wrapped(store: str) -> ObsmlMiddleware:
    return ObsmlMiddleware(Litestar(**_LITESTAR), **_store_options(store))


def litestar_inside(store: str) -> Litestar:
    return Litestar(**_LITESTAR, middleware=[DefineMiddleware(ObsmlMiddleware, **_store_options(store))])


# Falcon: the same resources on a WSGI App and an ASGI App.


class FalconItem:
    def on_get(self, req: falcon.Request, resp: falcon.Response, item_id: int) -> None:
        resp.media = _predict(item_id)


class FalconFail:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise ModelFailed("model exploded in Falcon")


class FalconHandled:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = _handled()


class FalconMissing:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise falcon.HTTPNotFound(title="no such model")


class FalconRefused:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        raise InputRefused("income must be a number")


def falcon_refusal(req: Any, resp: falcon.Response, exc: InputRefused, params: Any) -> None:
    resp.status, resp.media = 422, {"refused": str(exc)}


async def falcon_refusal_async(req: Any, resp: falcon.Response, exc: InputRefused, params: Any) -> None:
    falcon_refusal(req, resp, exc, params)


class FalconAsync:
    def __init__(self, resource: Any) -> None:
        self.resource = resource

    async def on_get(self, req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        self.resource.on_get(req, resp, **params)


def _falcon_routes(app: Any, wrap: Any) -> Any:
    app.add_route("/items/{item_id:int}", wrap(FalconItem()))
    app.add_route("/fail", wrap(FalconFail()))
    app.add_route("/handled", wrap(FalconHandled()))
    app.add_route("/missing", wrap(FalconMissing()))
    app.add_route("/refused", wrap(FalconRefused()))
    app.add_error_handler(InputRefused, falcon_refusal_async if wrap is FalconAsync else falcon_refusal)
    return app


def falcon_wsgi(store: str | None = None) -> ObsmlWSGIMiddleware:
    return ObsmlWSGIMiddleware(_falcon_routes(falcon.App(), lambda r: r), **_store_options(store))


def falcon_asgi(store: str | None = None) -> ObsmlMiddleware:
    return ObsmlMiddleware(_falcon_routes(falcon.asgi.App(), FalconAsync), **_store_options(store))


def falcon_asgi_with_reporter(store: str, reported: list[tuple[str, bool]]) -> ObsmlMiddleware:
    """An app with its own error reporter, set before obsml sets its own (Falcon keeps one)."""
    app = _falcon_routes(falcon.asgi.App(), FalconAsync)
    app.set_error_reporter(lambda req, error, params, handled: reported.append((type(error).__name__, handled)))
    return ObsmlMiddleware(app, **_store_options(store))

