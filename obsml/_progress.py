"""A progress bar for the commands that take a while (``obsml report``, ``obsml export``).

Drawn on one line of standard error when it is a terminal; nothing at all otherwise (a pipe, a
cron job's mail), so that scripts read only the commands' own lines.
"""

from __future__ import annotations

from typing import IO


class Progress:
    """``obsml report: [3/7] model data`` redrawn on one line of a terminal; nothing when not a terminal."""

    def __init__(self, command: str, total: int, stream: IO[str]) -> None:
        self.command, self.total, self.stream, self.done = command, total, stream, 0
        self.shown = stream.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        if self.shown:
            filled = int(20 * (self.done - 1) / self.total)
            bar = "#" * filled + "-" * (20 - filled)
            self.stream.write(f"\r\x1b[2K{self.command}: [{bar}] {self.done}/{self.total} {what}")
            self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
