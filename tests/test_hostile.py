"""Hostile requests under real servers: header bombs are capped and marked, compressed bodies are
stored as received (never decompressed), text from a client cannot forge a line in obsml's log,
multipart uploads are stored as bytes, and no path or id from outside writes beyond the store."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import zlib
from pathlib import Path
from typing import Any

import httpx
import pytest
from apps import make_app, pattern
from conftest import body_bytes, read_spans, running_gunicorn, running_server, span_by_correlation_id
from servers import free_port, running_command, store_env

from obsml._redact import MAX_HEADER_VALUE_LENGTH, MAX_HEADERS_RECORDED

BIG = 100_000
# gunicorn's own limits, lifted: up to 32768 header lines of up to 2 MB (0 means its default, 8190).
GUNICORN_NO_HEADER_LIMITS = ("--limit-request-fields", "32768", "--limit-request-field_size", str(2 << 20))
BOMB_HEADERS = 5000
FORGED = "[CRITICAL] forged: every model deleted"


def header_bomb(correlation_id: str) -> list[tuple[str, str]]:
    """1 MB values (named to sort first, so they are among the headers recorded, and two read
    into attributes of their own) and 5000 more names."""
    return [("a-big", "v" * 1_000_000), ("content-type", "t" * 1_000_000), ("host", "h" * 1_000_000),
            *((f"x-bomb-{i}", "1") for i in range(BOMB_HEADERS)), ("x-correlation-id", correlation_id)]


def cut(letter: str) -> str:
    return letter * MAX_HEADER_VALUE_LENGTH + "[obsml: truncated, 1000000 bytes]"


def assert_capped_and_marked(attributes: dict[str, Any]) -> None:
    recorded = [key for key in attributes if key.startswith("http.request.header.")]
    assert len(recorded) == MAX_HEADERS_RECORDED
    assert attributes["obsml.request.headers_not_recorded"] > BOMB_HEADERS - MAX_HEADERS_RECORDED
    assert attributes["obsml.request.headers_truncated"] == ["a-big", "content-type", "host"]
    assert attributes["http.request.header.a-big"] == [cut("v")]
    assert attributes["obsml.request.body.content_type"] == cut("t")
    assert attributes["server.address"] == cut("h")


def test_a_header_bomb_under_gunicorn_is_capped_marked_and_the_next_request_is_served(store: Path) -> None:
    with running_gunicorn("wsgi_apps:flask_app", store, *GUNICORN_NO_HEADER_LIMITS) as server:
        # Flask answers a megabyte Host with 400 itself: obsml records that answer like any other.
        assert httpx.get(f"{server.url}/whoami", headers=header_bomb("bomb-wsgi"), timeout=60).status_code == 400
        after = httpx.post(f"{server.url}/echo", content=b"next", headers={"x-correlation-id": "after-wsgi"})
        assert after.content == b"next"
    assert_capped_and_marked(span_by_correlation_id(store, "bomb-wsgi")["attributes"])
    assert span_by_correlation_id(store, "after-wsgi")["attributes"]["obsml.request.body"] == "next"
    assert max(p.stat().st_size for p in (store / "traces").rglob("*.jsonl")) < 200_000


def test_a_header_bomb_under_uvicorn_is_capped_marked_and_the_next_request_is_served(store: Path) -> None:
    app = make_app(store=str(store), flush_interval=0.1)
    with running_server(app, h11_max_incomplete_event_size=4 << 20) as url:  # h11's own limit is 16 KB
        assert httpx.get(f"{url}/whoami", headers=header_bomb("bomb-asgi"), timeout=60).status_code == 200
        assert httpx.post(f"{url}/echo", content=b"next", headers={"x-correlation-id": "after-asgi"}).content == b"next"
    assert_capped_and_marked(span_by_correlation_id(store, "bomb-asgi")["attributes"])
    assert span_by_correlation_id(store, "after-asgi")["attributes"]["obsml.request.body"] == "next"


def gzip_bomb(expanded: int) -> bytes:
    """A gzip stream that expands to ``expanded`` zero bytes (about a thousand times its size)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip container
    zeros = bytes(1 << 20)
    return b"".join([*(compressor.compress(zeros) for _ in range(expanded >> 20)), compressor.flush()])


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


GZIP_HEADERS = {"content-encoding": "gzip", "content-type": "application/json"}


def test_a_gzip_bomb_is_stored_as_received_under_uvicorn(store: Path) -> None:
    bomb = gzip_bomb(256 << 20)
    with running_server(make_app(store=str(store), flush_interval=0.1)) as url:
        answer = httpx.post(f"{url}/digest", content=bomb, headers={**GZIP_HEADERS, "x-correlation-id": "gz-asgi"})
    assert answer.json() == {"sha256": hashlib.sha256(bomb).hexdigest(), "size": len(bomb)}
    span = span_by_correlation_id(store, "gz-asgi")
    assert body_bytes(span, "request") == bomb
    assert span["attributes"]["obsml.request.body.size"] == len(bomb)
    assert span["attributes"]["obsml.request.body.sha256"] == hashlib.sha256(bomb).hexdigest()
    assert span["attributes"]["http.request.header.content-encoding"] == ["gzip"]


def test_a_gzip_bomb_under_gunicorn_is_stored_compressed_and_the_worker_memory_stays_bounded(store: Path) -> None:
    bomb = gzip_bomb(256 << 20)
    with running_gunicorn("wsgi_apps:plain_app", store, "--workers", "1") as server:
        httpx.post(server.url, content=b"warm-up", headers={"x-correlation-id": "warm-up"})
        (worker,) = Path(f"/proc/{server.process.pid}/task/{server.process.pid}/children").read_text().split()
        before = peak_rss(int(worker))
        echoed = httpx.post(server.url, content=bomb, headers={**GZIP_HEADERS, "x-correlation-id": "gz-wsgi"})
        span = span_by_correlation_id(store, "gz-wsgi")
        grown = peak_rss(int(worker)) - before
    assert echoed.content == bomb  # httpx does not decode a request's encoding echoed back without the header
    assert body_bytes(span, "request") == bomb
    assert grown < 64 << 20, f"the worker's peak grew by {grown >> 20} MiB for a {len(bomb) >> 10} KiB body"


@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_text_from_a_client_cannot_forge_a_line_in_obsmls_log(tmp_path: Path, server: str) -> None:
    store = tmp_path / "store"
    port = free_port()
    commands = {
        "gunicorn": [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "hostile_apps:wsgi_app"],
        "uvicorn": [sys.executable, "-m", "uvicorn", "--port", str(port), "hostile_apps:asgi_app"],
    }
    # A column name of the client's choosing, which obsml quotes when it refuses the rows.
    rows = [{f"income\r\n{FORGED}\x1b[2J\x1b[31m\u2028": 1}, {"age": 41}]
    env = store_env(store, OBSML_STRICT="false")  # refused rows are logged, not raised
    with running_command(commands[server], port, tmp_path / "server.log", env) as running:
        answer = httpx.post(running.url, content=json.dumps(rows), headers={"x-correlation-id": "forger"})
        assert answer.json() == {"rows": 0}
        running.stop()
        log = running.log()
    assert "refused rows" in log
    assert "\\r\\n" + FORGED + "\\x1b[2J\\x1b[31m\\u2028" in log
    assert not any(line.startswith(FORGED) for line in log.splitlines())
    assert "\x1b" not in log and "\r" not in log and "\u2028" not in log


def test_a_multipart_upload_is_stored_as_the_bytes_sent_with_its_content_type(store: Path) -> None:
    with running_server(make_app(store=str(store), flush_interval=0.1)) as url, httpx.Client() as client:
        request = client.build_request(
            "POST", f"{url}/echo", files={"scan": ("scan.png", pattern(BIG), "image/png")},
            data={"applicant": "Ada"}, headers={"x-correlation-id": "upload"},
        )
        sent = request.read()
        client.send(request)
    span = span_by_correlation_id(store, "upload")
    assert body_bytes(span, "request") == sent
    assert span["attributes"]["obsml.request.body.content_type"] == request.headers["content-type"]
    assert span["attributes"]["obsml.request.body.content_type"].startswith("multipart/form-data; boundary=")
    assert span["attributes"]["obsml.request.body.uri"].endswith("-request.bin")


def test_a_path_and_ids_made_of_dot_dot_never_write_outside_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    body = pattern(BIG)
    head = (
        "POST /../../../../../tmp/../..%2f..%2fevil/x.json HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "x-correlation-id: ../../../../evil\r\nx-request-id: ..\r\n"
        "Content-Type: application/json/../../../evil\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    with running_gunicorn("wsgi_apps:plain_app", store) as server:
        with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1]))) as sock:
            sock.sendall(head.encode() + body)
            while sock.recv(65536):
                pass
        httpx.get(server.url, headers={"x-correlation-id": "after"})
        span_by_correlation_id(store, "after")
    (span,) = [s for s in read_spans(store) if s["attributes"]["url.path"].startswith("/..")]
    attributes = span["attributes"]
    assert attributes["obsml.correlation_id.rejected_header"] == "x-correlation-id"
    stored = Path(attributes["obsml.request.body.uri"].removeprefix("file://"))
    assert stored.read_bytes() == body
    assert stored.resolve().is_relative_to(store.resolve()) and stored.name.endswith("-request.bin")
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and not p.is_relative_to(store)]
    assert [p.name for p in outside] == [p.name for p in tmp_path.glob("gunicorn-*.log")]
