"""The WSGI side's views of a request's I/O: what the app reads, and the headers as the core reads them.

:class:`InputTee` stands in for ``wsgi.input`` and feeds the capture every byte the app reads,
never reading on the app's behalf. :class:`EnvironHeaders` and :class:`Latin1Pairs` show PEP 3333's
``str`` headers as the raw ``(name, value)`` byte pairs the core reads, encoded only when the
writer reads them, off the request path.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from ._capture import Capture
from ._stats import report_internal_error
from ._types import Environ


class InputTee:
    """``wsgi.input`` for the app: every byte it reads is also fed to the capture."""

    __slots__ = ("capture", "stream", "stream_readinto")

    def __init__(self, stream: Any, capture: Capture) -> None:
        self.stream = stream
        self.stream_readinto = getattr(stream, "readinto", None)
        self.capture = capture

    def read(self, *args: Any) -> bytes:
        data: bytes = self.stream.read(*args)
        if data:  # _feed inlined: the app's reads are the hot path of a request body
            try:
                self.capture.request_body.feed(data)
            except Exception:
                report_internal_error("capturing a request body")
        # As a file's read() (PEP 3333): everything, or less than asked for, means the end.
        if not args or args[0] is None or args[0] < 0 or len(data) < args[0]:
            self.capture.request_ended = True
        return data

    def readline(self, *args: Any) -> bytes:
        line: bytes = self.stream.readline(*args)
        self._feed(line)
        if not line and not (args and args[0] == 0):
            self.capture.request_ended = True
        return line

    def readinto(self, buffer: Any) -> int:
        # Not in PEP 3333, but werkzeug's LimitedStream (Flask) reads through it when present.
        if self.stream_readinto is None:  # a server's stream with read() only
            data = self.read(len(buffer))
            buffer[: len(data)] = data
            return len(data)
        size: int = self.stream_readinto(buffer) or 0
        if size:
            try:  # the view is copied into the body's slabs (or kept as bytes) before this returns
                self.capture.request_body.feed(memoryview(buffer)[:size])
            except Exception:
                report_internal_error("capturing a request body")
        elif len(buffer):
            self.capture.request_ended = True
        return size

    def readlines(self, *args: Any) -> list[bytes]:
        lines: list[bytes] = self.stream.readlines(*args)
        for line in lines:
            self._feed(line)
        if not args or args[0] is None or args[0] <= 0:
            self.capture.request_ended = True
        return lines

    def __iter__(self) -> Iterator[bytes]:
        for line in self.stream:
            self._feed(line)
            yield line
        self.capture.request_ended = True

    def __getattr__(self, name: str) -> Any:
        # Anything beyond PEP 3333's four methods (a server's extras) goes to the real stream.
        return getattr(self.stream, name)

    def _feed(self, data: bytes | memoryview) -> None:
        if data:
            try:
                self.capture.request_body.feed(data)
            except Exception:
                report_internal_error("capturing a request body")


class EnvironHeaders:
    """The request headers of an environ as raw pairs, decoded only when the writer reads them."""

    __slots__ = ("environ",)

    def __init__(self, environ: Environ) -> None:
        self.environ = environ

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        process_environment = os.environ
        for key, value in self.environ.items():
            if not isinstance(value, str):
                continue
            if key.startswith("HTTP_"):
                if process_environment.get(key) == value:
                    # granian copies the process environment into every environ: an HTTP_PROXY
                    # with its password is the operator's, not a header the client sent.
                    continue
                name = key[5:]
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                if not value:
                    continue
                name = key
            else:
                continue
            yield name.lower().replace("_", "-").encode("latin-1"), value.encode("latin-1")


class Latin1Pairs:
    """WSGI's ``str`` header pairs as the raw pairs the core reads, encoded only when read."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        for name, value in self.pairs:
            yield name.encode("latin-1"), value.encode("latin-1")
