"""The background writer: one thread per process and pipeline, fed by a bounded queue.

``submit`` never blocks and never raises into a request: it returns False when the queue
is over its item or byte bound, and the caller records the drop. The thread starts lazily
in the process that first submits, so a fork gets its own. Each job runs inside a guard:
one bad item never stops the writer.
"""

from __future__ import annotations

import atexit
import os
import queue
import threading
import time
from typing import Protocol

from ._stats import STATS, report_internal_error


class Job(Protocol):
    @property
    def nbytes(self) -> int:
        """Bytes this job holds in memory, counted against the queue's byte bound."""


    def run(self) -> None: ...


class Ticker(Protocol):
    def tick(self, force: bool) -> None:
        """Write out whatever is batched and due (all of it when ``force``)."""


class _Flush:
    nbytes = 0

    def __init__(self, ticker: Ticker) -> None:
        self.ticker = ticker
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.ticker.tick(force=True)
        finally:
            self.done.set()


class _Stop(_Flush):
    pass


class Writer:
    """Runs jobs in submission order on a daemon thread; ``ticker`` batches their output."""

    def __init__(
        self, ticker: Ticker, *, max_items: int, max_bytes: int, interval: float, exit_timeout: float
    ) -> None:
        self._ticker = ticker
        self.exit_timeout = exit_timeout
        self._atexit_registered = False
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._interval = interval
        self._queue: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._items = 0
        self._bytes = 0
        self._pid = 0
        self._closed = False

    def submit(self, job: Job, force: bool = False) -> bool:
        """Queue ``job``; False when the queue is full. ``force`` is for tiny end-of-item markers."""
        if self._pid != os.getpid():
            self._start()
        with self._lock:
            if not force and (self._items >= self._max_items or self._bytes + job.nbytes > self._max_bytes):
                return False
            self._items += 1
            self._bytes += job.nbytes
        self._queue.put(job)
        return True

    def pending(self) -> int:
        with self._lock:
            return self._items

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is written out; False on timeout."""
        if self._pid != os.getpid():
            return True
        marker = _Flush(self._ticker)
        self.submit(marker, force=True)
        return marker.done.wait(timeout)

    def close(self, timeout: float) -> None:
        """Flush and stop the thread; what is still queued at the deadline is counted as dropped."""
        if self._pid != os.getpid() or self._closed:
            return
        self._closed = True
        marker = _Stop(self._ticker)
        self.submit(marker, force=True)
        if not marker.done.wait(timeout):
            lost = self.pending() - 1
            if lost > 0:
                STATS.record_drop("item", "flush_timeout", lost, detail=f"after {timeout:g}s")

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            # After a fork the parent's queue and counters describe the parent's thread: start afresh.
            self._queue = queue.SimpleQueue()
            self._items = self._bytes = 0
            self._closed = False
            thread = threading.Thread(target=self._run, name="obsml-writer", daemon=True)
            thread.start()
            self._pid = os.getpid()
            register = not self._atexit_registered
            self._atexit_registered = True
        if register:  # atexit registrations survive fork, so once per object is enough
            atexit.register(lambda: self.close(self.exit_timeout))

    def _decrement(self, job: Job) -> None:
        with self._lock:
            self._items -= 1
            self._bytes -= job.nbytes

    def _run(self) -> None:
        next_tick = time.monotonic() + self._interval
        while True:
            try:
                job: Job | None = self._queue.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                job = None
            if job is not None:
                try:
                    job.run()
                except Exception:
                    report_internal_error("the background writer", "item")
                finally:
                    self._decrement(job)
                if isinstance(job, _Stop):
                    return
            if time.monotonic() >= next_tick:
                try:
                    self._ticker.tick(force=False)
                except Exception:
                    report_internal_error("the background writer", "batch")
                next_tick = time.monotonic() + self._interval
