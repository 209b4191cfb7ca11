"""Every way a server ends a process gracefully writes every captured span, and what cannot be is counted.

The exit paths of obsml/_writer.py (atexit, multiprocessing finalizers, the SIGTERM handler)
and the lifespan scope in obsml/asgi.py, under real servers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from conftest import free_socket, read_spans, running_server
from servers import free_port, running_command
from starlette.applications import Starlette

import obsml
from obsml import ObsmlMiddleware, ObsmlWSGIMiddleware

REQUESTS = 50
PYTHON = sys.executable

# server -> (command, the path a request row is sent to)
SERVERS: dict[str, tuple[list[str], str]] = {
    "granian-wsgi": (
        [PYTHON, "-m", "granian", "--interface", "wsgi", "--workers", "1", "--log-level", "warning",
         "--host", "127.0.0.1", "--port", "{port}", "shutdown_apps:wsgi_app"],
        "/rows/{row}",
    ),
    "waitress": ([PYTHON, "-m", "waitress", "--listen=127.0.0.1:{port}", "shutdown_apps:wsgi_app"], "/rows/{row}"),
    "django-uvicorn": (
        [PYTHON, "-m", "uvicorn", "--log-level", "warning", "--host", "127.0.0.1", "--port", "{port}",
         "django_asgi_app:application"],
        "/score/{row}",
    ),
    "django-granian": (
        [PYTHON, "-m", "granian", "--interface", "asgi", "--workers", "1", "--log-level", "warning",
         "--host", "127.0.0.1", "--port", "{port}", "django_asgi_app:application"],
        "/score/{row}",
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("server", list(SERVERS))
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_every_request_is_in_the_store_after_the_server_is_stopped_by_a_signal(
    tmp_path: Path, server: str, sig: signal.Signals
) -> None:
    store = tmp_path / "store"
    command, route = SERVERS[server]
    port = free_port()
    env = {"OBSML_STORE": str(store), "OBSML_FLUSH_INTERVAL": "3600"}  # nothing is written before the stop
    command = [part.format(port=port) for part in command]
    with running_command(command, port, tmp_path / "server.log", env) as process:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for row in range(REQUESTS):
                client.get(route.format(row=row), headers={"x-correlation-id": f"row-{row}"}).raise_for_status()
        assert read_spans(store) == []
        exit_code = process.stop(sig)
    ids = sorted(span["attributes"]["obsml.correlation_id"] for span in read_spans(store))
    assert ids == sorted(f"row-{row}" for row in range(REQUESTS)), process.log()
    if server == "waitress" and sig == signal.SIGTERM:
        assert exit_code == -signal.SIGTERM  # it still dies of SIGTERM, as without obsml, only later


def test_a_late_capture_after_the_exit_flush_is_counted_and_logged_and_flush_answers_at_once(tmp_path: Path) -> None:
    # A user's atexit hook registered before the first request runs after obsml's own exit flush.
    script = textwrap.dedent("""
        import atexit, io, wsgiref.util
        import obsml

        def app(environ, start_response):
            start_response("200 OK", [("content-type", "text/plain")])
            return [b"ok"]

        middleware = obsml.ObsmlWSGIMiddleware(app)

        def request(correlation_id):
            environ = {"HTTP_X_CORRELATION_ID": correlation_id, "wsgi.input": io.BytesIO()}
            wsgiref.util.setup_testing_defaults(environ)
            response = middleware(environ, lambda status, headers, exc_info=None: None)
            b"".join(response)
            response.close()

        def after_obsml():
            request("late")
            print("flush:", obsml.flush(10), "dropped:", obsml.stats()["dropped"])

        atexit.register(after_obsml)
        request("in-time")
    """)
    store = tmp_path / "store"
    env = {"OBSML_STORE": str(store), "OBSML_FLUSH_INTERVAL": "3600", "OBSML_STRICT": "true"}
    result = subprocess.run([PYTHON, "-c", script], env={**os.environ, **env}, capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.splitlines() == ["flush: True dropped: {'after_exit': {'span': 1}}"]
    assert "obsml dropped 1 span(s): after_exit" in result.stderr
    assert [span["attributes"]["obsml.correlation_id"] for span in read_spans(store)] == ["in-time"]


# --- the lifespan scope through obsml (in-process uvicorn) ---

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def _respond(send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def raises_for_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":  # as Django does
        raise ValueError(f"can only handle ASGI/HTTP connections, not {scope['type']}.")
    await _respond(send)


async def ignores_lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        await _respond(send)


@pytest.mark.parametrize("app", [raises_for_lifespan, ignores_lifespan], ids=["raises", "returns"])
def test_obsml_answers_lifespan_for_an_app_that_does_not_and_flushes_at_shutdown(
    store: Path, app: Callable[..., Awaitable[None]]
) -> None:
    middleware = ObsmlMiddleware(app, store=str(store), flush_interval=3600)
    with running_server(middleware, lifespan="on") as url, httpx.Client(base_url=url) as client:
        for row in range(3):
            client.get("/", headers={"x-correlation-id": f"row-{row}"}).raise_for_status()
    ids = sorted(span["attributes"]["obsml.correlation_id"] for span in read_spans(store))
    assert ids == ["row-0", "row-1", "row-2"]


@asynccontextmanager
async def failing_startup(app: Starlette) -> Any:
    raise RuntimeError("the model did not load")
    yield


async def sends_startup_failed(scope: Scope, receive: Receive, send: Send) -> None:
    assert (await receive())["type"] == "lifespan.startup"
    await send({"type": "lifespan.startup.failed", "message": "the model did not load"})


async def raises_after_receiving_startup(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    raise RuntimeError("the model did not load")


def test_a_shutdown_writes_a_request_whose_response_is_complete_though_its_app_has_not_returned(
    store: Path,
) -> None:
    """Django closes a response in a worker thread after the last body message; granian may end the
    worker's loop before that returns. The lifespan shutdown must write such a request's span, once,
    and leave a request still sending its response to finish on its own."""
    release = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise ValueError("Django can only handle ASGI/HTTP connections, not lifespan.")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        complete = scope["path"] == "/answered"
        await send({"type": "http.response.body", "body": b"ok", "more_body": not complete})
        await release.wait()  # the app tidies up after (or before) the end of its response

    middleware = ObsmlMiddleware(app, store=str(store), flush_interval=3600)

    def request(path: str, correlation_id: str) -> dict[str, Any]:
        return {"type": "http", "method": "GET", "path": path, "query_string": b"", "root_path": "",
                "headers": [(b"x-correlation-id", correlation_id.encode())], "http_version": "1.1"}

    async def serve_then_stop() -> None:
        async def receive_http() -> dict[str, Any]:
            await asyncio.Event().wait()  # no body, no disconnect
            return {}

        async def sent(message: dict[str, Any]) -> None:
            pass

        tasks = [asyncio.create_task(middleware(request(path, cid), receive_http, sent))
                 for path, cid in (("/answered", "answered"), ("/streaming", "streaming"))]
        await asyncio.sleep(0.05)  # both responses started, one complete
        lifespan = asyncio.Queue[dict[str, Any]]()
        for kind in ("lifespan.startup", "lifespan.shutdown"):
            lifespan.put_nowait({"type": kind})
        replies: list[str] = []

        async def lifespan_send(message: dict[str, Any]) -> None:
            replies.append(message["type"])

        await middleware({"type": "lifespan"}, lifespan.get, lifespan_send)
        assert replies == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
        assert [s["attributes"]["obsml.correlation_id"] for s in read_spans(store)] == ["answered"]
        release.set()  # the apps return after all: the answered request is not written twice
        await asyncio.gather(*tasks)

    asyncio.run(serve_then_stop())
    obsml.flush()
    assert sorted(s["attributes"]["obsml.correlation_id"] for s in read_spans(store)) == ["answered", "streaming"]


@pytest.mark.parametrize(
    ("app", "lifespan"),
    [
        pytest.param(Starlette(lifespan=failing_startup), "auto", id="starlette-lifespan-raises"),
        pytest.param(sends_startup_failed, "auto", id="sends-startup-failed"),
        # uvicorn's "auto" would carry on without lifespan after this, with or without obsml.
        pytest.param(raises_after_receiving_startup, "on", id="raises-after-receiving-startup"),
    ],
)
def test_an_app_whose_startup_fails_still_fails_through_obsml(store: Path, app: Any, lifespan: str) -> None:
    server = uvicorn.Server(uvicorn.Config(ObsmlMiddleware(app, store=str(store)), lifespan=lifespan,
                                           log_level="critical"))
    server.should_exit = True  # if it does start, it stops right away
    with free_socket() as sock, pytest.raises(SystemExit) as exited:
        server.run(sockets=[sock])
    assert exited.value.code == 3  # uvicorn's STARTUP_FAILURE


# --- the SIGTERM handler of the WSGI middleware ---


@pytest.fixture
def default_sigterm() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGTERM, previous)


def server_handler(signum: int, frame: object) -> None:
    raise AssertionError("never called")


@pytest.mark.usefixtures("default_sigterm")
@pytest.mark.parametrize(
    ("prepare", "options", "expected"),
    [
        pytest.param(lambda: None, {}, "obsml", id="default-action"),
        pytest.param(lambda: signal.signal(signal.SIGTERM, server_handler), {}, "server", id="server-handler-kept"),
        pytest.param(lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN), {}, "ignored", id="ignored-kept"),
        pytest.param(lambda: None, {"flush_on_sigterm": False}, "default", id="switched-off"),
    ],
)
def test_the_wsgi_middleware_handles_sigterm_only_where_it_would_kill_the_process(
    store: Path, prepare: Callable[[], object], options: dict[str, Any], expected: str
) -> None:
    prepare()
    ObsmlWSGIMiddleware(lambda environ, start_response: [], store=str(store), **options)
    handler = signal.getsignal(signal.SIGTERM)
    names = {signal.SIG_DFL: "default", signal.SIG_IGN: "ignored", server_handler: "server"}
    assert names.get(handler, "obsml") == expected


@pytest.mark.usefixtures("default_sigterm")
def test_the_wsgi_middleware_created_on_another_thread_leaves_sigterm_alone(store: Path) -> None:
    import threading

    thread = threading.Thread(target=ObsmlWSGIMiddleware, args=(lambda environ, start_response: [],),
                              kwargs={"store": str(store)})
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
