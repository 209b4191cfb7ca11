from __future__ import annotations

import asyncio
import hashlib
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from apps import make_app
from conftest import read_spans, running_server, span_by_correlation_id

import obsml
from obsml import ObsmlMiddleware

OPTIONS = {"service": "credit", "model": "best_model", "version": "10"}
SAFE_PATH = re.compile(r"[A-Za-z0-9._/-]+")


def raw_request(url: str, header_value: bytes) -> bytes:
    """Send a request byte for byte (an HTTP client would refuse the hostile values)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = b"GET /status/200 HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Correlation-Id: "
        sock.sendall(head + header_value + b"\r\n\r\n")
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    return response


@pytest.mark.parametrize(
    "hostile",
    [
        pytest.param(b"../../x", id="dot-dot-slash"),
        pytest.param(b"%2e%2e%2f", id="percent-encoded"),
        pytest.param(b"abfs://x", id="url"),
        pytest.param(b"..", id="dots-only"),
        pytest.param(b"a\x00b", id="nul"),
        pytest.param(b"a\rX-Injected: 1", id="bare-cr"),
        pytest.param(b"\xc3\xa9t\xc3\xa9", id="non-ascii"),
        pytest.param(b"a" * 129, id="too-long"),
        pytest.param(b"k" * (1 << 20), id="one-megabyte"),
    ],
)
def test_a_hostile_correlation_id_is_replaced_and_never_reaches_a_path_or_the_store(
    store: Path, hostile: bytes
) -> None:
    with running_server(make_app(store=str(store), **OPTIONS), h11_max_incomplete_event_size=4 << 20) as url:
        response = raw_request(url, hostile)
    status_line = response.split(b"\r\n", 1)[0]
    spans = read_spans(store)
    if status_line.endswith(b"400 Bad Request"):  # the server itself refused it: nothing reached the app
        assert spans == []
        return
    assert status_line.endswith(b"200 OK")
    echoed = re.search(rb"x-correlation-id: ([^\r\n]*)", response)
    assert echoed is not None and re.fullmatch(rb"[0-9a-f]{32}", echoed[1])
    [span] = spans
    assert span["attributes"]["obsml.correlation_id"] == echoed[1].decode()
    assert span["attributes"]["obsml.correlation_id.source"] == "generated"
    assert span["attributes"]["obsml.correlation_id.rejected_header"] == "x-correlation-id"
    for path in store.rglob("*"):
        assert SAFE_PATH.fullmatch(str(path.relative_to(store)))


@pytest.mark.parametrize(
    "hostile",
    [b"../../x", b"a\r\nX-Injected: 1", b"a\x00b", b"abfs://x", b"\xff", b"k" * (1 << 20)],
    ids=["dot-dot-slash", "crlf", "nul", "url", "invalid-utf8", "one-megabyte"],
)
def test_the_core_rejects_hostile_ids_whatever_the_server_lets_through(tmp_path: Path, hostile: bytes) -> None:
    store = tmp_path / "store"
    sent: list[dict[str, object]] = []

    async def app(scope: object, receive: object, send: Callable[[dict[str, object]], Awaitable[None]]) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"x-correlation-id", hostile)]}
    asyncio.run(ObsmlMiddleware(app, store=str(store), **OPTIONS)(scope, receive, send))
    [(name, echoed)] = sent[0]["headers"]  # type: ignore[misc]
    assert name == b"x-correlation-id" and re.fullmatch(rb"[0-9a-f]{32}", echoed)
    span = span_by_correlation_id(store, echoed.decode())
    assert span["attributes"]["obsml.correlation_id.rejected_header"] == "x-correlation-id"
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
