"""obsml's worst-case memory (README, "Memory"), held by a real uvicorn process under load.

The server runs in a subprocess whose peak resident size is read from ``/proc``: first under
a load sent past obsml (``/bare/…``), then under the same load through it. What obsml added
to the peak must stay under the README's formula for the settings used, with a margin for
the allocator. On a breach the load stops at once, so a regression fails fast and small.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from conftest import free_socket
from servers import TESTS

import obsml

MiB = 1 << 20
SETTINGS = {
    "OBSML_QUEUE_MAX_BYTES": 16 * MiB,
    "OBSML_QUEUE_MAX_ITEMS": 1000,
    "OBSML_MAX_CAPTURE": 16 * MiB,
    "OBSML_INLINE_LIMIT": 65536,
}
CONNECTIONS = 8


def documented_worst_case(settings: dict[str, int], in_flight: int) -> int:
    """The README's formula: queue, its requests' objects, the part-file batch and span, requests in flight."""
    queue = max(settings["OBSML_QUEUE_MAX_BYTES"], settings["OBSML_MAX_CAPTURE"])
    inline = settings["OBSML_INLINE_LIMIT"]
    return queue + settings["OBSML_QUEUE_MAX_ITEMS"] * 4096 + 8 * MiB + 16 * inline + in_flight * 2 * inline


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


@contextmanager
def uvicorn_process(store: Path) -> Iterator[tuple[int, int]]:
    """A uvicorn subprocess serving memory_app; yields (pid, port). Headers up to 4 MiB are accepted."""
    sock = free_socket()
    port = sock.getsockname()[1]
    env = {**os.environ, "OBSML_STORE": str(store), "OBSML_FLUSH_INTERVAL": "60",
           **{name: str(value) for name, value in SETTINGS.items()}}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "memory_app:app", "--app-dir", str(TESTS), "--fd", str(sock.fileno()),
         "--log-level", "warning", "--lifespan", "off", "--h11-max-incomplete-event-size", str(4 * MiB)],
        env=env, pass_fds=[sock.fileno()],
    )
    sock.close()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                connection.request("POST", "/bare/warm-up", body=b"")
                connection.getresponse().read()
                connection.close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.05)
        yield server.pid, port
    finally:
        server.kill()
        server.wait(30)


def load(port: int, path: str, requests: int, body: bytes, headers: dict[str, str], stop: threading.Event) -> None:
    """``requests`` requests on each of CONNECTIONS kept-alive connections, until ``stop``."""

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for _ in range(requests):
                if stop.is_set():
                    return
                connection.request("POST", path, body=body, headers=headers)
                assert connection.getresponse().read() == body
        finally:
            connection.close()

    threads = [threading.Thread(target=client) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def peak_added_by_obsml(store: Path, requests: int, body: bytes, headers: dict[str, str], bound: int) -> int:
    """The server's peak resident size under the load through obsml, minus its peak under the load without."""
    with uvicorn_process(store) as (pid, port):
        load(port, "/bare/echo", requests, body, headers, threading.Event())
        bare_peak = status_kib(pid, "VmHWM") * 1024
        stop = threading.Event()
        loader = threading.Thread(target=load, args=(port, "/echo", requests, body, headers, stop))
        loader.start()
        while loader.is_alive():  # stop the load as soon as the bound is crossed
            if status_kib(pid, "VmRSS") * 1024 - bare_peak > bound:
                stop.set()
            loader.join(0.02)
        return status_kib(pid, "VmHWM") * 1024 - bare_peak


def test_inline_bodies_of_60_kb_keep_the_peak_under_the_documented_worst_case(tmp_path: Path) -> None:
    bound = documented_worst_case(SETTINGS, CONNECTIONS) * 2  # a margin for the allocator
    added = peak_added_by_obsml(tmp_path / "store", 150, os.urandom(60_000), {}, bound)
    assert added <= bound, f"obsml added {added / MiB:.0f} MiB to the peak, over {bound / MiB:.0f} MiB"


def test_request_headers_of_1_mb_keep_the_peak_under_the_documented_worst_case(tmp_path: Path) -> None:
    bound = documented_worst_case(SETTINGS, CONNECTIONS) * 2
    added = peak_added_by_obsml(tmp_path / "store", 20, b"", {"x-big": "h" * 1_000_000}, bound)
    assert added <= bound, f"obsml added {added / MiB:.0f} MiB to the peak, over {bound / MiB:.0f} MiB"


def _garbage_of(serve: Callable[[], None]) -> list[str]:
    """obsml's types among the objects only the cyclic garbage collector could free after ``serve()``.

    Only obsml's: what other tests left running (a server's sockets) may become garbage meanwhile."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        serve()
        assert obsml.flush(30)
        gc.collect()
        return sorted({type(found).__qualname__ for found in gc.garbage if type(found).__module__.startswith("obsml")})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


@pytest.mark.parametrize("sample_rate", [1.0, 0.0])
@pytest.mark.parametrize("size", [1024, 100 * 1024])
def test_a_served_request_leaves_no_reference_cycle_for_the_garbage_collector(
    tmp_path: Path, sample_rate: float, size: int
) -> None:
    # Freed by reference counting, a request's objects never make the cyclic collector run: left to
    # it, they made it run about every 120 requests, and what they held (a redacted body's stored
    # copy) stayed in memory until it did (issue 16: the sink-outage burst's excess).
    body = json.dumps({"x": "y" * size}).encode()

    async def asgi_app(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": message["body"]})

    def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        received = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [received]

    options = {"service": "s", "model": "m", "version": "1", "store": str(tmp_path), "sample_rate": sample_rate}
    asgi = obsml.ObsmlMiddleware(asgi_app, **options)
    wsgi = obsml.ObsmlWSGIMiddleware(wsgi_app, **options)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def asgi_requests() -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: Any) -> None:
            pass

        for _ in range(20):
            scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                     "scheme": "http", "path": "/score", "raw_path": b"/score", "query_string": b"",
                     "root_path": "", "headers": list(headers), "client": ("127.0.0.1", 5000),
                     "server": ("127.0.0.1", 8000)}
            await asgi(scope, receive, send)

    def wsgi_requests() -> None:
        for _ in range(20):
            environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/score", "QUERY_STRING": "", "SERVER_NAME": "h",
                       "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http",
                       "wsgi.input": io.BytesIO(body), "CONTENT_TYPE": "application/json",
                       "CONTENT_LENGTH": str(len(body))}
            response = wsgi(environ, lambda status, headers, exc_info=None: None)
            b"".join(response)
            response.close()  # as a server does: the request ends there

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asgi_requests())  # the loop's own first-use objects, before counting
        assert _garbage_of(lambda: loop.run_until_complete(asgi_requests())) == []
    finally:
        loop.close()
    wsgi_requests()
    assert _garbage_of(wsgi_requests) == []
    stored = list(tmp_path.glob("traces/**/*.jsonl"))
    assert bool(stored) == (sample_rate == 1.0)  # the requests were served through obsml, and kept or not


@pytest.mark.parametrize("sample_rate", [0.0, 1.0])
def test_a_servers_keep_alive_timers_hold_no_finished_request(tmp_path: Path, sample_rate: float) -> None:
    # uvicorn arms a keep-alive timer inside the response's last send, copying the current context;
    # cancelled by the next request, it stays in the loop's heap for its 5 s. Had that context held
    # the request's capture, every request of the last seconds would stay alive with its body tees
    # (some hundred under load), and the garbage collector would run every ~110 requests (issue 16).
    from conftest import running_server

    from obsml._capture import Capture

    async def asgi_app(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        if scope["type"] != "http":
            return
        message = await receive()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": message["body"]})

    def request(connection: http.client.HTTPConnection) -> None:
        connection.request("POST", "/score", body=b'{"x": 1}', headers={"content-type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200 and response.read() == b'{"x": 1}'

    app = obsml.ObsmlMiddleware(asgi_app, service="s", store=str(tmp_path), sample_rate=sample_rate)
    with running_server(app, lifespan="off") as url:
        # An idle keep-alive connection (a health check's) keeps its timer at the head of the heap;
        # the busy connection's cancelled timers wait behind it.
        idle, busy = (http.client.HTTPConnection(url.removeprefix("http://"), timeout=30) for _ in range(2))
        request(idle)
        for _ in range(40):
            request(busy)
        obsml.flush()
        alive = sum(isinstance(thing, Capture) for thing in gc.get_objects())
        idle.close()
        busy.close()
    assert alive <= 1  # the last request's, at most, while the server thread finishes it
    assert bool(list(tmp_path.glob("traces/**/*.jsonl"))) == (sample_rate == 1.0)


def test_a_middleware_the_app_lets_go_of_is_freed_with_what_it_holds(tmp_path: Path) -> None:
    # Tests, notebooks and apps that rebuild their app make many: each was kept, with its app, before.
    import weakref

    async def asgi_app(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def serve_one(app: Any) -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Any) -> None:
            pass

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": "/", "raw_path": b"/", "query_string": b"", "root_path": "",
                 "headers": [], "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
        await app(scope, receive, send)

    middleware = obsml.ObsmlMiddleware(asgi_app, service="s", store=str(tmp_path))
    asyncio.run(serve_one(middleware))
    obsml.flush()
    freed = weakref.ref(middleware)
    del middleware
    gc.collect()
    assert freed() is None
    assert list(tmp_path.glob("traces/**/*.jsonl"))  # it served, and its writer wrote
