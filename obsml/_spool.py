"""The disk spool: how objects wait on the local disk for a remote sink without being lost.

For a remote store (any fsspec protocol but the local disk, or a sink plugin), the writer
commits every object (a part file, a payload) as one record in a local spool directory; the
delivery thread (``_delivery``) puts records to the sink in order and deletes each once the
sink has it, bounded by ``spool_max_bytes`` while the sink is down.

A record is one file, written under a temporary name and renamed into place::

    b"OBSMLSP1" | u32 path length | path (utf-8) | data | u64 data length | sha256(path + data)

Each process owns a directory ``<pid>-<random>`` holding an exclusive ``flock`` on its
``lock`` file for its lifetime. The kernel releases the lock when the process dies, however
it dies, so another process (the next start, or a sibling worker) adopts the directory's
records and delivers them. Record names start with the commit time, so adopted records sort
before newer ones and the sink receives objects in the order they were committed. A process
that starts while a dead one's records wait starts delivering them at once; and if its own
directory is deleted under it (cleaners empty caches and /tmp), it counts the records lost
with it and owns a new directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ._objects import PART_FOLDERS, StoreWriteError, is_data
from ._stats import count, record_drop, report_internal_error

if TYPE_CHECKING:
    pass

MAGIC = b"OBSMLSP1"
_TRAILER = struct.Struct(">Q32s")
_HEAD = struct.Struct(">I")
ADOPT_EVERY_S = 30.0  # how often the delivery thread looks for a dead process's records
_PAYLOAD_SHARE = 0.8  # of spool_max_bytes; the rest is kept for trace part files


def default_spool_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "obsml" / "spool"


class CorruptRecord(Exception):
    pass


class Spool:
    """This process's spool directory for one store, created (0700) on first use."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root  # <spool dir>/<store key>
        self.max_bytes = max_bytes
        self.wake: Callable[[], None] = lambda: None  # the delivery thread's doorbell
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()  # records, sizes, bytes
        self._directory_lock = threading.Lock()  # the writer and the delivery thread both own it
        self.directory: Path | None = None
        self._lock_file: BinaryIO | None = None
        self.records: deque[Path] = deque()  # committed, not yet delivered, in order
        self._sizes: dict[Path, int] = {}
        self.bytes = 0
        self._seq = 0

    def after_fork(self) -> None:
        # The parent keeps its directory (and its lock); the child starts a directory of its own.
        self.release_directory()
        self._reset()

    def release_directory(self) -> None:
        """Let go of our directory's lock: from now on another process may adopt its records."""
        lock_file, self._lock_file = self._lock_file, None
        if lock_file is not None:
            with contextlib.suppress(OSError):
                lock_file.close()

    def _own_directory(self) -> Path:
        with self._directory_lock:
            if self.directory is None:
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                os.chmod(self.root, 0o700)
                directory = self.root / f"{os.getpid()}-{secrets.token_hex(4)}"
                directory.mkdir(mode=0o700)
                lock_file = open(os.open(directory / "lock", os.O_CREAT | os.O_RDWR, 0o600), "rb")  # noqa: SIM115
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock_file, self.directory = lock_file, directory
            return self.directory

    def drop_vanished(self) -> None:
        """Forget (and count) committed records whose files are gone, and our directory if it is gone.

        A cleaner deleted the spool: what it held is lost, but the process goes on with a new
        directory (and a new lock), made by the next record.
        """
        with self._directory_lock:
            if self.directory is not None and not (self.directory / "lock").exists():
                self.release_directory()
                self.directory = None
        with self._lock:
            vanished = [path for path in self.records if not path.exists()]
            for path in vanished:
                self.records.remove(path)
                self.bytes -= self._sizes.pop(path, 0)
        if vanished:
            record_drop("record", "spool_lost", len(vanished), detail="the spool directory was deleted")

    def add(self, path: Path, size: int) -> None:
        """A committed record, last in delivery order; its ``size`` bytes are already reserved."""
        with self._lock:
            self.records.append(path)
            self._sizes[path] = size

    def remove(self, path: Path) -> None:
        """Delete a record (delivered, corrupt or set aside) and give back its bytes."""
        # The file first: a flush that sees no record left must find none on disk either.
        with contextlib.suppress(OSError):
            path.unlink()
        with self._lock:
            with contextlib.suppress(ValueError):
                self.records.remove(path)
            self.bytes -= self._sizes.pop(path, 0)

    def adoptable(self) -> bool:
        """Whether a dead process left records here (looked at, not taken)."""
        try:
            others = [other for other in self.root.iterdir() if other != self.directory and other.is_dir()]
        except OSError:
            return False
        for other in others:
            try:
                with open(other / "lock", "rb") as lock_file:
                    fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its owner lives
                    if any(path.name.endswith(".rec") for path in other.iterdir()):
                        return True
            except OSError:
                continue
        return False

    def open_record(self, relative: str) -> RecordWriter:
        return RecordWriter(self, relative)

    def next_name(self) -> str:
        with self._lock:
            self._seq += 1
            return f"{time.time_ns():020d}-{os.getpid()}-{self._seq:09d}.rec"

    def reserve(self, size: int, limit: int) -> bool:
        with self._lock:
            if self.bytes + size > limit:
                return False
            self.bytes += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self.bytes -= size

    def adopt_orphans(self) -> int:
        """Move the records of dead processes' directories into ours; returns how many."""
        if not self.root.is_dir():
            return 0
        mine = self._own_directory()
        adopted: list[Path] = []
        for other in self.root.iterdir():
            if other == mine or not other.is_dir():
                continue
            try:
                with open(other / "lock", "rb") as lock_file:
                    fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # fails while its owner lives
                    for path in other.iterdir():
                        if path.name.endswith(".rec"):
                            target = mine / path.name
                            path.rename(target)
                            adopted.append(target)
                        elif path.name.endswith(".tmp"):
                            # A record its process was still writing when it died: never committed.
                            path.unlink()
                            record_drop("record", "corrupt", detail="a record torn by a crash")
                    (other / "lock").unlink()
                other.rmdir()
            except (BlockingIOError, FileNotFoundError):
                continue  # alive, or adopted by someone else just now
            except OSError:
                report_internal_error("adopting a spool directory")
        if adopted:
            with self._lock:
                for path in adopted:
                    self._sizes[path] = path.stat().st_size
                    self.bytes += self._sizes[path]
                merged = sorted([*self.records, *adopted], key=lambda p: p.name)
                self.records.clear()
                self.records.extend(merged)
            count("spool_records_adopted", len(adopted))
        return len(adopted)


class RecordWriter:
    """One object on its way into the spool; same interface as the store's atomic objects."""

    def __init__(self, spool: Spool, relative: str) -> None:
        self.spool = spool
        # Bodies may fill only part of the spool: the spans that name them must still fit. Model
        # data part files count like trace part files (media values offloaded by a collector, under
        # modeldata-media/, like bodies).
        self.limit = spool.max_bytes if relative.startswith(PART_FOLDERS) else int(spool.max_bytes * _PAYLOAD_SHARE)
        self.relative = relative
        self.committed: Path | None = None  # the record's file once committed, until delivered
        self.path_bytes = relative.encode("utf-8")
        self.hasher = sha256(self.path_bytes)
        self.size = 0
        self.reserved = 0
        try:
            fd = self._create(spool._own_directory())
        except FileNotFoundError:
            # Our directory was deleted under us: count what went with it, own a new one, go on.
            spool.drop_vanished()
            fd = self._create(spool._own_directory())
        self.file = open(fd, "wb")  # noqa: SIM115
        self._write(MAGIC + _HEAD.pack(len(self.path_bytes)) + self.path_bytes, hashed=False)

    def _create(self, directory: Path) -> int:
        self.temporary = directory / f".{secrets.token_hex(8)}.tmp"
        return os.open(self.temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)

    def _write(self, data: bytes, hashed: bool = True) -> None:
        if not self.spool.reserve(len(data), self.limit):
            raise StoreWriteError("spool_full")
        self.reserved += len(data)
        self.file.write(data)
        if hashed:
            self.hasher.update(data)
            self.size += len(data)

    def write(self, data: bytes) -> None:
        self._write(data)

    def commit(self) -> None:
        try:
            self._write(_TRAILER.pack(self.size, self.hasher.digest()), hashed=False)
            self.file.close()
            final = self.temporary.with_name(self.spool.next_name())
            self.temporary.rename(final)
        except BaseException:
            self.abort()
            raise
        self.spool.add(final, self.reserved)
        self.committed = final
        if is_data(self.relative):
            count("objects_spooled")
        self.spool.wake()

    def abort(self) -> None:
        self.file.close()
        self.temporary.unlink(missing_ok=True)
        reserved, self.reserved = self.reserved, 0
        self.spool.release(reserved)


def read_record(path: Path) -> tuple[str, int, int]:
    """Check a record; returns (relative path, data offset, data size), or raises CorruptRecord."""
    total = path.stat().st_size
    with open(path, "rb") as file:
        head = file.read(len(MAGIC) + _HEAD.size)
        if len(head) < len(MAGIC) + _HEAD.size or not head.startswith(MAGIC):
            raise CorruptRecord("bad header")
        (path_size,) = _HEAD.unpack_from(head, len(MAGIC))
        offset = len(head) + path_size
        size = total - offset - _TRAILER.size
        if path_size > 4096 or size < 0:
            raise CorruptRecord("bad sizes")
        path_bytes = file.read(path_size)
        hasher = sha256(path_bytes)
        remaining = size
        while remaining:
            chunk = file.read(min(remaining, 1 << 20))
            if not chunk:
                raise CorruptRecord("short data")
            hasher.update(chunk)
            remaining -= len(chunk)
        declared, digest = _TRAILER.unpack(file.read(_TRAILER.size))
        if declared != size or digest != hasher.digest():
            raise CorruptRecord("checksum mismatch")
    try:
        return path_bytes.decode("utf-8"), offset, size
    except UnicodeDecodeError:
        raise CorruptRecord("bad path") from None
