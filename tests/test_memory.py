"""obsml's worst-case memory (README, "Memory"), held by a real uvicorn process under load.

The server runs in a subprocess whose peak resident size is read from ``/proc``: first under
a load sent past obsml (``/bare/…``), then under the same load through it. What obsml added
to the peak must stay under the README's formula for the settings used, with a margin for
the allocator. On a breach the load stops at once, so a regression fails fast and small.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import free_socket
from servers import TESTS

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
