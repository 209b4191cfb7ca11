"""The WSGI adapter under servers other than gunicorn's defaults: each span describes its own request.

uWSGI clears and refills one environ dict per core for the next request, waitress names itself
``waitress.invalid``, granian sets no ``REMOTE_PORT``: what a span says must not depend on it.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import body_bytes, read_spans, span_by_correlation_id
from servers import BIN, RunningCommand, free_port, running_command, store_env

pytestmark = pytest.mark.slow

# In every server's process environment: granian copies it into each request's environ.
PROCESS_SECRET = "http://operator:CANARY-process-env-5e1f@proxy.internal:3128"
APP = "wsgi_apps:plain_app"  # a bare PEP 3333 callable (echoes the body) wrapped in obsml
COMMANDS = {
    # --die-on-term: without it uWSGI's master takes SIGTERM as "reload", not "stop".
    "uwsgi-threads": lambda port: [str(BIN / "uwsgi"), "--http", f"127.0.0.1:{port}", "--master",
                                   "--processes", "1", "--threads", "8", "--die-on-term",
                                   "--module", APP],
    "gunicorn-gthread": lambda port: [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
                                      "--worker-class", "gthread", "--threads", "8", APP],
    "waitress": lambda port: [str(BIN / "waitress-serve"), "--listen", f"127.0.0.1:{port}", APP],
    "granian-wsgi": lambda port: [str(BIN / "granian"), "--interface", "wsgi", "--host", "127.0.0.1",
                                  "--port", str(port), APP],
}




@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Starts a server of COMMANDS once per module: ``started(name)`` gives (server, store)."""
    running: dict[str, tuple[RunningCommand, Path]] = {}
    with ExitStack() as stack:

        def start(name: str) -> tuple[RunningCommand, Path]:
            if name not in running:
                store = tmp_path_factory.mktemp(name) / "store"
                port = free_port()
                server = stack.enter_context(
                    running_command(
                        COMMANDS[name](port), port, store.parent / "server.log",
                        store_env(store, HTTP_PROXY=PROCESS_SECRET),
                    )
                )
                running[name] = server, store
            return running[name]

        yield start


def spans_of(store: Path, correlation_ids: set[str]) -> dict[str, dict[str, Any]]:
    """The spans of these requests, by correlation id, once the server's writer has written them all."""
    deadline = time.monotonic() + 30
    while True:
        spans = {s["attributes"]["obsml.correlation_id"]: s for s in read_spans(store)}
        if correlation_ids <= spans.keys() or time.monotonic() > deadline:
            return {cid: spans[cid] for cid in correlation_ids & spans.keys()}
        time.sleep(0.05)


def send(client: httpx.Client, method: str, url: str, **options: Any) -> httpx.Response:
    """One request, sent again if uWSGI closed the connection unanswered: on a loaded machine it
    does, about once in a thousand requests, with or without obsml (its log shows the app never
    saw those requests, so none has a span)."""
    for _ in range(2):
        with contextlib.suppress(httpx.RemoteProtocolError):
            return client.request(method, url, **options)
    return client.request(method, url, **options)


def request_line_and_tenant(span: dict[str, Any]) -> tuple[Any, ...]:
    attributes = span["attributes"]
    return (attributes["http.request.method"], attributes["url.path"], attributes.get("url.query"),
            attributes.get("http.request.header.x-tenant"))


@pytest.mark.parametrize("name", ["uwsgi-threads", "gunicorn-gthread"])
def test_two_requests_one_after_the_other_each_keep_their_own_request_line_and_headers(
    started: Any, name: str
) -> None:
    server, store = started(name)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        send(client, "POST", "/first?a=1", content=b"{}", headers={"x-tenant": "alice", "x-correlation-id": "first"})
        send(client, "GET", "/second", headers={"x-tenant": "bob", "x-correlation-id": "second"})
    spans = spans_of(store, {"first", "second"})
    assert request_line_and_tenant(spans["first"]) == ("POST", "/first", "a=1", ["alice"])
    assert request_line_and_tenant(spans["second"]) == ("GET", "/second", None, ["bob"])


@pytest.mark.parametrize("fail", ["before", "during"])
def test_a_failing_request_keeps_its_own_request_line_and_headers_under_uwsgi(started: Any, fail: str) -> None:
    server, store = started("uwsgi-threads")
    failing, after = f"fail-{fail}", f"after-{fail}"
    with httpx.Client(base_url=server.url, timeout=30) as client:
        # The app raises before responding, or while the server iterates its response.
        with contextlib.suppress(httpx.TransportError):
            client.put(f"/{fail}?b=2", content=b"0123456789" * 3,
                       headers={"x-fail": fail, "x-pieces": "3", "x-tenant": "carol", "x-correlation-id": failing})
        send(client, "GET", "/next", headers={"x-tenant": "dave", "x-correlation-id": after})
    spans = spans_of(store, {failing, after})
    assert request_line_and_tenant(spans[failing]) == ("PUT", f"/{fail}", "b=2", ["carol"])
    assert spans[failing]["status"]["code"] == "ERROR"
    assert request_line_and_tenant(spans[after]) == ("GET", "/next", None, ["dave"])


@pytest.mark.parametrize("name", ["uwsgi-threads", "gunicorn-gthread"])
def test_two_hundred_concurrent_requests_each_get_a_span_of_their_own(started: Any, name: str) -> None:
    server, store = started(name)
    methods = ("GET", "POST", "PUT", "DELETE")

    def one(row: int) -> bytes:
        body = f"body of request {row}".encode() if row % 4 else b""
        response = send(client, methods[row % 4], f"/rows/{row}", params={"row": row, "even": row % 2 == 0},
                        content=body, headers={"x-tenant": f"tenant-{row}", "x-correlation-id": f"row-{row}"})
        assert response.content == body
        return body

    with httpx.Client(base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=32)) as client, \
            ThreadPoolExecutor(32) as pool:
        bodies = list(pool.map(one, range(200)))
    spans = spans_of(store, {f"row-{row}" for row in range(200)})
    assert len(spans) == 200
    for row, body in enumerate(bodies):
        span = spans[f"row-{row}"]
        expected = (methods[row % 4], f"/rows/{row}", f"row={row}&even={str(row % 2 == 0).lower()}", [f"tenant-{row}"])
        assert request_line_and_tenant(span) == expected, row
        assert body_bytes(span, "request") == body


@pytest.mark.parametrize(("name", "client_port"), [("waitress", True), ("granian-wsgi", False)])
def test_the_server_is_named_by_the_host_header_and_ports_are_integers(
    started: Any, name: str, client_port: bool
) -> None:
    server, store = started(name)
    port = int(server.url.rsplit(":", 1)[1])
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.get("/", headers={"x-correlation-id": "direct"})
        client.get("/", headers={"x-correlation-id": "named", "host": "scoring.internal"})
    direct = span_by_correlation_id(store, "direct")["attributes"]
    named = span_by_correlation_id(store, "named")["attributes"]
    assert (direct["server.address"], direct["server.port"]) == ("127.0.0.1", port)
    assert (named["server.address"], named["server.port"]) == ("scoring.internal", 80)  # the scheme's default
    assert direct["client.address"] == "127.0.0.1"
    # granian's environ has no REMOTE_PORT: then there is no client.port, never a wrong one.
    assert isinstance(direct.get("client.port"), int) is client_port


@pytest.mark.parametrize("name", ["granian-wsgi", "waitress"])
def test_the_process_environment_never_becomes_a_request_header(started: Any, name: str) -> None:
    server, store = started(name)
    with httpx.Client(base_url=server.url, timeout=30) as client:
        client.get("/", headers={"x-correlation-id": "environment", "x-sent": "by-the-client"})
    span = span_by_correlation_id(store, "environment")
    assert span["attributes"]["http.request.header.x-sent"] == ["by-the-client"]
    assert "CANARY-process-env" not in json.dumps(span)
