"""``obsml run``: any ASGI or WSGI app, served by a real server, wrapped in every worker, flushed at SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import falcon
import falcon.asgi
import httpx
import litestar
import pytest
from conftest import body_bytes, read_spans
from servers import TESTS, RunningCommand, free_port, running_command, store_env

from obsml._run import interface_of, load_app

REQUESTS = 12
OBSML_RUN = [sys.executable, "-m", "obsml.cli", "run"]


def bind_options(server: str, port: int) -> list[str]:
    if server == "gunicorn":
        return ["--bind", f"127.0.0.1:{port}"]
    return ["--host", "127.0.0.1", "--port", str(port)]


def wait_for_log(running: RunningCommand, text: str) -> None:
    deadline = time.monotonic() + 60
    while text not in running.log():
        assert time.monotonic() < deadline, running.log()
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("server", "app"),
    [
        pytest.param(None, "run_apps:fastapi_app", id="uvicorn-by-default-fastapi"),
        pytest.param("gunicorn", "run_apps:fastapi_app", id="gunicorn-fastapi"),
        pytest.param("gunicorn", "run_apps:flask_app", id="gunicorn-flask"),
        pytest.param("granian", "run_apps:fastapi_app", id="granian-fastapi"),
        pytest.param("granian", "run_apps:flask_app", id="granian-flask"),
    ],
)
def test_obsml_run_serves_the_app_wrapped_in_two_workers_and_every_request_is_stored_after_sigterm(
    tmp_path: Path, server: str | None, app: str
) -> None:
    store, port = tmp_path / "store", free_port()
    choice = ["--server", server] if server else []
    command = [*OBSML_RUN, *choice, "--workers", "2", app, *bind_options(server or "uvicorn", port)]
    with running_command(command, port, tmp_path / "server.log", store_env(store)) as running:
        if server == "granian":
            # granian 2.8 leaves a worker running forever when SIGTERM comes while it starts (bare apps too).
            wait_for_log(running, "Started worker-1")
            wait_for_log(running, "Started worker-2")
        with httpx.Client(base_url=running.url, timeout=30) as client:
            for row in range(REQUESTS):
                response = client.post("/echo", content=f'{{"row": {row}}}', headers={"x-correlation-id": f"row-{row}"})
                assert response.status_code == 200
        exit_code = running.stop()
    assert exit_code in (0, -15), running.log()
    assert (server or "uvicorn") in running.log().lower()
    spans = {span["attributes"]["obsml.correlation_id"]: span for span in read_spans(store)}
    assert sorted(spans) == sorted(f"row-{row}" for row in range(REQUESTS)), running.log()
    for row in range(REQUESTS):
        span = spans[f"row-{row}"]
        assert body_bytes(span, "request") == body_bytes(span, "response") == f'{{"row": {row}}}'.encode()


def test_a_wsgi_app_is_served_by_gunicorn_by_default(tmp_path: Path) -> None:
    store, port = tmp_path / "store", free_port()
    command = [*OBSML_RUN, "run_apps:flask_app", "--", "--bind", f"127.0.0.1:{port}", "--workers", "2"]
    with running_command(command, port, tmp_path / "server.log", store_env(store)) as running:
        pids = {httpx.get(f"{running.url}/pid", headers={"x-correlation-id": f"pid-{n}"}).json()["pid"]
                for n in range(8)}
        running.stop()
    assert "gunicorn" in running.log()
    writers = {Path(part).name.split("-")[0] for part in (store / "traces").rglob("*.jsonl")}
    assert writers == {str(pid) for pid in pids}
    assert len(read_spans(store)) == 8


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(["run_apps:ambiguous"], "cannot tell whether run_apps:ambiguous is an ASGI or a WSGI app "
                     "(it is neither a coroutine function nor a callable of (environ, start_response)): "
                     "pass --interface asgi or --interface wsgi", id="three-argument-function"),
        pytest.param(["run_apps:not_an_app"], "run_apps:not_an_app is not an ASGI or WSGI app: it is not callable "
                     "(type int)", id="not-callable"),
        pytest.param(["run_apps"], "'run_apps' is not an app: expected module:attribute, such as main:app",
                     id="no-attribute-given"),
        pytest.param(["run_apps:missing"], "module 'run_apps' has no attribute 'missing'", id="missing-attribute"),
        pytest.param(["no_such_module:app"], f"cannot import 'no_such_module' from {TESTS}: no such module",
                     id="missing-module"),
        pytest.param(["run_apps:flask_app", "--server", "uvicorn"],
                     "uvicorn serves WSGI apps only through a deprecated adapter, with no shutdown to flush in: "
                     "use --server gunicorn or --server granian", id="wsgi-under-uvicorn"),
    ],
)
def test_obsml_run_refuses_what_it_cannot_serve_and_says_why(arguments: list[str], message: str) -> None:
    result = subprocess.run([*OBSML_RUN, *arguments], cwd=TESTS, capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr) == (2, f"obsml run: {message}\n")


@pytest.mark.parametrize(
    ("app", "interface"),
    [
        pytest.param("fastapi_app", "asgi", id="fastapi"),
        pytest.param("flask_app", "wsgi", id="flask"),
        pytest.param("coroutine_app", "asgi", id="coroutine-function"),
        pytest.param("wsgi_function", "wsgi", id="two-argument-function"),
    ],
)
def test_the_interface_is_detected_from_the_app(app: str, interface: str) -> None:
    assert interface_of(load_app(f"run_apps:{app}"), app) == interface


@pytest.mark.parametrize(
    ("make_app", "interface"),
    [
        pytest.param(falcon.App, "wsgi", id="falcon"),
        pytest.param(falcon.asgi.App, "asgi", id="falcon-asgi"),
        pytest.param(lambda: litestar.Litestar([]), "asgi", id="litestar"),
    ],
)
def test_other_frameworks_apps_are_detected_too(make_app: Callable[[], object], interface: str) -> None:
    assert interface_of(make_app(), "main:app") == interface
