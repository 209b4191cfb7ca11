"""``gunicorn -c python:obsml.gunicorn app:app``: obsml around an app that never mentions it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from conftest import body_bytes, read_spans, running_gunicorn
from servers import TESTS

REQUESTS = 12
OBSML_CONFIG = ("-c", "python:obsml.gunicorn")


def post_rows(url: str) -> None:
    """REQUESTS echoed rows, each with its correlation id."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for row in range(REQUESTS):
            response = client.post("/echo", content=f'{{"row": {row}}}', headers={"x-correlation-id": f"row-{row}"})
            assert response.status_code == 200


def assert_every_row_stored_once(store: Path) -> None:
    spans = {}
    for span in read_spans(store):
        correlation_id = span["attributes"]["obsml.correlation_id"]
        assert correlation_id not in spans, f"{correlation_id} stored twice"
        spans[correlation_id] = span
    for row in range(REQUESTS):
        span = spans[f"row-{row}"]
        assert body_bytes(span, "request") == body_bytes(span, "response") == f'{{"row": {row}}}'.encode()


@pytest.mark.parametrize(
    ("app", "options"),
    [
        pytest.param("run_apps:flask_app", (), id="flask-sync-workers"),
        pytest.param("run_apps:flask_app", ("--preload",), id="flask-preloaded"),
        pytest.param("run_apps:flask_app", ("--threads", "4"), id="flask-gthread-workers"),
        pytest.param("wsgi_apps:plain_app", (), id="already-wrapped-app-kept-as-is"),
    ],
)
def test_the_config_wraps_each_workers_wsgi_app_and_every_request_is_stored_after_sigterm(
    store: Path, app: str, options: tuple[str, ...]
) -> None:
    with running_gunicorn(app, store, *OBSML_CONFIG, "--workers", "2", *options) as server:
        post_rows(server.url)
        assert server.stop() == 0, server.log()
    assert_every_row_stored_once(store)


def test_the_config_wraps_gunicorns_own_asgi_worker(store: Path) -> None:
    with running_gunicorn("run_apps:fastapi_app", store, *OBSML_CONFIG, "--worker-class", "asgi") as server:
        post_rows(server.url)
        assert server.stop() == 0, server.log()
    assert_every_row_stored_once(store)


USER_CONFIG = """
import os

workers = 2

def post_worker_init(worker):
    with open(os.path.join({marks!r}, str(os.getpid())), "w") as mark:
        mark.write(type(worker.wsgi).__name__)
"""


def test_a_users_own_config_runs_first_and_its_hook_runs_after_the_wrapping(tmp_path: Path, store: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    config = tmp_path / "gunicorn.conf.py"
    config.write_text(textwrap.dedent(USER_CONFIG.format(marks=str(marks))))
    env = {"OBSML_GUNICORN_CONFIG": str(config)}
    with running_gunicorn("run_apps:flask_app", store, *OBSML_CONFIG, env=env) as server:
        pids = {httpx.get(f"{server.url}/pid").json()["pid"] for _ in range(16)}
        post_rows(server.url)
        assert server.stop() == 0, server.log()
    # The user's settings hold (two workers), and their hook saw the app obsml had already wrapped.
    hooked = {mark.name: mark.read_text() for mark in marks.iterdir()}
    assert list(hooked.values()) == ["ObsmlWSGIMiddleware"] * 2
    assert {str(pid) for pid in pids} <= set(hooked)
    assert_every_row_stored_once(store)


def graceful_timeout(env: dict[str, str], *options: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--print-config", *OBSML_CONFIG, *options, "run_apps:flask_app"],
        cwd=TESTS, env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=True,
    )
    [line] = [line for line in result.stdout.splitlines() if line.startswith("graceful_timeout ")]
    return line.split("=")[1].strip()


@pytest.mark.parametrize(
    ("flush_timeout", "user_config", "options", "expected"),
    [
        pytest.param("5", "", (), "30", id="gunicorns-default-covers-the-flush"),
        pytest.param("40", "", (), "45", id="raised-above-a-long-flush"),
        pytest.param("40", "graceful_timeout = 90\n", (), "90", id="the-users-config-wins"),
        pytest.param("40", "", ("--graceful-timeout", "100"), "100", id="the-command-line-wins"),
    ],
)
def test_the_graceful_timeout_is_above_the_flush_timeout_unless_the_user_set_it(
    tmp_path: Path, flush_timeout: str, user_config: str, options: tuple[str, ...], expected: str
) -> None:
    env = {"OBSML_FLUSH_TIMEOUT": flush_timeout}
    if user_config:
        (tmp_path / "user.py").write_text(user_config)
        env["OBSML_GUNICORN_CONFIG"] = str(tmp_path / "user.py")
    assert graceful_timeout(env, *options) == expected
