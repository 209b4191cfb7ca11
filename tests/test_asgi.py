from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apps import SESSION_COOKIE, first_chunk_seen, make_app
from conftest import body_bytes, read_spans, running_server, span_by_correlation_id
from websockets.sync.client import connect

import obsml
from obsml import ObsmlMiddleware

OPTIONS = {"service": "credit", "model": "best_model", "version": "10"}


@pytest.fixture
def server(store: Path) -> Iterator[str]:
    with running_server(make_app(store=str(store), **OPTIONS)) as url:
        yield url


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=30) as client:
        yield client


@pytest.mark.parametrize(
    ("body", "inline"),
    [
        pytest.param(b"", True, id="empty"),
        pytest.param(b'{"rows": [{"income": 52000, "age": 41}]}', True, id="small-json"),
        pytest.param(b"x" * 65536, True, id="exactly-the-limit"),
        pytest.param(b"x" * 65537, False, id="one-byte-over"),
        pytest.param(bytes(range(256)) * 4, True, id="binary-invalid-utf8"),
        pytest.param(b"\xff\xfe" * 40000, False, id="binary-offloaded"),
    ],
)
def test_a_body_is_kept_inline_up_to_the_limit_and_offloaded_whole_past_it(
    client: httpx.Client, store: Path, body: bytes, inline: bool
) -> None:
    headers = {"x-correlation-id": "loan-7", "content-type": "application/json"}
    response = client.post("/echo", content=body, headers=headers)
    assert response.content == body
    obsml.flush()
    span = span_by_correlation_id(store, "loan-7")
    attributes = span["attributes"]
    for direction in ("request", "response"):
        prefix = f"obsml.{direction}.body"
        assert attributes[f"{prefix}.size"] == len(body)
        assert attributes[f"{prefix}.sha256"] == hashlib.sha256(body).hexdigest()
        assert attributes[f"{prefix}.truncated"] is False
        assert (f"{prefix}.uri" not in attributes) is inline
        assert (prefix in attributes) is inline
        assert body_bytes(span, direction) == body
    if not inline:
        uri = attributes["obsml.request.body.uri"]
        assert re.fullmatch(
            rf"file://{re.escape(str(store))}/payloads/\d{{4}}/\d\d/\d\d/{span['trace_id']}-{span['span_id']}-request\.json",
            uri,
        )


def test_a_twenty_megabyte_chunked_upload_is_captured_whole_without_content_length(
    client: httpx.Client, store: Path
) -> None:
    chunk = os.urandom(1 << 20)
    expected = hashlib.sha256(chunk * 20).hexdigest()

    def upload() -> Iterator[bytes]:
        for _ in range(20):
            yield chunk

    response = client.post("/digest", content=upload(), headers={"x-correlation-id": "big-upload"})
    assert response.json() == {"sha256": expected, "size": 20 << 20}
    obsml.flush()
    span = span_by_correlation_id(store, "big-upload")
    assert "http.request.header.content-length" not in span["attributes"]
    assert span["attributes"]["obsml.request.body.sha256"] == expected
    assert hashlib.sha256(body_bytes(span, "request")).hexdigest() == expected


def test_a_streamed_response_reaches_the_client_chunk_by_chunk(client: httpx.Client, store: Path) -> None:
    first_chunk_seen.clear()
    with client.stream("GET", "/stream", headers={"x-correlation-id": "sse-1"}) as response:
        chunks = response.iter_raw()
        assert next(chunks) == b"data: first\n\n"
        first_chunk_seen.set()  # the app only finishes once the client saw the first chunk
        assert b"".join(chunks) == b"data: released\n\n"
    obsml.flush()
    attributes = span_by_correlation_id(store, "sse-1")["attributes"]
    assert attributes["obsml.response.body"] == "data: first\n\ndata: released\n\n"
    assert attributes["obsml.response.body.content_type"].startswith("text/event-stream")
    assert attributes["obsml.response.time_to_first_byte_ms"] > 0
    assert "obsml.client.disconnected" not in attributes  # the server's after-response disconnect is normal


def test_an_exception_before_the_response_is_recorded_as_a_500_and_reraised(
    client: httpx.Client, store: Path
) -> None:
    response = client.get("/fail/before", headers={"x-correlation-id": "boom-1"})
    assert response.status_code == 500  # Starlette's own error handler still answers
    obsml.flush()
    span = span_by_correlation_id(store, "boom-1")
    assert span["status"] == {"code": "ERROR", "description": "RuntimeError: model exploded before answering"}
    assert span["attributes"]["http.response.status_code"] == 500
    [event] = span["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "RuntimeError"
    assert event["attributes"]["exception.message"] == "model exploded before answering"
    assert "fail_before" in event["attributes"]["exception.stacktrace"]


def test_wrapped_outermost_obsml_also_sees_the_error_response_and_tags_it(store: Path) -> None:
    app = ObsmlMiddleware(make_app(store=str(store), enabled=False), store=str(store), **OPTIONS)
    with running_server(app) as url:
        response = httpx.get(f"{url}/fail/before", headers={"x-correlation-id": "outer-1"})
    assert (response.status_code, response.headers["x-correlation-id"]) == (500, "outer-1")
    span = span_by_correlation_id(store, "outer-1")
    assert span["attributes"]["obsml.response.body"] == "Internal Server Error"
    assert span["events"][0]["attributes"]["exception.type"] == "RuntimeError"


def test_an_exception_after_the_response_started_keeps_its_status_and_the_partial_body(
    client: httpx.Client, store: Path
) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        client.get("/fail/during", headers={"x-correlation-id": "boom-2"})
    obsml.flush()
    span = span_by_correlation_id(store, "boom-2")
    assert span["status"]["code"] == "ERROR"
    assert span["attributes"]["http.response.status_code"] == 200
    assert span["attributes"]["obsml.response.body"] == "partial "
    assert span["events"][0]["attributes"]["exception.message"] == "model exploded mid-stream"


def test_a_client_that_disconnects_mid_stream_still_yields_a_span_that_says_so(
    client: httpx.Client, store: Path
) -> None:
    with client.stream("GET", "/endless", headers={"x-correlation-id": "gone-1"}) as response:
        assert next(response.iter_raw()).startswith(b"data: 0")
    span = span_by_correlation_id(store, "gone-1")
    assert span["attributes"]["obsml.client.disconnected"] is True
    assert span["attributes"]["obsml.response.body.size"] < len(b"data: 999\n\n") * 1000


def test_a_client_that_goes_away_mid_upload_leaves_the_size_that_arrived_and_the_declared_one(store: Path) -> None:
    arrived = threading.Event()

    async def upload(scope: dict[str, Any], receive: Any, send: Any) -> None:
        received = 0
        while (message := await receive())["type"] == "http.request":
            received += len(message.get("body", b""))
            if received >= 3000:
                arrived.set()  # the client may go now: the server has handed the app what came

    app = ObsmlMiddleware(upload, store=str(store), **OPTIONS)
    with running_server(app, lifespan="off") as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n"
                         b"X-Correlation-Id: cut-upload\r\n\r\n" + b"u" * 3000)
            assert arrived.wait(10)
        attributes = span_by_correlation_id(store, "cut-upload")["attributes"]
    assert attributes["obsml.request.body.size"] == 3000
    assert attributes["obsml.request.body.declared_size"] == 100000
    assert attributes["obsml.request.body.truncated"] is False
    assert "obsml.request.body.unread_size" not in attributes
    assert attributes["obsml.client.disconnected"] is True
    assert attributes["obsml.request.body"] == "u" * 3000


def test_the_correlation_id_is_taken_from_the_first_configured_header_and_echoed(
    client: httpx.Client, store: Path
) -> None:
    response = client.get("/status/200", headers={"x-request-id": "req-2", "x-correlation-id": "loan-1"})
    assert response.headers["x-correlation-id"] == "loan-1"
    response = client.get("/status/200", headers={"x-request-id": "req-2"})
    assert response.headers["x-correlation-id"] == "req-2"
    obsml.flush()
    assert span_by_correlation_id(store, "loan-1")["attributes"]["obsml.correlation_id.source"] == "x-correlation-id"
    assert span_by_correlation_id(store, "req-2")["attributes"]["obsml.correlation_id.source"] == "x-request-id"


def test_a_request_without_a_correlation_id_gets_a_generated_one(client: httpx.Client, store: Path) -> None:
    generated = {client.get("/status/201").headers["x-correlation-id"] for _ in range(3)}
    assert len(generated) == 3
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in generated)
    obsml.flush()
    for value in generated:
        assert span_by_correlation_id(store, value)["attributes"]["obsml.correlation_id.source"] == "generated"


TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("traceparent", "child"),
    [
        pytest.param(f"00-{TRACE_ID}-{PARENT_ID}-01", True, id="version-00"),
        pytest.param(f"00-{TRACE_ID}-{PARENT_ID}-01-extra", False, id="version-00-with-an-extra-field"),
        pytest.param(f"01-{TRACE_ID}-{PARENT_ID}-01-extra", True, id="later-version-with-an-extra-field"),
        pytest.param(f"01-{TRACE_ID}-{PARENT_ID}-01extra", False, id="later-version-without-a-dash"),
        pytest.param(f"ff-{TRACE_ID}-{PARENT_ID}-01", False, id="version-ff"),
        pytest.param(f"00-{'0' * 32}-{PARENT_ID}-01", False, id="zero-trace-id"),
    ],
)
def test_a_valid_incoming_traceparent_makes_the_span_its_child_and_an_invalid_one_a_new_trace(
    client: httpx.Client, store: Path, traceparent: str, child: bool, request: pytest.FixtureRequest
) -> None:
    correlation_id = f"tp-{request.node.callspec.id}"
    client.get("/status/200", headers={"traceparent": traceparent, "x-correlation-id": correlation_id})
    span = span_by_correlation_id(store, correlation_id)
    if child:
        assert (span["trace_id"], span["parent_span_id"]) == (TRACE_ID, PARENT_ID)
    else:
        assert span["trace_id"] != TRACE_ID and span["parent_span_id"] is None
    assert span["kind"] == "SERVER"
    assert span["name"] == "GET /status/{code}"


def test_the_span_carries_the_http_semantic_convention_attributes(client: httpx.Client, store: Path) -> None:
    query = "model=a&sig=SECRETSIG&%53IG=SECRET2&design=a/b%20c&flag"
    client.post(f"/echo?{query}", content=b"{}", headers={"x-correlation-id": "semconv"})
    obsml.flush()
    attributes = span_by_correlation_id(store, "semconv")["attributes"]
    host, port = client.base_url.host, client.base_url.port
    assert attributes["http.request.method"] == "POST"
    assert attributes["url.path"] == "/echo"
    assert attributes["url.query"] == "model=a&sig=[REDACTED]&%53IG=[REDACTED]&design=a/b%20c&flag"
    assert attributes["http.route"] == "/echo"
    assert attributes["http.response.status_code"] == 200
    assert attributes["client.address"] == "127.0.0.1"
    assert (attributes["server.address"], attributes["server.port"]) == (host, port)
    assert attributes["user_agent.original"].startswith("python-httpx")
    assert (attributes["obsml.service"], attributes["obsml.model.name"], attributes["obsml.model.version"]) == (
        "credit",
        "best_model",
        "10",
    )


def test_credentials_in_headers_never_reach_the_store(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    canaries = {
        "authorization": "Bearer CANARY-authorization-1f3a",
        "cookie": "session=CANARY-cookie-77b2",
        "proxy-authorization": "Basic CANARY-proxy-9c1d",
        "x-api-key": "CANARY-api-key-5e6f",
        "api-key": "CANARY-azure-openai-key-2b3c",
        "x-team-token": "CANARY-configured-0a0b",
    }
    app = make_app(store=str(store), redact_headers="X-Team-Token", **OPTIONS)
    with running_server(app) as url:
        response = httpx.post(
            f"{url}/echo",
            content=b"{}",
            headers={**canaries, "x-give-cookie": "yes", "x-correlation-id": "redact"},
        )
        assert response.headers["set-cookie"] == SESSION_COOKIE  # the client still gets it
    span = span_by_correlation_id(store, "redact")
    assert span["attributes"]["http.request.header.authorization"] == ["[REDACTED]"]
    assert span["attributes"]["http.response.header.set-cookie"] == ["[REDACTED]"]
    assert set(span["attributes"]["obsml.request.headers_redacted"]) == set(canaries)
    stored = b"".join(path.read_bytes() for path in store.rglob("*") if path.is_file())
    assert b"CANARY" not in stored
    client_side = ("httpx", "httpcore")  # the test's own HTTP client logs what it receives
    assert [r for r in caplog.records if "CANARY" in r.getMessage() and not r.name.startswith(client_side)] == []


def test_a_user_agent_named_in_redact_headers_is_redacted_in_user_agent_original_too(store: Path) -> None:
    # Some clients put a tenant's key in their User-Agent: redacting the header must cover the
    # attribute made from it (it was read from the raw header before issue 16).
    app = make_app(store=str(store), redact_headers="user-agent", **OPTIONS)
    with running_server(app) as url:
        httpx.get(f"{url}/whoami", headers={"user-agent": "tool/1.0 key=CANARY-ua-4d5e", "x-correlation-id": "ua"})
    attributes = span_by_correlation_id(store, "ua")["attributes"]
    assert attributes["http.request.header.user-agent"] == ["[REDACTED]"]
    assert attributes["user_agent.original"] == "[REDACTED]"
    assert b"CANARY" not in b"".join(path.read_bytes() for path in store.rglob("*") if path.is_file())


def test_query_keys_named_in_redact_query_lose_their_values_as_the_built_in_ones_do(store: Path) -> None:
    app = make_app(store=str(store), redact_query="Team_Secret, x-sas", **OPTIONS)
    query = "team_secret=CANARY-1&%74EAM_secret=CANARY-2&x-sas=CANARY-3&sig=CANARY-4&team=a&limit=3"
    with running_server(app) as url:
        httpx.get(f"{url}/whoami?{query}", headers={"x-correlation-id": "redact-query"})
    attributes = span_by_correlation_id(store, "redact-query")["attributes"]
    assert attributes["url.query"] == (
        "team_secret=[REDACTED]&%74EAM_secret=[REDACTED]&x-sas=[REDACTED]&sig=[REDACTED]&team=a&limit=3"
    )


def test_long_and_repeated_headers_are_recorded_cut_with_a_marker_and_their_true_size(store: Path) -> None:
    headers = [("x-big", "b" * 20_000), ("user-agent", "u" * 9000), ("x-" + "n" * 300, "a long name")]
    headers += [("x-many", f"v{index}") for index in range(20)] + [("x-correlation-id", "caps")]
    # uvicorn (h11) takes 16 KiB of headers by default; a server may take more.
    with running_server(make_app(store=str(store), **OPTIONS), h11_max_incomplete_event_size=1 << 20) as url:
        assert httpx.get(f"{url}/whoami", headers=headers).status_code == 200
    attributes = span_by_correlation_id(store, "caps")["attributes"]
    assert attributes["http.request.header.x-big"] == ["b" * 8192 + "[obsml: truncated, 20000 bytes]"]
    assert attributes["user_agent.original"] == "u" * 8192 + "[obsml: truncated, 9000 bytes]"
    many = [f"v{index}" for index in range(16)] + ["[obsml: 4 more values, 12 bytes]"]
    assert attributes["http.request.header.x-many"] == many
    assert attributes["obsml.request.headers_truncated"] == ["user-agent", "x-big", "x-many"]
    assert attributes["obsml.request.headers_not_recorded"] == 1  # the long name, never a key
    assert not [key for key in attributes if "nnn" in key]


def test_websocket_connections_pass_through_untouched(server: str, store: Path) -> None:
    with connect(server.replace("http", "ws") + "/ws") as websocket:
        websocket.send("hello")
        assert websocket.recv() == "echo:hello"
    obsml.flush()
    assert read_spans(store) == []


def test_non_http_scopes_get_the_original_receive_and_send() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.update(receive=receive, send=send)

    async def receive() -> dict[str, Any]:
        return {}

    async def send(message: Any) -> None:
        return None

    middleware = ObsmlMiddleware(app, **OPTIONS, store="memory://ws")
    asyncio.run(middleware({"type": "websocket"}, receive, send))
    assert seen == {"receive": receive, "send": send}


def test_lifespan_shutdown_flushes_every_captured_request(store: Path) -> None:
    # A long flush interval: only the shutdown flush can have written these.
    app = make_app(store=str(store), flush_interval=3600, **OPTIONS)
    with running_server(app) as url, httpx.Client(base_url=url) as client:
        for index in range(25):
            client.post("/echo", content=f"row {index}".encode(), headers={"x-correlation-id": f"n-{index}"})
        assert read_spans(store) == []
    spans = read_spans(store)
    assert sorted(s["attributes"]["obsml.correlation_id"] for s in spans) == sorted(f"n-{i}" for i in range(25))
    assert len({s["span_id"] for s in spans}) == 25


def test_the_app_can_ask_which_request_it_is_serving(client: httpx.Client, store: Path) -> None:
    response = client.get("/whoami", headers={"x-correlation-id": "who-1"})
    span = span_by_correlation_id(store, "who-1")
    assert response.json() == {"correlation_id": "who-1", "trace_id": span["trace_id"], "span_id": span["span_id"]}
    assert obsml.current_request() is None  # outside a request


# A module-level constant, as a health endpoint might keep it: obsml must never write into it.
CONSTANT_START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}


async def constant_start_app(scope: Any, receive: Any, send: Any) -> None:
    await send(CONSTANT_START)
    await send({"type": "http.response.body", "body": b"ok"})


def test_an_app_that_reuses_its_start_message_never_leaks_a_correlation_id(store: Path) -> None:
    app = ObsmlMiddleware(constant_start_app, store=str(store), **OPTIONS)
    with running_server(app, lifespan="off") as url, httpx.Client(base_url=url) as client:
        first = client.get("/health", headers={"x-correlation-id": "health-0"})
        second = client.get("/health", headers={"x-correlation-id": "health-1"})
    assert (first.headers["x-correlation-id"], second.headers["x-correlation-id"]) == ("health-0", "health-1")
    for correlation_id in ("health-0", "health-1"):
        attributes = span_by_correlation_id(store, correlation_id)["attributes"]
        assert attributes["http.response.header.x-correlation-id"] == [correlation_id]
    assert CONSTANT_START["headers"] == [(b"content-type", b"text/plain")]


def test_the_span_describes_the_scope_as_it_was_even_if_the_server_reuses_it(store: Path) -> None:
    app = make_app(store=str(store), **OPTIONS)

    async def reusing_server(scope: Any, receive: Any, send: Any) -> None:
        # As uWSGI does with its environ: the request's dict is emptied once the request is over.
        await app(scope, receive, send)
        if scope["type"] == "http":
            scope.clear()

    with running_server(reusing_server) as url, httpx.Client(base_url=url) as client:
        client.get("/status/201?tenant=alice", headers={"x-correlation-id": "reused"})
    attributes = span_by_correlation_id(store, "reused")["attributes"]
    assert (attributes["url.path"], attributes["url.query"], attributes["http.route"]) == (
        "/status/201", "tenant=alice", "/status/{code}"
    )
