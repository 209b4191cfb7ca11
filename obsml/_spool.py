"""The disk spool and the delivery thread: how objects reach a remote sink without being lost.

For a remote store (any fsspec protocol but the local disk, or a sink plugin), the writer
commits every object (a part file, a payload) as one record in a local spool directory; a
delivery thread puts records to the sink in order and deletes each once the sink has it. A
sink that fails is retried with exponential backoff and jitter while records wait on disk,
bounded by ``spool_max_bytes``. Nothing on the request path ever waits for the sink.

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
import random
import secrets
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ._stats import count, logger, record_drop, report_internal_error
from ._store import StoreWriteError, count_written

if TYPE_CHECKING:
    from ._sinks import Sink, SinkOpener

MAGIC = b"OBSMLSP1"
_TRAILER = struct.Struct(">Q32s")
_HEAD = struct.Struct(">I")
_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0
_ADOPT_EVERY_S = 30.0
_REJECT_AFTER = 8  # refusals in a row of the oldest record, while one of the next few goes through
_LOOK_AHEAD = 4
_PAYLOAD_SHARE = 0.8  # of spool_max_bytes; the rest is kept for trace part files
_LOG_EVERY_S = 60.0


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
        with self._lock:
            with contextlib.suppress(ValueError):
                self.records.remove(path)
            self.bytes -= self._sizes.pop(path, 0)
        with contextlib.suppress(OSError):
            path.unlink()

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
        # Bodies may fill only part of the spool: the spans that name them must still fit.
        self.limit = spool.max_bytes if relative.startswith("traces/") else int(spool.max_bytes * _PAYLOAD_SHARE)
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


class _Window:
    """A read-only file view of a record's data, for Sink.put."""

    def __init__(self, file: BinaryIO, offset: int, size: int) -> None:
        self._file = file
        self._left = size
        file.seek(offset)

    def read(self, size: int = -1, /) -> bytes:
        if size < 0 or size > self._left:
            size = self._left
        data = self._file.read(size)
        self._left -= len(data)
        return data


class Delivery:
    """The thread that drains the spool to the sink, in order, retrying with backoff and jitter."""

    def __init__(self, spool: Spool, open_sink: SinkOpener, name: str) -> None:
        self.spool = spool
        self._open_sink = open_sink
        self.name = name  # for log lines: the store's scheme, never its URL
        spool.wake = self.notify
        self._reset()
        _DELIVERIES.add(self)

    def _reset(self) -> None:
        self._wake = threading.Event()
        self._idle = threading.Condition()
        self._running = False
        self._stopping = False
        self._sink: Sink | None = None
        self._thread: threading.Thread | None = None
        self._failures = 0
        self._head: Path | None = None  # the oldest record, and how often the sink refused it in a row
        self._head_failures = 0
        self._retry_at = 0.0
        self._next_adopt = 0.0
        self._last_logged = 0.0

    def after_fork(self) -> None:
        self.spool.after_fork()
        self._reset()

    def start(self) -> None:
        if not self._running:
            self._running = True
            self._thread = threading.Thread(target=self._run, name="obsml-delivery", daemon=True)
            self._thread.start()

    def start_if_adoptable(self) -> None:
        """Start now if a dead process left records to deliver (else at the first commit)."""
        if self.spool.adoptable():
            self.start()

    def notify(self) -> None:
        self.start()
        self._wake.set()

    def wait_empty(self, timeout: float) -> bool:
        """Wait until every committed record is in the sink; False if ``timeout`` ran out first."""
        deadline = time.monotonic() + timeout
        self.notify()
        self._retry_at = 0.0  # a flush tries at once, whatever the backoff said
        with self._idle:
            while self.spool.records:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.05))
        return True

    def close(self, timeout: float) -> None:
        """Deliver what we can within ``timeout``; the rest stays in the spool for the next start."""
        if not self._running or self._stopping:
            return
        deadline = time.monotonic() + timeout
        delivered = self.wait_empty(timeout)
        self._stopping = True
        self._wake.set()
        if self._thread is not None:  # let it close the sink, on its own thread
            self._thread.join(max(0.0, min(1.0, deadline - time.monotonic())))
        self.spool.release_directory()
        if not delivered and self.spool.records:
            logger.warning(
                "obsml: %d object(s) for the %s store stay in the spool; the next start delivers them",
                len(self.spool.records), self.name,
            )

    def _run(self) -> None:
        while not self._stopping:
            now = time.monotonic()
            if now >= self._next_adopt:
                self._next_adopt = now + _ADOPT_EVERY_S
                try:
                    self.spool.adopt_orphans()
                except Exception:
                    report_internal_error("adopting spool records")
            if self.spool.records and now >= self._retry_at:
                self._drain()
            with self._idle:
                self._idle.notify_all()
            wait = _ADOPT_EVERY_S if not self.spool.records else max(0.01, self._retry_at - time.monotonic())
            self._wake.wait(min(wait, _ADOPT_EVERY_S))
            self._wake.clear()
        self._close_sink()

    def _drain(self) -> None:
        records = self.spool.records
        while records and not self._stopping:
            path = records[0]
            try:
                self._deliver(path)
            except Exception as exc:
                self._head_failures = self._head_failures + 1 if path == self._head else 1
                self._head = path
                if self._head_failures >= _REJECT_AFTER and self._next_goes_through():
                    # The sink takes other objects but never this one: set it aside, counted.
                    self._remove(path)
                    record_drop("record", "sink_rejected", detail=_describe(exc))
                    continue
                self._failed(exc)
                return
            if not records:
                self._recovered()

    def _deliver(self, path: Path) -> None:
        """Put one record to the sink and remove it; raises what the sink raised."""
        try:
            relative, offset, size = read_record(path)
        except FileNotFoundError:
            self.spool.drop_vanished()  # the spool directory was deleted under us
            self._remove(path)
            return
        except (CorruptRecord, OSError) as exc:
            self._remove(path)
            record_drop("record", "corrupt", detail=f"a spool record failed its check ({exc})")
            return
        sink = self._sink
        if sink is None:
            sink = self._sink = self._open_sink()
        with open(path, "rb") as file:
            sink.put(relative, _Window(file, offset, size), size)
        self._remove(path)
        count_written(relative)
        if self._failures:
            count("objects_drained")

    def _next_goes_through(self) -> bool:
        """Whether one of the next few records can be delivered (then it is)."""
        for path in list(self.spool.records)[1:_LOOK_AHEAD + 1]:
            try:
                self._deliver(path)
            except Exception:
                continue
            return True
        return False

    def _remove(self, path: Path) -> None:
        self.spool.remove(path)
        with self._idle:
            self._idle.notify_all()

    def _close_sink(self) -> None:
        sink, self._sink = self._sink, None
        if sink is not None:
            try:
                sink.close()
            except Exception:
                logger.warning("obsml: closing the %s sink failed", self.name, exc_info=True)

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        count("sink_retries")
        delay = min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2 ** min(self._failures - 1, 16))
        delay *= random.uniform(0.5, 1.0)  # jitter: many workers must not retry in step
        self._retry_at = time.monotonic() + delay
        now = time.monotonic()
        if now - self._last_logged >= _LOG_EVERY_S or self._failures == 1:
            self._last_logged = now
            logger.warning(
                "obsml: the %s store failed (%s); %d object(s) wait in the spool, retrying in %.1f s",
                self.name, _describe(exc), len(self.spool.records), delay,
            )
        self._close_sink()  # a broken plugin or connection is opened afresh next time

    def _recovered(self) -> None:
        if self._failures:
            logger.warning("obsml: the %s store recovered after %d failed attempt(s)", self.name, self._failures)
        self._failures = 0


def _describe(exc: BaseException) -> str:
    """An exception's type and message, scrubbed of credentials."""
    from ._secrets import scrub

    return f"{type(exc).__name__}: {scrub(str(exc))[:300]}"


_DELIVERIES: weakref.WeakSet[Delivery] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for delivery in list(_DELIVERIES):
        delivery.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
