"""Routes and the exceptions a framework answers itself, under real servers: gunicorn for the
Flask, Django and Falcon WSGI apps, uvicorn for the Starlette, Django, Litestar (obsml around the
app and inside it) and Falcon ASGI apps; and ``obsml.record_exception`` for an exception the app
handles."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import framework_apps
import httpx
import pytest
from conftest import running_gunicorn, running_server, span_by_correlation_id

import obsml
from obsml import ObsmlMiddleware
from obsml._types import Receive, Scope, Send


class Served(NamedTuple):
    name: str
    url: str
    store: Path
    item_route: str  # the framework's own spelling of /items/<id>


# name, how it is served, the route template as the framework spells it
FRAMEWORKS = {
    "flask": ("gunicorn", "flask_wsgi", "/items/<int:item_id>"),
    "starlette": ("uvicorn", "starlette_app", "/items/{item_id}"),
    "django-wsgi": ("gunicorn", "django_wsgi", "/items/<int:item_id>"),
    "django-asgi": ("uvicorn", "django_asgi", "/items/<int:item_id>"),
    "litestar-around": ("uvicorn", "litestar_wrapped", "/items/{item_id}"),
    "litestar-inside": ("uvicorn", "litestar_inside", "/items/{item_id}"),
    "falcon-wsgi": ("gunicorn", "falcon_wsgi", "/items/{item_id:int}"),
    "falcon-asgi": ("uvicorn", "falcon_asgi", "/items/{item_id:int}"),
}


@contextmanager
def serving(name: str, store: Path) -> Iterator[str]:
    server, factory, _ = FRAMEWORKS[name]
    if server == "gunicorn":
        with running_gunicorn(f"framework_apps:{factory}()", store, "--workers", "1") as gunicorn:
            yield gunicorn.url
        return
    # Django answers the lifespan scope with an exception: uvicorn's "auto" then serves without it.
    with running_server(getattr(framework_apps, factory)(str(store)), lifespan="auto") as url:
        yield url


@pytest.fixture(scope="module", params=list(FRAMEWORKS))
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store = tmp_path_factory.mktemp(request.param) / "store"
    with serving(request.param, store) as url:
        yield Served(request.param, url, store, FRAMEWORKS[request.param][2])


def get(served: Served, path: str, correlation_id: str) -> tuple[httpx.Response, dict[str, Any]]:
    correlation_id = f"{served.name}-{correlation_id}"
    response = httpx.get(served.url + path, headers={"x-correlation-id": correlation_id}, timeout=30)
    return response, span_by_correlation_id(served.store, correlation_id)


def test_an_exception_the_framework_answers_with_a_500_is_the_span_s_exception_event(served: Served) -> None:
    response, span = get(served, "/fail", "fail")
    assert response.status_code == 500
    assert span["status"]["code"] == "ERROR"
    assert span["status"]["description"].startswith("ModelFailed: model exploded in ")
    assert span["attributes"]["http.response.status_code"] == 500
    [event] = span["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "framework_apps.ModelFailed"
    assert event["attributes"]["exception.escaped"] == "True"
    assert "raise ModelFailed" in event["attributes"]["exception.stacktrace"]
    assert span["attributes"]["http.route"] == "/fail"


def test_a_templated_route_is_recorded_as_the_framework_spells_it(served: Served) -> None:
    response, span = get(served, "/items/7", "item")
    assert response.json() == {"item": 7, "score": 0.5}
    assert span["attributes"]["http.route"] == served.item_route
    assert span["name"] == f"GET {served.item_route}"
    assert span["events"] == []


def test_an_exception_the_app_handles_and_records_is_an_event_on_a_successful_span(served: Served) -> None:
    response, span = get(served, "/handled", "handled")
    assert response.json() == {"fallback": True, "recorded": True}
    assert span["status"]["code"] == "UNSET"  # the app answered: the response says how it went
    assert span["attributes"]["http.response.status_code"] == 200
    [event] = span["events"]
    assert event["attributes"]["exception.type"] == "framework_apps.ModelFailed"
    assert event["attributes"]["exception.escaped"] == "False"


def test_the_framework_s_own_client_error_is_not_an_exception_event(served: Served) -> None:
    response, span = get(served, "/missing", "missing")
    assert response.status_code == 404
    assert span["status"]["code"] == "UNSET"
    assert span["events"] == []
    assert span["attributes"]["http.route"] == "/missing"


@pytest.mark.parametrize("served", ["litestar-around", "litestar-inside", "falcon-wsgi", "falcon-asgi"], indirect=True)
def test_an_exception_the_app_s_own_error_handler_answers_is_an_event_and_the_response_decides(
    served: Served,
) -> None:
    # Litestar's and Falcon's hooks hear it (Flask's and Django's signals and Starlette do not).
    response, span = get(served, "/refused", "refused")
    assert response.status_code == 422
    assert span["status"]["code"] == "UNSET"
    assert [e["attributes"]["exception.type"] for e in span["events"]] == ["framework_apps.InputRefused"]


def test_falcon_still_calls_the_app_s_own_error_reporter_after_obsml_s(store: Path) -> None:
    reported: list[tuple[str, bool]] = []
    with running_server(framework_apps.falcon_asgi_with_reporter(str(store), reported)) as url:
        response = httpx.get(url + "/fail", headers={"x-correlation-id": "reporter"})
        httpx.get(url + "/missing")
    assert response.status_code == 500
    assert [e["attributes"]["exception.type"] for e in span_by_correlation_id(store, "reporter")["events"]] == [
        "framework_apps.ModelFailed"
    ]
    assert reported == [("ModelFailed", True), ("HTTPNotFound", True)]  # all of them, as without obsml


def test_record_exception_outside_a_request_records_nothing_and_says_so() -> None:
    assert obsml.record_exception(ValueError("no request here")) is False


async def handles_one_then_fails_with_another(scope: Scope, receive: Receive, send: Send) -> None:
    handled = KeyError("feature missing; imputed")
    assert obsml.record_exception(handled)
    assert obsml.record_exception(handled)  # the same exception twice is one event
    if scope["path"] == "/reraise":
        raise handled
    raise RuntimeError("model exploded after the fallback")


@pytest.mark.parametrize(
    ("path", "events", "description"),
    [
        pytest.param("/another", [("KeyError", "False"), ("RuntimeError", "True")],
                     "RuntimeError: model exploded after the fallback", id="recorded-then-another-escapes"),
        pytest.param("/reraise", [("KeyError", "True")], "KeyError: 'feature missing; imputed'",
                     id="recorded-then-the-same-escapes"),
    ],
)
def test_every_exception_of_a_request_is_one_event_in_the_order_they_came(
    store: Path, path: str, events: list[tuple[str, str]], description: str
) -> None:
    app = ObsmlMiddleware(handles_one_then_fails_with_another, store=str(store))
    with running_server(app, lifespan="off") as url:
        response = httpx.get(url + path, headers={"x-correlation-id": "several"})
    assert response.status_code == 500
    span = span_by_correlation_id(store, "several")
    assert span["status"] == {"code": "ERROR", "description": description}
    assert [(e["attributes"]["exception.type"], e["attributes"]["exception.escaped"]) for e in span["events"]] == events


async def records_forty_exceptions(scope: Scope, receive: Receive, send: Send) -> None:
    for row in range(40):
        obsml.record_exception(ValueError(f"row {row}: income must be a number"))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"scored what it could"})


def test_a_request_keeps_its_first_32_exceptions_and_counts_the_rest(store: Path) -> None:
    with running_server(ObsmlMiddleware(records_forty_exceptions, store=str(store)), lifespan="off") as url:
        httpx.get(url, headers={"x-correlation-id": "forty"})
    span = span_by_correlation_id(store, "forty")
    assert [e["attributes"]["exception.message"] for e in span["events"]] == [
        f"row {row}: income must be a number" for row in range(32)
    ]
    assert span["attributes"]["obsml.exceptions_not_recorded"] == 8
