"""Part files: records batched per partition folder and written to the store as whole objects.

One writer of part files serves every format that lands as a partitioned dataset: the jsonl
span exporter (``traces/<yyyy>/<mm>/<dd>/<hh>/``), the request logs (``logs/…``) and the model
data collector (``modeldata/…``). A batch is written as ``<folder>/<writer-id>-<sequence><suffix>``,
the writer id ``<pid>-<random>`` being renewed in a forked child (which keeps none of its
parent's batches), once its records pass a count or a size, or when the background writer's
interval (or a flush) comes. Records are counted as written only once their part file is in
the store (or its spool).

Lines (``bytes`` records) are streamed: a part file is opened, under its temporary name, once
its lines pass :data:`CHUNK_BYTES`, and they go to it a chunk at a time. Holding a whole batch
of lines instead cost a page fault per 4 KB line, memory the allocator gave back to the system
after each batch and mapped again for the next, and a system call per two lines through an
8 KB file buffer (issue 16). Records an ``encode`` turns into a file (CSV, Parquet) are batched
whole, as such a file needs them all.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from ._forks import renew_locks_in_child
from ._objects import describe_error, failure_reason
from ._stats import count, logger, record_drop

if TYPE_CHECKING:
    from ._objects import AtomicTarget
    from ._stats import Counter
    from ._store import Store

MAX_RECORDS = 1000
# A part file is also written once its records pass this size, so that a batch of large
# records (spans with inline bodies up to the inline limit, twice) stays small: it counts in
# obsml's worst-case memory.
MAX_BYTES = 8 * 1024 * 1024
# Lines wait in memory up to this many bytes, then go to their part file in one write: under the
# allocator's threshold for mapping memory of its own (128 KiB), so the same memory serves again.
CHUNK_BYTES = 64 * 1024
# What a forked child inherited of its parent's open part files: kept, never closed, written or
# aborted (a file object let go would write out what its buffer holds into the parent's file).
_INHERITED: list[object] = []
# This process's id, renewed in a forked child: os.getpid() is a system call (glibc caches it no more).
_process = [os.getpid()]


def _forked() -> None:
    _process[0] = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class _Part:
    """One part file being filled: its name, its target once opened, what it holds."""

    __slots__ = ("lines", "name", "pending", "records", "size", "target")

    def __init__(self, name: str) -> None:
        self.name = name
        self.target: AtomicTarget | None = None
        self.records: list[Any] = []  # every record of the part (lines: those not yet written)
        self.lines = 0  # lines in the part, written or not
        self.pending = 0  # bytes of the lines not yet written
        self.size = 0  # bytes of every record of the part (estimates for encoded records)


class PartFiles:
    """Part files being filled, one per partition folder.

    ``kind`` names the records in drop counts; ``written`` is the counter of records written.
    Records are ``bytes`` lines written as they are, unless ``encode`` is given: then a batch
    of any records becomes its file's bytes through it (a CSV header, one Parquet table).
    """

    def __init__(
        self,
        store: Store,
        *,
        kind: str,
        written: Counter,
        suffix: str = ".jsonl",
        max_records: int = MAX_RECORDS,
        max_bytes: int = MAX_BYTES,
        encode: Callable[[list[Any]], Iterable[bytes]] | None = None,
    ) -> None:
        self._store = store
        self._kind = kind
        self._written: Counter = written
        self._suffix = suffix
        self._max_records = max_records
        self._max_bytes = max_bytes
        self._encode = encode
        # Only the writer thread adds; a flush may come from another (an application's provider).
        self._lock = threading.Lock()
        renew_locks_in_child(self, "_lock")
        self._pid = 0
        self._writer_id = ""
        self._seq = 0
        self._parts: dict[str, _Part] = {}
        self._held = 0  # encoded records held in memory, over every part
        self._held_bytes = 0

    def add(self, folder: str, record: Any, size: int = 0) -> None:
        """Batch ``record`` for the part file of ``folder``; writes the part out once it is full.

        ``size`` is the record's bytes when it is not ``bytes`` itself (an estimate will do).
        """
        with self._lock:
            self._check_pid()
            part = self._parts.get(folder)
            if part is None:
                self._seq += 1
                part = self._parts[folder] = _Part(f"{folder}/{self._writer_id}-{self._seq:06d}{self._suffix}")
            part.records.append(record)
            if self._encode is None:
                part.lines += 1
                part.pending += len(record)
                part.size += len(record)
                if part.pending >= CHUNK_BYTES and not self._write_lines(part):
                    del self._parts[folder]
                    return
                if part.lines < self._max_records and part.size < self._max_bytes:
                    return
                full = [self._parts.pop(folder)]
            else:
                part.size += size
                self._held += 1
                self._held_bytes += size
                # Encoded records wait whole: their bounds are over every folder, as memory is.
                if self._held < self._max_records and self._held_bytes < self._max_bytes:
                    return
                full = self._take_all()
            for due in full:
                self._commit(due)

    def tick(self, force: bool) -> None:
        """A :class:`~obsml._writer.Ticker`: what is batched is due at every interval."""
        self.flush()

    def flush(self) -> bool:
        """Write every part out; False when one could not be written (counted)."""
        with self._lock:
            self._check_pid()
            return all([self._commit(part) for part in self._take_all()])

    def _check_pid(self) -> None:
        if self._pid != _process[0]:  # a forked child names its own files and keeps none of the parent's
            if self._parts:
                _INHERITED.append(self._parts)
            self._pid, self._writer_id, self._seq = _process[0], f"{_process[0]}-{secrets.token_hex(4)}", 0
            self._parts, self._held, self._held_bytes = {}, 0, 0

    def _take_all(self) -> list[_Part]:
        parts, self._parts, self._held, self._held_bytes = list(self._parts.values()), {}, 0, 0
        return parts

    def _write_lines(self, part: _Part) -> bool:
        """The part's pending lines, in one write to its target (opened with the first); False when
        it failed, then the part is aborted and its lines counted as dropped."""
        try:
            if part.target is None:
                part.target = self._store.open_atomic(part.name)
            # One copy of at most a chunk: a write per line cost a system call per 8 KB buffer.
            part.target.write(b"".join(part.records))
        except Exception as exc:
            self._failed(part, exc)
            return False
        part.records, part.pending = [], 0
        return True

    def _commit(self, part: _Part) -> bool:
        try:
            if self._encode is None:
                if part.records and not self._write_lines(part):
                    return False
                target = part.target
                assert target is not None  # a part holds a line at least
            else:
                target = part.target = self._store.open_atomic(part.name)
                for chunk in self._encode(part.records):
                    target.write(chunk)
            target.commit()
        except Exception as exc:
            self._failed(part, exc)
            return False
        count(self._written, part.lines if self._encode is None else len(part.records))
        return True

    def _failed(self, part: _Part, exc: Exception) -> None:
        if part.target is not None:
            try:
                part.target.abort()
            except Exception:
                logger.debug("obsml could not remove the temporary file of %s", part.name, exc_info=True)
        lost = part.lines if self._encode is None else len(part.records)
        record_drop(self._kind, failure_reason(exc), lost, detail=describe_error(exc))
        logger.debug("obsml could not write %s", part.name, exc_info=True)
