"""The background writer: one thread per process and pipeline, fed by a bounded queue.

``submit`` never blocks and never raises into a request: it returns False when the queue
is over its item or byte bound, and the caller records the drop. Submitting does not wake
the thread (a wake-up per request would make it fight the requests for the GIL); the thread
polls every few milliseconds, and is woken early only when the queue fills up or a flush
is asked for. It starts lazily, and a forked child starts its own. Each job runs inside a
guard: one bad item never stops the writer.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Protocol

from ._stats import STATS, report_internal_error

_POLL_S = 0.05  # the longest a captured item waits for the writer when nothing wakes it


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
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._wake_items = max(1, min(1000, max_items // 4))
        self._wake_bytes = max(1, max_bytes // 4)
        self._interval = interval
        self.exit_timeout = exit_timeout
        # Run at exit after the writer's own close, with the time left of exit_timeout.
        self.exit_hooks: list[Callable[[float], None]] = []
        self._atexit_registered = False
        self._reset()
        _WRITERS.add(self)

    def _reset(self) -> None:
        self._jobs: deque[Job] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._items = 0
        self._bytes = 0
        self._running = False
        self._closed = False

    def submit(self, job: Job, force: bool = False, max_bytes: int = 0) -> bool:
        """Queue ``job``; False when the queue is full. ``force`` is for tiny end-of-item markers,
        ``max_bytes`` a lower byte bound for this job (body chunks leave room for spans)."""
        if not self._running:
            self._start()
        nbytes = job.nbytes
        with self._lock:
            if not force and (
                self._items >= self._max_items
                # An item over its whole byte bound (a body sent as one chunk bigger than it) goes
                # in alone, into a queue holding no other bytes: slicing it would hold no less.
                or (self._bytes + nbytes > (max_bytes or self._max_bytes) and self._bytes > 0)
            ):
                return False
            self._items += 1
            self._bytes += nbytes
            urgent = force or self._items >= self._wake_items or self._bytes >= self._wake_bytes
        self._jobs.append(job)
        if urgent:
            self._wake.set()
        return True

    def pending(self) -> int:
        with self._lock:
            return self._items

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is written out; False on timeout."""
        if not self._running:
            return True
        marker = _Flush(self._ticker)
        self.submit(marker, force=True)
        return marker.done.wait(timeout)

    def close(self, timeout: float) -> None:
        """Flush and stop the thread; what is still queued at the deadline is counted as dropped."""
        if not self._running or self._closed:
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
            if self._running:
                return
            threading.Thread(target=self._run, name="obsml-writer", daemon=True).start()
            self._running = True
            register = not self._atexit_registered
            self._atexit_registered = True
        if register:  # atexit registrations survive fork, so once per object is enough
            atexit.register(self._exit)

    def _exit(self) -> None:
        deadline = time.monotonic() + self.exit_timeout
        self.close(self.exit_timeout)
        for hook in self.exit_hooks:
            hook(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        jobs, wake = self._jobs, self._wake
        next_tick = time.monotonic() + self._interval
        while True:
            wake.wait(min(_POLL_S, max(0.0, next_tick - time.monotonic())))
            wake.clear()
            while jobs:
                job = jobs.popleft()
                try:
                    job.run()
                except Exception:
                    report_internal_error("the background writer", "item")
                finally:
                    with self._lock:
                        self._items -= 1
                        self._bytes -= job.nbytes
                if isinstance(job, _Stop):
                    return
            if time.monotonic() >= next_tick:
                try:
                    self._ticker.tick(force=False)
                except Exception:
                    report_internal_error("the background writer", "batch")
                next_tick = time.monotonic() + self._interval


_WRITERS: weakref.WeakSet[Writer] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # The parent's thread did not survive the fork, and its queue belongs to the parent's
    # requests (the parent writes them): the child starts empty, with a thread of its own.
    for writer in list(_WRITERS):
        writer._reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
