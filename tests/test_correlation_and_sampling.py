from __future__ import annotations

import asyncio
import hashlib
import io
import re
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apps import make_app
from conftest import read_spans, running_gunicorn, running_server, span_by_correlation_id

import obsml
from obsml import ObsmlMiddleware, ObsmlWSGIMiddleware

OPTIONS = {"service": "credit", "model": "best_model", "version": "10"}
SAFE_PATH = re.compile(r"[A-Za-z0-9._/-]+")


def raw_request(url: str, *correlation_headers: bytes) -> bytes:
    """Send a request byte for byte (an HTTP client would refuse the hostile values), one
    ``X-Correlation-Id`` line per value."""
    host, port = url.removeprefix("http://").split(":")
    head = b"GET /status/200 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
    head += b"".join(b"X-Correlation-Id: " + value + b"\r\n" for value in correlation_headers)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head + b"\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return response


def echoed_id(response: bytes) -> str:
    echoed = re.search(rb"(?i)\r\nx-correlation-id: ([^\r\n]*)", response)
    assert echoed is not None, response[:300]
    return echoed[1].decode()


def stored_strings(value: object) -> Iterator[str]:
    """Every string of a stored span (keys, values, events, resource), however deep."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from stored_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from stored_strings(item)


def assert_never_stored(spans: list[dict[str, Any]], hostile: bytes) -> None:
    text = hostile.decode("latin-1")  # how a header value would be recorded
    found = [s[:80] for span in spans for s in stored_strings(span) if text in s]  # a 1 MB one is shown cut
    assert not found


HOSTILE_IDS = [
    pytest.param(b"../../etc/passwd", id="path-traversal"),
    pytest.param(b"%2e%2e%2f", id="percent-encoded"),
    pytest.param(b"<script>alert(1)</script>", id="script"),
    pytest.param(b"abfs://x", id="url"),
    pytest.param(b"..", id="dots-only"),
    pytest.param(b"a\x00b", id="nul"),
    pytest.param(b"a\rX-Injected: 1", id="bare-cr"),
    pytest.param(b"\xc3\xa9t\xc3\xa9", id="non-ascii"),
    pytest.param(b"a" * 129, id="too-long"),
    pytest.param(b"k" * (1 << 20), id="one-megabyte"),
]


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple[str, Path]]]:
    """The two adapters under real servers that let a 1 MB header through: ``{adapter: (url, store)}``."""
    root = tmp_path_factory.mktemp("hostile")
    asgi_store, wsgi_store = root / "asgi" / "store", root / "wsgi" / "store"
    app = make_app(store=str(asgi_store), **OPTIONS)
    with running_server(app, h11_max_incomplete_event_size=4 << 20) as asgi_url, running_gunicorn(
        "wsgi_apps:plain_app", wsgi_store, "--limit-request-field_size", str(2 << 20)
    ) as gunicorn:
        yield {"asgi": (asgi_url, asgi_store), "wsgi": (gunicorn.url, wsgi_store)}


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_a_hostile_correlation_id_is_replaced_never_stored_and_never_reaches_a_path(
    servers: dict[str, tuple[str, Path]], adapter: str, hostile: bytes
) -> None:
    url, store = servers[adapter]
    response = raw_request(url, hostile)
    status = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    if status is None or status[1] != b"200":  # the server itself refused it: nothing reached the app
        assert status is None or status[1] in (b"400", b"431"), response[:300]
    else:
        correlation_id = echoed_id(response)
        assert re.fullmatch(r"[0-9a-f]{32}", correlation_id)
        attributes = span_by_correlation_id(store, correlation_id)["attributes"]
        assert attributes["obsml.correlation_id.source"] == "generated"
        assert attributes["obsml.correlation_id.rejected_header"] == "x-correlation-id"
        assert attributes["http.request.header.x-correlation-id"] == [f"[REJECTED: {len(hostile)} bytes]"]
    assert_never_stored(read_spans(store), hostile)
    for path in store.rglob("*"):
        assert SAFE_PATH.fullmatch(str(path.relative_to(store)))


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
@pytest.mark.parametrize(
    ("headers", "correlation_id"),
    [
        pytest.param((b"first-1", b"<script>alert(1)</script>"), "first-1", id="two-headers"),
        pytest.param((b"first-2, <script>alert(1)</script>",), "first-2", id="one-joined-header"),
    ],
)
def test_of_repeated_correlation_ids_the_first_is_used_and_a_hostile_one_never_stored(
    servers: dict[str, tuple[str, Path]], adapter: str, headers: tuple[bytes, ...], correlation_id: str
) -> None:
    """gunicorn joins repeated headers with a comma (RFC 9110 5.3), uvicorn passes them apart."""
    url, store = servers[adapter]
    assert echoed_id(raw_request(url, *headers)) == correlation_id
    span = span_by_correlation_id(store, correlation_id)
    assert span["attributes"]["obsml.correlation_id.source"] == "x-correlation-id"
    assert_never_stored([span], b"<script>")


def call_asgi(store: Path, correlation_id: bytes) -> str:
    """One request straight through ObsmlMiddleware; the correlation id it answered with."""
    sent: list[dict[str, Any]] = []

    async def app(scope: object, receive: object, send: Callable[[dict[str, object]], Awaitable[None]]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"x-correlation-id", correlation_id)]}
    asyncio.run(ObsmlMiddleware(app, store=str(store), **OPTIONS)(scope, receive, send))
    [(name, echoed)] = sent[0]["headers"]
    assert name == b"x-correlation-id"
    return str(echoed.decode())


def call_wsgi(store: Path, correlation_id: bytes) -> str:
    """One request straight through ObsmlWSGIMiddleware (PEP 3333 strings carry bytes as latin-1)."""
    started: list[list[tuple[str, str]]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"ok"]

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        started.append(headers)

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": io.BytesIO(),
               "HTTP_X_CORRELATION_ID": correlation_id.decode("latin-1")}
    response = ObsmlWSGIMiddleware(app, store=str(store), **OPTIONS)(environ, start_response)
    assert b"".join(response) == b"ok"
    response.close()  # type: ignore[attr-defined]
    [(name, echoed)] = started[0]
    assert name == "x-correlation-id"
    return echoed


@pytest.mark.parametrize("call", [call_asgi, call_wsgi], ids=["asgi", "wsgi"])
@pytest.mark.parametrize(
    "hostile",
    [b"../../x", b"a\r\nX-Injected: 1", b"a\x00b", b"abfs://x", b"<script>", b"\xff", b"k" * (1 << 20)],
    ids=["dot-dot-slash", "crlf", "nul", "url", "script", "invalid-utf8", "one-megabyte"],
)
def test_the_core_rejects_hostile_ids_whatever_the_server_lets_through(
    tmp_path: Path, call: Callable[[Path, bytes], str], hostile: bytes
) -> None:
    store = tmp_path / "store"
    echoed = call(store, hostile)
    assert re.fullmatch(r"[0-9a-f]{32}", echoed)
    span = span_by_correlation_id(store, echoed)
    assert span["attributes"]["obsml.correlation_id.rejected_header"] == "x-correlation-id"
    assert span["attributes"]["http.request.header.x-correlation-id"] == [f"[REJECTED: {len(hostile)} bytes]"]
    assert_never_stored([span], hostile)
    for path in store.rglob("*"):
        assert SAFE_PATH.fullmatch(str(path.relative_to(store)))


def test_sampling_keeps_or_skips_an_id_consistently_and_always_keeps_failures(store: Path) -> None:
    ids = [f"loan-{index:04d}" for index in range(60)]
    app = make_app(store=str(store), sample_rate=0.5, **OPTIONS)
    with running_server(app) as url, httpx.Client(base_url=url) as client:
        for _ in range(2):
            for correlation_id in ids:
                assert client.get("/status/200", headers={"x-correlation-id": correlation_id}).status_code == 200
        for correlation_id in ids:  # uvicorn closes the connection after an app error: one each
            httpx.get(f"{url}/fail/before", headers={"x-correlation-id": correlation_id})
    spans = read_spans(store)
    kept_ok = [
        s["attributes"]["obsml.correlation_id"] for s in spans if s["attributes"]["http.route"] == "/status/{code}"
    ]
    failed = [s for s in spans if s["attributes"]["http.route"] == "/fail/before"]
    expected = {
        i for i in ids if int.from_bytes(hashlib.sha256(i.encode()).digest()[:8], "big") < 2**63
    }  # the documented rule
    assert 10 < len(expected) < 50
    assert sorted(kept_ok) == sorted([*expected, *expected])  # the same ids, both times
    assert len(failed) == len(ids)  # failures are kept whatever their id
    assert {s["attributes"].get("obsml.sampled_out", False) for s in failed} == {True, False}
    assert obsml.stats()["requests_sampled_out"] == 2 * (len(ids) - len(expected))


def test_a_rate_of_zero_keeps_only_failures(store: Path) -> None:
    with running_server(make_app(store=str(store), sample_rate=0, **OPTIONS)) as url:
        httpx.get(f"{url}/status/200", headers={"x-correlation-id": "fine"})
        httpx.get(f"{url}/status/503", headers={"x-correlation-id": "unavailable"})
    assert [s["attributes"]["obsml.correlation_id"] for s in read_spans(store)] == ["unavailable"]


def test_disabled_capture_leaves_the_app_untouched(store: Path) -> None:
    with running_server(make_app(store=str(store), enabled=False, **OPTIONS)) as url:
        response = httpx.post(f"{url}/echo", content=b"hello")
    assert response.content == b"hello"
    assert "x-correlation-id" not in response.headers
    assert read_spans(store) == []


def test_an_unsampled_request_that_fails_keeps_its_body_up_to_the_inline_limit(store: Path) -> None:
    body = b"r" * 100_000
    app = make_app(store=str(store), sample_rate=0, inline_limit=1000, **OPTIONS)
    with running_server(app) as url:
        assert httpx.post(f"{url}/echo", content=body, headers={"x-correlation-id": "ok"}).content == body
        httpx.post(f"{url}/fail/after-read", content=body, headers={"x-correlation-id": "big-fail"})
    [span] = read_spans(store)
    attributes = span["attributes"]
    assert attributes["obsml.correlation_id"] == "big-fail"
    assert attributes["obsml.sampled_out"] is True
    assert attributes["obsml.request.body.truncated"] is True
    assert (attributes["obsml.request.body.size"], attributes["obsml.request.body.captured_size"]) == (100_000, 1000)
    assert attributes["obsml.request.body"] == "r" * 1000
    assert list(store.glob("payloads/**/*.*")) == []
