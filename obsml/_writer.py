"""The background writer: one thread per process and pipeline, fed by a bounded queue.

``submit`` never blocks and never raises into a request: it returns False when the queue
is over its item or byte bound, and the caller records the drop. Submitting does not wake
the thread (a wake-up per request would make it fight the requests for the GIL); the thread
polls every few milliseconds, and is woken early only when a few dozen items wait or a flush
is asked for. It starts lazily, and a forked child starts its own. Each job runs inside a
guard: one bad item never stops the writer.

At exit the writer is closed (flushed within its timeout, then stopped) on every way a
process ends cleanly: atexit; multiprocessing's finalizers in a multiprocessing child, which
leaves through ``os._exit()`` and skips atexit (granian's workers); and, when asked, a SIGTERM
handler where SIGTERM would otherwise kill the process outright (waitress). A closed writer
is not restarted: nothing would flush it again before the process ends (and Python 3.12
refuses new threads at interpreter shutdown), so an item that finishes after the close (a
request still in flight) is refused, and counted and logged as ``after_exit``.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import Protocol

from ._stats import STATS, DropReason, guarded, report_internal_error

_POLL_S = 0.05  # the longest a captured item waits for the writer when nothing wakes it
# The writer is woken when this many items wait. A finished capture in the queue holds a dozen
# objects the garbage collector tracks (capture, body tees, the scope's copy): waiting for the
# poll under load, some hundreds were alive at once, each young collection promoted them, and
# the full collections those promotions bring came every few seconds (issue 16). One wake-up
# per this many requests costs the request path a fraction of a microsecond each; a server
# taking fewer requests than this per poll is not woken at all.
_WAKE_ITEMS = 32
# While requests are coming in, a backlog is worked through in stretches of at most this much
# time, each ending in a rest (``_REST_S``) that lets a waiting request thread (or event loop) take
# the GIL: otherwise it waits up to the interpreter's switch interval (5 ms) every time, behind a
# writer that never blocks (issue 16: p99). The switch interval itself is left alone: it is the
# application's. The writer rests only while requests came in within the last ``_BUSY_NS``
# (a backlog with nobody waiting is worked through at full speed): the serving thread, which gets
# the GIL at every rest, submits within a stretch or two.
_STRETCH_NS = 500_000
_BUSY_NS = 5_000_000
# The rest: asleep, the writer does not wait for the GIL, so for that long the serving thread gets
# it back after each of its system calls without a handoff (a writer that only yielded, with
# time.sleep(0), was back waiting at once). The writer then has about half the GIL while its queue
# is under half its bounds; past that it only yields, so no more is dropped than before. In
# process, a serving thread got 1.5-2x the turns behind a backlog; under uvicorn and wrk, the
# throughput moved within the noise (benchmarks/README.md, "Writer cost").
_REST_S = 0.0005
# Before multiprocessing's own finalizers (a Pool's is 15, a Queue's 10), so that a logging
# queue still carries what obsml logs at exit.
_FINALIZE_PRIORITY = 100


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

    def __init__(self, tickers: tuple[Ticker, ...]) -> None:
        self.tickers = tickers
        self.done = threading.Event()

    def run(self) -> None:
        try:
            for ticker in self.tickers:
                ticker.tick(force=True)
        finally:
            self.done.set()


class _Stop(_Flush):
    pass


class Writer:
    """Runs jobs in submission order on a daemon thread; the ``tickers`` batch their output.

    Each ticker is ticked at every ``interval`` and, with ``force``, on a flush and at the close.
    """

    def __init__(self, *tickers: Ticker, max_items: int, max_bytes: int, interval: float, exit_timeout: float) -> None:
        self._first_tickers = self._tickers = tickers
        self._last_tickers: tuple[Ticker, ...] = ()
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._wake_items = max(1, min(_WAKE_ITEMS, max_items // 4))
        self._wake_bytes = max(1, max_bytes // 4)
        self._interval = interval
        self.exit_timeout = exit_timeout
        # Run at exit after the writer's own close, with the time left of exit_timeout.
        self.exit_hooks: list[Callable[[float], None]] = []
        # Run at exit before the close: items not yet submitted that must still be written.
        self.closing_hooks: list[Callable[[], None]] = []
        self._atexit_registered = False
        self._reset()
        _WRITERS.add(self)

    def add_ticker(self, ticker: Ticker, last: bool = False) -> None:
        """Tick ``ticker`` too from now on (a collector's part files, made after the writer).

        A ``last`` ticker is ticked after every other, even those added later: the writer's
        status, which reports what they wrote.
        """
        with self._lock:
            if last:
                self._last_tickers = (*self._last_tickers, ticker)
            else:
                self._first_tickers = (*self._first_tickers, ticker)
            self._tickers = (*self._first_tickers, *self._last_tickers)

    def _reset(self) -> None:
        self._jobs: deque[Job] = deque()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._items = 0
        self._bytes = 0
        self._submitted = 0  # ever: the writer tells from it whether requests are coming in
        self._running = False
        self._closed = False
        self._stop: _Stop | None = None

    def submit(self, job: Job, force: bool = False, max_bytes: int = 0) -> bool:
        """Queue ``job``; False when the queue is full or the writer closed (see :attr:`refusal`).

        ``force`` is for tiny end-of-item markers: they pass the bounds, not a close. ``max_bytes``
        is a lower byte bound for this job (body chunks leave room for spans).
        """
        if not self._running:
            self._start()
        nbytes = job.nbytes
        with self._lock:
            if self._closed or (
                not force
                and (
                    self._items >= self._max_items
                    # An item over its whole byte bound (a body sent as one chunk bigger than it) goes
                    # in alone, into a queue holding no other bytes: slicing it would hold no less.
                    or (self._bytes + nbytes > (max_bytes or self._max_bytes) and self._bytes > 0)
                )
            ):
                return False
            # Woken as the queue crosses a bound, not at every item past it: the writer, once
            # woken, works until the queue is empty.
            urgent = (
                force or self._items + 1 == self._wake_items or self._bytes < self._wake_bytes <= self._bytes + nbytes
            )
            self._items += 1
            self._bytes += nbytes
            self._submitted += 1
            self._jobs.append(job)  # under the lock: never behind the close's stop marker
        if urgent:
            self._wake.set()
        return True

    @property
    def refusal(self) -> DropReason:
        """Why :meth:`submit` returned False, for the caller's drop count."""
        return "after_exit" if self._closed else "queue_full"

    def pending(self) -> int:
        with self._lock:
            return self._items

    def flush(self, timeout: float) -> bool:
        """Wait until everything submitted so far is written out; False on timeout.

        After the close, nothing more will be written: it answers at once, True when the
        close wrote out everything submitted before it.
        """
        marker = _Flush(self._tickers)
        if not self._running or not self.submit(marker, force=True):
            return self._stop is None or self._stop.done.is_set()
        return marker.done.wait(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float) -> None:
        """Flush and stop the thread; what is still queued at the deadline is counted as dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True  # from here on, submit refuses
            if not self._running:
                return
            marker = self._stop = _Stop(self._tickers)
            self._items += 1
            self._jobs.append(marker)
        self._wake.set()
        if not marker.done.wait(timeout):
            lost = self.pending() - 1
            if lost > 0:
                STATS.record_drop("item", "flush_timeout", lost, detail=f"after {timeout:g}s")

    def start(self) -> None:
        """Start the thread unless it runs (``submit`` does too): a middleware switched off by the
        control object submits nothing, yet its writer must go on reading the control."""
        if not self._running:
            self._start()

    def _start(self) -> None:
        with self._lock:
            if self._running or self._closed:
                return
            threading.Thread(target=self._run, name="obsml-writer", daemon=True).start()
            self._running = True
            register = not self._atexit_registered
            self._atexit_registered = True
        if register:  # atexit registrations survive fork, so once per object is enough
            atexit.register(self._exit)
        _finalize_in_multiprocessing_child(self._exit)

    def _exit(self) -> None:
        deadline = time.monotonic() + self.exit_timeout
        for closing in self.closing_hooks:
            with guarded("finishing requests at exit"):
                closing()
        self.close(self.exit_timeout)
        for hook in self.exit_hooks:
            hook(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        jobs, wake = self._jobs, self._wake
        next_tick = time.monotonic() + self._interval
        while True:
            wake.wait(min(_POLL_S, max(0.0, next_tick - time.monotonic())))
            wake.clear()
            now = time.perf_counter_ns()
            stretch_end, submitted, busy_until = now + _STRETCH_NS, self._submitted, now + _BUSY_NS
            while jobs:
                now = time.perf_counter_ns()
                if now >= stretch_end:
                    if self._submitted != submitted:
                        submitted, busy_until = self._submitted, now + _BUSY_NS
                    if now < busy_until:
                        behind = self._items * 2 >= self._max_items or self._bytes * 2 >= self._max_bytes
                        time.sleep(0 if behind else _REST_S)
                    stretch_end = time.perf_counter_ns() + _STRETCH_NS
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
                for ticker in self._tickers:
                    try:
                        ticker.tick(force=False)
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


def _finalize_in_multiprocessing_child(close: Callable[[], None]) -> None:
    """Have a multiprocessing child close the writer too: it ends with ``os._exit()``, skipping
    atexit, right after running multiprocessing's finalizers (how granian's workers end).

    Called once per writer start in a process; multiprocessing is never imported for it.
    """
    multiprocessing = sys.modules.get("multiprocessing")
    if multiprocessing is None or multiprocessing.parent_process() is None:
        return  # not a multiprocessing child: atexit runs (in the main process, so do its finalizers)
    from multiprocessing import util

    util.Finalize(None, close, exitpriority=_FINALIZE_PRIORITY)


def close_all() -> None:
    """Close every writer of this process, as at exit (each within its own timeout)."""
    for writer in list(_WRITERS):
        writer._exit()


def flush_on_sigterm() -> None:
    """Close the writers before the process dies of SIGTERM, where nothing else would (waitress).

    Installed only from the main thread (the only one that may) and only while SIGTERM still
    has its default action: a server with a handler of its own keeps it (uWSGI, gunicorn's
    workers, granian's), and one that sets its handler after loading the app replaces this one
    (gunicorn's master with ``--preload``). Called again, it finds its own handler and stays.
    """
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _close_and_die)


def _close_and_die(signum: int, frame: FrameType | None) -> None:
    # The default action first: a second SIGTERM during the flush ends the process at once.
    signal.signal(signum, signal.SIG_DFL)
    # Closed on a thread of its own: the handler runs wherever the main thread was interrupted,
    # perhaps holding a lock the close needs (a development server serves requests on it).
    closing = threading.Thread(target=close_all, name="obsml-exit")
    closing.start()
    closing.join(sum(writer.exit_timeout for writer in list(_WRITERS)) + 1.0)
    os.kill(os.getpid(), signum)  # dies of SIGTERM, as it would have without obsml
