from __future__ import annotations

import os
import pty
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from azurite import azure_container, azurite, azurite_on_disk  # noqa: F401
from servers import RunningCommand, free_port, running_command, store_env

import obsml
from obsml._pipeline import _PIPELINES, _PIPELINES_LOCK
from obsml._reader import StoreReader
from obsml._stats import STATS

# obsml's own errors are raised, not counted, everywhere in the tests (also in subprocesses).
os.environ["OBSML_STRICT"] = "true"
# Status files appear on a timer: tests that count a store's objects exactly would depend on it.
# tests/test_status.py turns them on where it tests them.
os.environ["OBSML_STATUS"] = "false"
# Remote stores spool here, not in ~/.cache (subprocesses inherit it).
os.environ["OBSML_SPOOL_DIR"] = tempfile.mkdtemp(prefix="obsml-test-spool-")


@pytest.fixture(autouse=True)
def fresh_stats() -> Iterator[None]:
    STATS.reset()
    yield
    obsml.flush(10)


@pytest.fixture
def forget_new_pipelines() -> Iterator[None]:
    """Pipelines whose sink stays down (or is gone) must not make later tests' flushes wait for them."""
    with _PIPELINES_LOCK:
        before = set(_PIPELINES)
    yield
    with _PIPELINES_LOCK:
        for key in set(_PIPELINES) - before:
            pipeline = _PIPELINES.pop(key)
            if pipeline.store.delivery is not None:
                pipeline.store.delivery.close(0)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def read_spans(store: Path) -> list[dict[str, Any]]:
    """Every span in the store's part files, in start order."""
    return StoreReader.open(str(store)).spans()


def span_by_correlation_id(store: Path, correlation_id: str) -> dict[str, Any]:
    """The one span of a request. The client may see the response before the server has
    handed the finished capture to the writer, so wait (briefly) for it to arrive."""
    deadline = time.monotonic() + 10
    while True:
        obsml.flush()
        matches = [s for s in read_spans(store) if s["attributes"]["obsml.correlation_id"] == correlation_id]
        if matches or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(matches) == 1, f"{len(matches)} spans for {correlation_id!r}"
    return matches[0]


def body_bytes(span: dict[str, Any], direction: str) -> bytes:
    """The captured body of a span, from inline text or from the store."""
    import base64

    attributes = span["attributes"]
    prefix = f"obsml.{direction}.body"
    if f"{prefix}.uri" in attributes:
        return Path(attributes[f"{prefix}.uri"].removeprefix("file://")).read_bytes()
    if attributes[f"{prefix}.encoding"] == "base64":
        return base64.b64decode(attributes[prefix])
    return str(attributes[prefix]).encode("utf-8")


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@contextmanager
def running_server(app: Any, **config: Any) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 in a thread; stopped (with lifespan shutdown) on exit."""
    sock = free_socket()
    options: dict[str, Any] = {"log_level": "warning", "lifespan": "on", "ws": "wsproto"}
    server = uvicorn.Server(uvicorn.Config(app, **{**options, **config}))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            thread.join(0.01)
        host, port = sock.getsockname()
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture
def serve() -> Callable[..., Any]:
    return running_server




@contextmanager
def running_gunicorn(
    app: str, store: Path, *options: str, env: dict[str, str] | None = None
) -> Iterator[RunningCommand]:
    """A real gunicorn master with forked workers on 127.0.0.1, serving ``app`` from tests/."""
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
               "--graceful-timeout", "30", "--log-level", "warning", "--no-control-socket", *options, app]
    log = store.parent / f"gunicorn-{port}.log"
    with running_command(command, port, log, store_env(store, **(env or {}))) as server:
        yield server


def load_every_worker(url: str, requests: int, workers: int = 2, timeout: float = 120) -> tuple[set[int], int]:
    """Concurrent ``GET /slow/<row>`` (``x-correlation-id: row-<row>``), at least ``requests`` of them and
    on until ``workers`` worker processes have answered: the pids that did, and the rows sent (0 to n-1).

    gunicorn's master listens before its workers have loaded the app: under load, one still loading
    gets no request of a first batch (wsgi_apps' /slow answers with the worker's pid).
    """

    def one(row: int) -> int:
        with httpx.Client(base_url=url, timeout=30) as client:
            response = client.get(f"/slow/{row}", headers={"x-correlation-id": f"row-{row}"})
        response.raise_for_status()
        return int(response.json()["pid"])

    pids: set[int] = set()
    sent, deadline = 0, time.monotonic() + timeout
    with ThreadPoolExecutor(8) as pool:
        while sent < requests or (len(pids) < workers and time.monotonic() < deadline):
            batch = max(8, requests - sent)
            pids.update(pool.map(one, range(sent, sent + batch)))
            sent += batch
    return pids, sent


def install_plugin(
    site: Path, monkeypatch: pytest.MonkeyPatch, name: str, module_source: str,
    group: str = "obsml.exporters", factory: str = "make_exporter",
) -> None:
    """A real installed distribution (dist-info with entry points) on sys.path."""
    (site / f"{name}_plugin.py").write_text(textwrap.dedent(module_source))
    dist = site / f"{name}_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{name} = {name}_plugin:{factory}\n")
    monkeypatch.syspath_prepend(str(site))


def drawn_on_a_terminal(command: list[str], timeout: float = 120) -> str:
    """What ``command`` writes to its standard error when that is a terminal: its progress bar."""
    primary, secondary = pty.openpty()
    try:
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=secondary, timeout=timeout, check=True)
        os.set_blocking(primary, False)
        return os.read(primary, 65536).decode()
    finally:
        os.close(primary)
        os.close(secondary)
