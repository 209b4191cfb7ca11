from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import httpx
import pytest
from apps import make_app, pattern
from conftest import body_bytes, free_socket, read_spans, running_gunicorn, running_server, span_by_correlation_id

import obsml
from obsml import ObsmlWSGIMiddleware

OPTIONS = {"service": "credit", "model": "best_model", "version": "10"}


class Stall:
    """A job that holds the writer (and ``nbytes`` of its queue) until released."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.release = threading.Event()

    def run(self) -> None:
        self.release.wait(30)


@contextmanager
def stalled_writer(nbytes: int = 1, **options: Any) -> Iterator[Stall]:
    """The writer of these settings busy; its queue holds ``nbytes`` (with none, an item over the bound goes in)."""
    from obsml._pipeline import pipeline_for

    stall = Stall(nbytes)
    assert pipeline_for(obsml.Settings.load(**options)).writer.submit(stall)
    try:
        yield stall
    finally:
        stall.release.set()


def wait_for_a_drop() -> None:
    """A capture ends just after the client has its response: wait for the drop to be counted
    before the stalled writer is released (an empty queue would take the item in alone)."""
    deadline = time.monotonic() + 10
    while not obsml.stats()["dropped"] and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_full_queue_drops_the_span_counts_it_and_leaves_the_request_alone(store: Path) -> None:
    body = b"b" * 5000  # held inline: 10 KB for request and response, over the 1 KB queue bound
    options = {"store": str(store), "queue_max_bytes": 1000, **OPTIONS}
    with running_server(make_app(**options)) as url, stalled_writer(**options):
        response = httpx.post(f"{url}/echo", content=body)
        wait_for_a_drop()
    assert response.content == body
    obsml.flush()
    assert read_spans(store) == []
    assert obsml.stats()["dropped"] == {"queue_full": {"span": 1}}


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def serving(server: str, options: dict[str, Any]) -> Iterator[str]:
    """uvicorn with the test app, or the standard library's WSGI server with obsml over a tiny app."""
    if server == "uvicorn":
        with running_server(make_app(**options), h11_max_incomplete_event_size=1 << 20) as url:
            yield url
        return

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    httpd = make_server("127.0.0.1", 0, ObsmlWSGIMiddleware(app, **options), handler_class=QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.mark.parametrize("server", ["uvicorn", "wsgiref"])
def test_request_headers_count_against_the_queue_bound(store: Path, server: str) -> None:
    options = {"store": str(store), "queue_max_bytes": 50_000, **OPTIONS}
    with serving(server, options) as url, stalled_writer(**options):
        httpx.get(f"{url}/whoami", headers={"x-correlation-id": "small"})
        httpx.get(f"{url}/whoami", headers={"x-correlation-id": "big", "x-big": "h" * 60_000})
        wait_for_a_drop()
    obsml.flush()
    assert [span["attributes"]["obsml.correlation_id"] for span in read_spans(store)] == ["small"]
    assert obsml.stats()["dropped"] == {"queue_full": {"span": 1}}


def test_a_body_read_into_the_apps_own_small_buffer_is_queued_in_slabs_not_chunk_by_chunk(store: Path) -> None:
    # 1 MB read 8 KB at a time into one reused buffer: 128 chunks, 16 slabs. With the writer busy,
    # a queue of 40 items holds the slabs; one item per chunk would overflow it and lose the body.
    body = pattern(1 << 20)
    options = {"store": str(store), "queue_max_items": 40, **OPTIONS}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        view, digest = memoryview(bytearray(8192)), hashlib.sha256()
        left = int(environ["CONTENT_LENGTH"])  # wsgiref's input is the socket: never read past the body
        while left and (size := environ["wsgi.input"].readinto(view[: min(left, len(view))])):
            digest.update(view[:size])
            left -= size
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [digest.hexdigest().encode()]

    httpd = make_server("127.0.0.1", 0, ObsmlWSGIMiddleware(app, **options), handler_class=QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        with stalled_writer(**options):
            response = httpx.post(f"http://127.0.0.1:{httpd.server_port}/", content=body,
                                  headers={"x-correlation-id": "slabs"}, timeout=30)
            assert obsml.flush(timeout=0.2) is False  # the writer was still busy when the request ended
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)
    assert response.text == hashlib.sha256(body).hexdigest()
    span = span_by_correlation_id(store, "slabs")
    assert "obsml.request.body.lost" not in span["attributes"]
    assert body_bytes(span, "request") == body
    assert obsml.stats()["dropped"] == {}


def test_a_payload_that_cannot_be_queued_is_marked_lost_in_its_span(store: Path) -> None:
    body = b"p" * 5000
    options = {"store": str(store), "queue_max_bytes": 3000, "inline_limit": 100, **OPTIONS}
    with running_server(make_app(**options)) as url, stalled_writer(**options):
        assert httpx.post(f"{url}/echo", content=body, headers={"x-correlation-id": "lost"}).content == body
    attributes = span_by_correlation_id(store, "lost")["attributes"]
    assert attributes["obsml.request.body.lost"] == attributes["obsml.response.body.lost"] == "queue_full"
    assert attributes["obsml.request.body.size"] == 5000
    assert "obsml.request.body.uri" not in attributes
    assert obsml.stats()["dropped"] == {"queue_full": {"payload": 2}}
    assert [p for p in store.rglob("*") if p.is_file() and "traces" not in p.parts] == []


def test_sigterm_to_a_uvicorn_process_flushes_every_captured_request(store: Path) -> None:
    sock = free_socket()
    host, port = sock.getsockname()
    env = {**os.environ, "OBSML_STORE": str(store), "OBSML_FLUSH_INTERVAL": "3600"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "apps:app", "--app-dir", str(Path(__file__).parent),
         "--fd", str(sock.fileno()), "--log-level", "warning"],
        env=env, pass_fds=[sock.fileno()],
    )
    sock.close()
    try:
        with httpx.Client(base_url=f"http://{host}:{port}", timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.get("/status/200", headers={"x-correlation-id": "warm-up"})
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "uvicorn did not start"
                    time.sleep(0.05)
            for index in range(40):
                client.post("/echo", content=b"x" * (index * 3000), headers={"x-correlation-id": f"req-{index}"})
        assert read_spans(store) == []  # nothing written before shutdown: the flush interval is an hour
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    finally:
        server.kill()
    ids = sorted(s["attributes"]["obsml.correlation_id"] for s in read_spans(store))
    assert ids == sorted(["warm-up", *(f"req-{index}" for index in range(40))])
    offloaded = [p for p in store.glob("payloads/*/*/*/*") if p.is_file()]
    assert len(offloaded) == 2 * len([i for i in range(40) if i * 3000 > 65536])


def test_a_store_that_refuses_writes_costs_data_that_is_counted_not_the_request(store: Path) -> None:
    store.mkdir(parents=True)
    (store / "traces").write_text("a file where a folder should be")
    (store / "payloads").write_text("the same for payloads")
    body = b"q" * 70_000
    with running_server(make_app(store=str(store), **OPTIONS)) as url:
        for _ in range(3):
            assert httpx.post(f"{url}/echo", content=body).content == body
    assert obsml.stats()["dropped"] == {"store_error": {"span": 3, "payload": 6}}
    assert sorted(p.name for p in store.iterdir()) == ["payloads", "traces"]  # no temporary files left


def test_memory_stays_bounded_by_the_queue_whatever_the_body_size(store: Path) -> None:
    import asyncio
    import hashlib
    import tracemalloc

    from obsml import ObsmlMiddleware

    chunk, chunks = b"m" * 65536, 320  # a 20 MiB upload
    queue_bound = 4 << 20

    async def app(scope: object, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent = 0

    async def receive() -> dict[str, object]:
        nonlocal sent
        sent += 1
        await asyncio.sleep(0)
        return {"type": "http.request", "body": b"m" * len(chunk), "more_body": sent < chunks}  # a new object

    async def send(message: object) -> None:
        return None

    middleware = ObsmlMiddleware(app, store=str(store), queue_max_bytes=queue_bound, **OPTIONS)
    scope = {"type": "http", "method": "POST", "path": "/", "headers": [(b"x-correlation-id", b"huge")]}
    tracemalloc.start()
    try:
        asyncio.run(middleware(scope, receive, send))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < queue_bound + (2 << 20)  # the queue bound plus change, not 20 MiB
    attributes = span_by_correlation_id(store, "huge")["attributes"]
    assert attributes["obsml.request.body.size"] == chunk.__len__() * chunks
    if "obsml.request.body.uri" in attributes:  # the writer kept up: all of it, exactly
        assert attributes["obsml.request.body.sha256"] == hashlib.sha256(chunk * chunks).hexdigest()
    else:  # or it did not, and the span and the counters say so
        assert attributes["obsml.request.body.lost"] == "queue_full"
        assert obsml.stats()["dropped"] == {"queue_full": {"payload": 1}}


def test_the_queue_bound_holds_while_spans_are_dropped_for_a_stalled_writer(store: Path) -> None:
    from obsml._pipeline import pipeline_for

    options = {"store": str(store), "queue_max_items": 20, "inline_limit": 1000, **OPTIONS}
    writer = pipeline_for(obsml.Settings.load(**options)).writer
    body = b"s" * 3000  # offloaded, in one chunk: each request queues its span, carrying its bodies
    with running_server(make_app(**options)) as url, stalled_writer(**options), httpx.Client(base_url=url) as client:
        for n in range(60):
            assert client.post("/echo", content=body, headers={"x-correlation-id": f"stall-{n}"}).content == body
        # Dropped spans must not leave unbounded work behind them in the queue.
        assert writer.pending() <= 20 + 2 * 20
    assert obsml.flush(10)
    stats = obsml.stats()
    assert stats["dropped"]["queue_full"]["span"] >= 60 - 20  # at most one item per request was let in
    assert not list(store.rglob(".*.tmp"))  # every payload file opened for a dropped span was discarded


BIG = 70_000_000  # one chunk over the 64 MiB queue bound, under the 100 MiB capture limit


def assert_captured_whole(span: dict[str, Any], expected: bytes) -> None:
    attributes = span["attributes"]
    assert "obsml.response.body.lost" not in attributes
    assert attributes["obsml.response.body.size"] == len(expected)
    assert attributes["obsml.response.body.sha256"] == hashlib.sha256(expected).hexdigest()
    assert hashlib.sha256(body_bytes(span, "response")).hexdigest() == attributes["obsml.response.body.sha256"]


def test_a_response_sent_as_one_chunk_over_the_queue_bound_is_captured_whole_under_uvicorn(store: Path) -> None:
    with running_server(make_app(store=str(store), **OPTIONS)) as url:
        response = httpx.get(f"{url}/bytes/{BIG}", headers={"x-correlation-id": "big"}, timeout=60)
    assert response.content == pattern(BIG)
    assert_captured_whole(span_by_correlation_id(store, "big"), response.content)
    assert obsml.stats()["dropped"] == {}


def test_a_response_sent_as_one_chunk_over_the_queue_bound_is_captured_whole_under_gunicorn_gthread(
    store: Path,
) -> None:
    options = ("--worker-class", "gthread", "--threads", "2")
    with running_gunicorn("wsgi_apps:flask_app", store, *options) as server:
        response = httpx.get(f"{server.url}/bytes/{BIG}", headers={"x-correlation-id": "big"}, timeout=60)
        assert server.stop() == 0
    assert response.content == pattern(BIG)
    [span] = read_spans(store)
    assert_captured_whole(span, response.content)


def test_the_span_of_a_body_let_in_alone_follows_it_even_while_the_body_fills_the_queue(store: Path) -> None:
    options = {"store": str(store), "queue_max_bytes": 1 << 20, **OPTIONS}
    with running_server(make_app(**options)) as url, stalled_writer(nbytes=0, **options):
        # The writer is busy: the 2 MB chunk waits in the queue, over its bound, when the span comes.
        response = httpx.get(f"{url}/bytes/2000000", headers={"x-correlation-id": "alone"})
    assert_captured_whole(span_by_correlation_id(store, "alone"), response.content)
    assert obsml.stats()["dropped"] == {}


class Ran:
    nbytes = 1

    def __init__(self, done: list[int]) -> None:
        self.done = done

    def run(self) -> None:
        self.done.append(1)


def test_a_backlog_of_32_items_wakes_the_writer_before_its_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    # A finished capture waiting for the writer holds objects the garbage collector tracks: under
    # load, captures must not pile up for a whole poll (issue 16). The poll here never comes.
    from obsml import _writer

    monkeypatch.setattr(_writer, "_POLL_S", 3600.0)
    writer = _writer.Writer(max_items=1000, max_bytes=1 << 20, interval=3600.0, exit_timeout=1.0)
    done: list[int] = []
    try:
        for _ in range(31):
            assert writer.submit(Ran(done))
        time.sleep(0.3)
        assert done == []  # 31 wait for the poll
        assert writer.submit(Ran(done))
        deadline = time.monotonic() + 30
        while len(done) < 32 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(done) == 32
    finally:
        writer.close(1.0)
