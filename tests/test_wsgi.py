"""The WSGI adapter under a real gunicorn: the same capture as the ASGI side, for Flask and plain callables."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import body_bytes, running_gunicorn, span_by_correlation_id
from servers import RunningCommand

Served = tuple[RunningCommand, Path]  # a running server and its store


@pytest.fixture(scope="module")
def flask_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store = tmp_path_factory.mktemp("flask") / "store"
    with running_gunicorn("wsgi_apps:flask_app", store, "--workers", "1", "--worker-class", "gthread",
                          "--threads", "4") as server:
        yield server, store


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store = tmp_path_factory.mktemp("plain") / "store"
    with running_gunicorn("wsgi_apps:plain_app", store, "--workers", "1") as server:
        yield server, store


def fresh_client(server: RunningCommand) -> httpx.Client:
    return httpx.Client(base_url=server.url, timeout=30)


@pytest.mark.parametrize(
    ("body", "inline"),
    [
        pytest.param(b"", True, id="empty"),
        pytest.param(b'{"rows": [{"income": 52000, "age": 41}]}', True, id="small-json"),
        pytest.param(b"x" * 65536, True, id="exactly-the-limit"),
        pytest.param(b"x" * 65537, False, id="one-byte-over"),
        pytest.param(bytes(range(256)) * 4, True, id="binary-invalid-utf8"),
    ],
)
def test_flask_bodies_are_inline_up_to_the_limit_and_offloaded_whole_past_it(
    flask_server: Served, body: bytes, inline: bool, request: pytest.FixtureRequest
) -> None:
    server, store = flask_server
    correlation_id = f"flask-{request.node.callspec.id}"
    with fresh_client(server) as client:
        response = client.post("/echo", content=body,
                               headers={"x-correlation-id": correlation_id, "content-type": "application/json"})
    assert response.content == body
    assert response.headers["x-correlation-id"] == correlation_id
    span = span_by_correlation_id(store, correlation_id)
    attributes = span["attributes"]
    assert span["name"] == "POST /echo"
    for direction in ("request", "response"):
        prefix = f"obsml.{direction}.body"
        assert attributes[f"{prefix}.size"] == len(body)
        assert attributes[f"{prefix}.truncated"] is False
        assert attributes[f"{prefix}.sha256"] == hashlib.sha256(body).hexdigest()
        assert (f"{prefix}.uri" not in attributes) is inline
        assert body_bytes(span, direction) == body


def test_a_body_the_app_never_reads_is_counted_as_unread_not_waited_for(flask_server: Served) -> None:
    server, store = flask_server
    with fresh_client(server) as client:
        response = client.post("/ignore-body", content=b"z" * 5000, headers={"x-correlation-id": "unread-1"})
    assert response.status_code == 200
    attributes = span_by_correlation_id(store, "unread-1")["attributes"]
    assert attributes["obsml.request.body.size"] == 5000
    assert attributes["obsml.request.body.unread_size"] == 5000
    assert attributes["obsml.request.body.captured_size"] == 0
    assert attributes["obsml.request.body.truncated"] is True


def test_flask_routes_name_the_span_and_requests_are_described(flask_server: Served) -> None:
    server, store = flask_server
    with fresh_client(server) as client:
        client.get("/scores/7?sig=CANARY-sas-9e1f&limit=3&%73ig=CANARY-sas-2&design=a/b%20c&flag",
                   headers={"x-correlation-id": "route-1", "authorization": "Bearer CANARY-token-77"})
    span = span_by_correlation_id(store, "route-1")
    attributes = span["attributes"]
    assert span["name"] == "GET /scores/<int:row>"
    assert attributes["http.route"] == "/scores/<int:row>"
    assert attributes["url.path"] == "/scores/7"
    assert attributes["url.query"] == "sig=[REDACTED]&limit=3&%73ig=[REDACTED]&design=a/b%20c&flag"
    assert attributes["http.request.header.authorization"] == ["[REDACTED]"]
    assert attributes["http.response.status_code"] == 200
    assert attributes["client.address"] == "127.0.0.1"
    assert "CANARY" not in str(span)


def test_query_keys_named_in_obsml_redact_query_lose_their_values_under_gunicorn(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with running_gunicorn("wsgi_apps:flask_app", store, env={"OBSML_REDACT_QUERY": "team_secret,X-Sas"}) as server, \
            fresh_client(server) as client:
        client.get("/scores/7?x-sas=CANARY-1&%74eam_secret=CANARY-2&sig=CANARY-3&team=a",
                   headers={"x-correlation-id": "redact-query"})
        attributes = span_by_correlation_id(store, "redact-query")["attributes"]
    assert attributes["url.query"] == "x-sas=[REDACTED]&%74eam_secret=[REDACTED]&sig=[REDACTED]&team=a"


def test_a_generator_response_streams_chunk_by_chunk_and_is_captured_whole(
    flask_server: Served, tmp_path: Path
) -> None:
    server, store = flask_server
    gate = tmp_path / "gate"
    with fresh_client(server) as client, client.stream(
        "GET", "/stream", params={"gate": str(gate)}, headers={"x-correlation-id": "stream-1"}
    ) as response:
        chunks = response.iter_raw()
        received = next(chunks)
        # The first chunk reached the client while the app was still waiting to produce the last.
        assert received.startswith(b"data: first")
        gate.touch()
        received += b"".join(chunks)
    assert received.endswith(b"data: last, gate opened\n\n")
    span = span_by_correlation_id(store, "stream-1")
    assert body_bytes(span, "response") == received
    attributes = span["attributes"]
    assert 0 < attributes["obsml.response.time_to_first_byte_ms"] < span["duration_ms"]
    assert "obsml.client.disconnected" not in attributes


def test_an_exception_flask_turns_into_a_500_is_recorded(flask_server: Served) -> None:
    server, store = flask_server
    with fresh_client(server) as client:
        response = client.get("/fail/before", headers={"x-correlation-id": "fail-before"})
    assert response.status_code == 500
    assert response.headers["x-correlation-id"] == "fail-before"
    span = span_by_correlation_id(store, "fail-before")
    assert span["status"]["code"] == "ERROR"
    assert span["attributes"]["http.response.status_code"] == 500
    (event,) = span["events"]
    assert event["attributes"]["exception.type"] == "ValueError"
    assert event["attributes"]["exception.message"] == "row 3: income must be a number"


def test_an_exception_during_iteration_is_recorded_with_what_was_sent(flask_server: Served) -> None:
    server, store = flask_server
    received = b""
    with fresh_client(server) as client, pytest.raises(httpx.HTTPError), client.stream(
        "GET", "/fail/during", headers={"x-correlation-id": "fail-during"}
    ) as response:
        for chunk in response.iter_raw():
            received += chunk
    span = span_by_correlation_id(store, "fail-during")
    assert span["status"]["code"] == "ERROR"
    (event,) = span["events"]
    assert event["attributes"]["exception.type"] == "RuntimeError"
    assert body_bytes(span, "response") == b"data: first\n\n"
    assert received == b"data: first\n\n"


def test_a_client_that_goes_away_mid_stream_still_yields_a_span(flask_server: Served) -> None:
    server, store = flask_server
    with fresh_client(server) as client, client.stream(
        "GET", "/endless", headers={"x-correlation-id": "gone-1"}
    ) as response:
        next(response.iter_raw())
    span = span_by_correlation_id(store, "gone-1")
    attributes = span["attributes"]
    assert attributes["obsml.client.disconnected"] is True
    assert attributes["obsml.response.body.size"] >= 16384
    assert span["events"] == []


def test_a_client_that_goes_away_mid_upload_leaves_the_size_that_arrived_and_the_declared_one(
    plain_server: Served,
) -> None:
    server, store = plain_server
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # The app reads Content-Length bytes; what gunicorn has when the client is gone is all it gets.
        sock.sendall(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n"
                     b"X-Correlation-Id: cut-upload\r\n\r\n" + b"u" * 3000)
    attributes = span_by_correlation_id(store, "cut-upload")["attributes"]
    assert attributes["obsml.request.body.size"] == 3000
    assert attributes["obsml.request.body.declared_size"] == 100000
    assert attributes["obsml.request.body.truncated"] is False
    assert "obsml.request.body.unread_size" not in attributes
    assert attributes["obsml.client.disconnected"] is True
    assert attributes["obsml.request.body"] == "u" * 3000


@pytest.mark.parametrize("fail", [None, "during"])
def test_close_is_called_exactly_once(plain_server: Served, tmp_path: Path, fail: str | None) -> None:
    server, store = plain_server
    record = tmp_path / "closes"
    headers = {"x-correlation-id": f"close-{fail}", "x-close-record": str(record), "x-pieces": "2"}
    if fail:
        headers["x-fail"] = fail
    with fresh_client(server) as client:
        try:
            client.post("/", content=b"0123456789", headers=headers)
        except httpx.HTTPError:
            assert fail  # the stream broke off after the first piece
    span = span_by_correlation_id(store, f"close-{fail}")
    assert len(record.read_text().splitlines()) == 1
    assert (span["status"]["code"] == "ERROR") is bool(fail)


def test_a_plain_wsgi_callable_is_captured(plain_server: Served) -> None:
    server, store = plain_server
    body = b"\xff\x00 not utf-8 " * 10_000
    with fresh_client(server) as client:
        response = client.post("/any/path", content=body, headers={"x-correlation-id": "plain-1", "x-pieces": "7"})
        failed = client.post("/", content=b"{}", headers={"x-correlation-id": "plain-2", "x-fail": "before"})
    assert response.content == body
    span = span_by_correlation_id(store, "plain-1")
    assert span["name"] == "POST"
    assert span["attributes"]["url.path"] == "/any/path"
    assert body_bytes(span, "request") == body_bytes(span, "response") == body
    assert failed.status_code == 500
    failure = span_by_correlation_id(store, "plain-2")
    assert failure["attributes"]["http.response.status_code"] == 500
    assert failure["events"][0]["attributes"]["exception.type"] == "ValueError"


def test_a_file_wrapper_response_is_served_and_captured(flask_server: Served, tmp_path: Path) -> None:
    server, store = flask_server
    content = bytes(range(256)) * 800  # 200 KB
    path = tmp_path / "model-card.bin"
    path.write_bytes(content)
    with fresh_client(server) as client:
        response = client.get("/file", params={"path": str(path)}, headers={"x-correlation-id": "file-1"})
    assert response.content == content
    span = span_by_correlation_id(store, "file-1")
    assert body_bytes(span, "response") == content


def test_the_legacy_write_callable_is_captured_in_order(plain_server: Served) -> None:
    server, store = plain_server
    body = b"written first, then returned"
    with fresh_client(server) as client:
        response = client.post("/", content=body, headers={"x-correlation-id": "write-1", "x-use-write": "1"})
    assert response.content == body
    span = span_by_correlation_id(store, "write-1")
    assert body_bytes(span, "response") == body


def test_a_flask_view_can_ask_which_request_it_is_serving(flask_server: Served) -> None:
    server, store = flask_server
    with fresh_client(server) as client:
        response = client.get("/whoami", headers={"x-correlation-id": "who-2"})
    span = span_by_correlation_id(store, "who-2")
    assert response.json() == {"correlation_id": "who-2", "trace_id": span["trace_id"], "span_id": span["span_id"]}


def test_an_app_that_fails_before_responding_gives_one_span_also_once_garbage_is_collected(store: Path) -> None:
    import gc
    from wsgiref.util import setup_testing_defaults

    import obsml
    from obsml import ObsmlWSGIMiddleware

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise ValueError("failed before responding")

    def server_environ() -> dict[str, Any]:  # the standard library's minimal environ, dropped after the call
        environ: dict[str, Any] = {"HTTP_X_CORRELATION_ID": "fail-once"}
        setup_testing_defaults(environ)
        return environ

    try:  # not pytest.raises: it would keep the exception, and with it what the test is about
        ObsmlWSGIMiddleware(app, store=str(store))(server_environ(), lambda *args: None)
    except ValueError:
        pass
    else:
        raise AssertionError("the app's exception did not reach the server")
    obsml.flush()
    gc.collect()  # the exception's frames held the response object: its finalizer ran only now
    assert span_by_correlation_id(store, "fail-once")["status"]["code"] == "ERROR"
