"""An offloaded body's raw bytes while it waits, whole, for redaction (issue 15), on the writer.

A small body waits in memory, under one budget per redactor; a bigger one, or one past the
budget, waits in the redactor's private file (without a name where the system allows, so that a
crash leaves nothing). The file cost about as much as storing the body a second time (a create,
a write, a read back, and freeing its disk blocks): 100 KB JSON bodies took 2.4-3.6x the floor
of writing them (issue 16).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from ._body_redaction import BodyRedactor

IN_MEMORY_BODY = 1024 * 1024  # a body up to this size may wait in memory...
IN_MEMORY_TOTAL = 8 * 1024 * 1024  # ...while a redactor's bodies waiting there hold at most this
_PIECE = 1024 * 1024  # a body copied to the store as received goes in pieces of this size


class RawBody:
    """One body's raw bytes: in memory while they fit the budget, else in a private file."""

    __slots__ = ("file", "memory", "redactor", "size")

    def __init__(self, redactor: BodyRedactor) -> None:
        self.redactor = redactor
        self.memory: bytearray | None = bytearray()
        self.file: IO[bytes] | None = None
        self.size = 0

    def write(self, data: memoryview) -> None:
        self.size += len(data)
        memory = self.memory
        if memory is not None:
            redactor = self.redactor
            if self.size <= IN_MEMORY_BODY and redactor.raw_in_memory + len(data) <= IN_MEMORY_TOTAL:
                memory += data
                redactor.raw_in_memory += len(data)
                return
            self.file = redactor.raw_file()
            self.file.write(memory)
            self._release_memory()
        assert self.file is not None
        self.file.write(data)

    def take(self) -> bytes:
        """All the bytes, read once; the memory they waited in is let go of."""
        if self.memory is not None:
            data = bytes(self.memory)
            self._release_memory()
            return data
        assert self.file is not None
        self.file.seek(0)
        return self.file.read()

    def pieces(self) -> Iterator[bytes]:
        """The bytes in pieces (a body over the redaction budget, stored as received)."""
        if self.memory is not None:
            view = memoryview(self.memory)
            for start in range(0, len(view), _PIECE):
                yield bytes(view[start : start + _PIECE])
            return
        assert self.file is not None
        self.file.seek(0)
        while piece := self.file.read(_PIECE):
            yield piece

    def close(self) -> None:
        """Let go of the bytes (a file without a name takes them with it)."""
        self._release_memory()
        file, self.file = self.file, None
        if file is not None:
            file.close()

    def _release_memory(self) -> None:
        memory, self.memory = self.memory, None
        if memory is not None:
            self.redactor.raw_in_memory -= len(memory)
