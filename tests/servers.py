"""Real servers as subprocesses: run a command, wait for its port, stop it with a signal.

Any server the tests need (gunicorn, uWSGI, granian, waitress...) is one command line; the
binaries sit next to the venv's python. The subprocess runs in tests/ (so it imports the test
apps) and inherits the environment (so it imports the obsml on PYTHONPATH).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

TESTS = Path(__file__).parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def store_env(store: Path, **more: str) -> dict[str, str]:
    """obsml configured as a deployment does it, by environment: this store, short part-file interval."""
    return {"OBSML_STORE": str(store), "OBSML_FLUSH_INTERVAL": "0.1", **more}


class RunningCommand:
    def __init__(self, url: str, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.url = url
        self.process = process
        self.log_path = log_path

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Graceful stop, as an orchestrator does it (SIGTERM by default); the exit status
        (negative: ended by that signal)."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_command(
    command: Sequence[str], port: int, log: Path, env: Mapping[str, str] | None = None, *,
    cwd: Path = TESTS, start_timeout: float = 60,
) -> Iterator[RunningCommand]:
    """``command`` serving HTTP on 127.0.0.1:``port``, its output in ``log``; SIGTERM on leaving."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            list(command), cwd=cwd, env={**os.environ, **(env or {})}, stdout=log_file, stderr=subprocess.STDOUT
        )
    server = RunningCommand(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not start (exit code {process.poll()}):\n{server.log()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield server
    finally:
        server.stop()
