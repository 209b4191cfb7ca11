"""Real servers as subprocesses: start a command, wait for its port, stop it with a signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Command:
    def __init__(self, process: subprocess.Popen[bytes], output: Path) -> None:
        self.process = process
        self.output = output

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` (unless it already ended) and return the exit code (negative: killed by a signal)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def log(self) -> str:
        return self.output.read_text(errors="replace")


@contextmanager
def running_command(
    command: Sequence[str], port: int, env: Mapping[str, str] | None = None, *,
    cwd: Path | None = None, output: Path | None = None, start_timeout: float = 60,
) -> Iterator[Command]:
    """``command`` (with ``env`` over os.environ) until it accepts connections on 127.0.0.1:``port``.

    Stdout and stderr go to ``output`` (read it with ``log()``; by default a temporary file,
    removed on leaving the block). Leaving the block stops it with SIGTERM if it still runs.
    """
    temporary = output is None
    if output is None:
        fd, name = tempfile.mkstemp(prefix="server-", suffix=".log")
        os.close(fd)
        output = Path(name)
    with open(output, "wb") as out:
        process = subprocess.Popen(
            list(command), env={**os.environ, **(env or {})}, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
    server = Command(process, output)
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
        if temporary:
            output.unlink()
