"""Counters of what obsml captured, wrote and dropped, and the one guard around its own work.

Every lost item goes through :func:`record_drop` with a reason, so ``obsml.stats()`` can
always account for it. Drops and internal errors are logged at most once per reason per
minute, never per item: a drop line gives the counts by kind since the previous line of its
reason and the first error seen in that time; what is left when a minute ends without another
drop is logged by a timer (and at exit).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from types import TracebackType
from typing import Literal, get_args

from ._secrets import install_log_scrubbing
from ._throttle import LogThrottle

logger = logging.getLogger("obsml")
install_log_scrubbing(logger)

DropReason = Literal[
    "queue_full",  # the writer's bounded queue was full: the item never left the request
    "internal_error",  # obsml's own code failed on this item
    "store_error",  # the local store refused the write (a full or read-only disk)
    "disk_full",  # a body met the local disk's free space kept for the spans that name bodies
    "spool_full",  # a remote store's spool reached OBSML_SPOOL_MAX_BYTES while the sink was behind
    "spool_lost",  # committed records deleted with the spool directory (a cache or /tmp cleaner)
    "corrupt",  # a spool record failed its checksum, or was torn by a crash
    "sink_rejected",  # the sink refused one object 8 times in a row while taking later ones
    "export_error",  # an exporter raised or reported failure
    "flush_timeout",  # still queued when a shutdown flush ran out of time
    "after_exit",  # finished after this process's exit flush had run (a request still in flight)
    "unredactable",  # a body redaction could not read (with OBSML_REDACT_UNPARSEABLE=drop), or a redact hook raised
    "invalid",  # rows a Collector refused: width not matching its columns, unsupported or media values
]
# Reasons that arise only while the process ends: each is logged, since nothing reads the
# counters afterwards; there are at most as many as requests in flight.
_EXIT_REASONS = frozenset({"flush_timeout", "after_exit"})

Counter = Literal[
    "requests_captured",  # spans handed to the writer
    "requests_sampled_out",  # successful requests skipped by OBSML_SAMPLE_RATE
    "requests_skipped",  # requests OBSML_SKIP_ROUTES left without a span
    "dependencies_captured",  # outbound calls made during requests, handed to the writer as CLIENT spans
    "spans_exported",  # spans the exporters accepted (jsonl: written to the store, or to its spool)
    "payloads_written",  # bodies in the store under payloads/ (for a remote store: delivered)
    "trace_files_written",  # part files in the store under traces/ (for a remote store: delivered)
    "objects_spooled",  # objects committed to the local spool of a remote store
    "objects_drained",  # of those, delivered after the sink had failed (the spool held them)
    "sink_retries",  # failed attempts to put an object to a remote store (retried later)
    "spool_records_adopted",  # records of a dead process taken over and delivered by this one
    "temp_files_removed",  # temporary files of dead processes swept from a local store at start
    "modeldata_files_written",  # part files in the store under modeldata/ (for a remote store: delivered)
    "rows_collected",  # Collector rows written to the store under modeldata/ (or to its spool)
    "logs_exported",  # request log records the exporters accepted (jsonl: written to the store, or to its spool)
    "log_files_written",  # part files in the store under logs/ (for a remote store: delivered)
]
COUNTERS: tuple[str, ...] = get_args(Counter)


class _Stats:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._drops: dict[str, dict[str, int]] = {}
        self._last_errors: dict[str, tuple[str, float]] = {}  # reason -> its latest error (or detail), when
        self._reinit()

    def _reinit(self) -> None:
        # Also in a forked child: a lock held by a parent's thread at the fork, or the parent's
        # timer thread, must not be inherited (gunicorn --preload forks a master with threads).
        self._lock = threading.Lock()
        # One throttle for the lines of every drop reason and of internal errors ("error:<what>").
        self.log_throttle = LogThrottle()
        self._unlogged: dict[str, dict[str, int]] = {}  # reason -> kind -> drops since its last line
        self._first_error: dict[str, str] = {}  # reason -> the first error (or detail) since its last line
        self._timer: threading.Timer | None = None

    def count(self, name: Counter, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def note_error(self, reason: DropReason, text: str) -> None:
        """Remember why items are about to be dropped, for the next line of ``reason``."""
        with self._lock:
            self._first_error.setdefault(reason, f"first error: {text}")
            self._last_errors[reason] = (text, time.time())

    def record_drop(self, kind: str, reason: DropReason, n: int = 1, detail: str = "") -> None:
        now = time.monotonic()
        with self._lock:
            by_reason = self._drops.setdefault(reason, {})
            by_reason[kind] = by_reason.get(kind, 0) + n
            unlogged = self._unlogged.setdefault(reason, {})
            unlogged[kind] = unlogged.get(kind, 0) + n
            if detail:
                self._first_error.setdefault(reason, detail)
                self._last_errors[reason] = (detail, time.time())
            if reason in _EXIT_REASONS:  # nothing reads the counters afterwards: log each now
                self.log_throttle.forget(reason)
            line = self._take_line(reason, now)
            if line is None and self._timer is None:
                self._arm_timer(now)
        if line is not None:
            logger.warning(*line)

    def _take_line(self, reason: str, now: float) -> tuple[str, ...] | None:
        """The log line of ``reason``'s unlogged drops, if one is due (call under the lock)."""
        last = self.log_throttle.last(reason)
        if reason not in self._unlogged or not self.log_throttle.due(reason, now):
            return None
        kinds = self._unlogged.pop(reason)
        counts = ", ".join(f"{n} {kind}(s)" for kind, n in kinds.items())
        error = self._first_error.pop(reason, "")
        since = "" if last is None else f" in the last {now - last:.0f} s"
        return "obsml dropped %s%s: %s%s", counts, since, reason, f" ({error})" if error else ""

    def _arm_timer(self, now: float) -> None:
        due = min(self.log_throttle.next_due(reason, now) for reason in self._unlogged)
        timer = threading.Timer(max(0.0, due - now), self.log_unlogged)
        timer.daemon = True
        try:
            timer.start()
        except RuntimeError:
            return  # at interpreter shutdown: the exit hook logs what is left
        self._timer = timer

    def log_unlogged(self, force: bool = False) -> None:
        """Log the drops not reported yet whose line is due (all of them when ``force``: at exit)."""
        now = time.monotonic()
        with self._lock:
            self._timer = None
            if force:
                self.log_throttle.forget()
            lines = [line for reason in list(self._unlogged) if (line := self._take_line(reason, now))]
            if self._unlogged:
                self._arm_timer(now)
        for line in lines:
            logger.warning(*line)

    def snapshot(self) -> dict[str, object]:
        """Every counter (0 when nothing was counted yet), then ``dropped[reason][kind]``."""
        with self._lock:
            dropped = {reason: dict(kinds) for reason, kinds in self._drops.items()}
            return {**{name: self._counts.get(name, 0) for name in COUNTERS}, "dropped": dropped}

    def last_errors(self) -> dict[str, tuple[str, float]]:
        """The latest error (or detail) noted for each drop reason, with its time (``time.time()``)."""
        with self._lock:
            return dict(self._last_errors)

    def reset(self) -> None:
        with self._lock:
            timer = self._timer
            self._counts.clear()
            self._drops.clear()
            self._last_errors.clear()
        if timer is not None:
            timer.cancel()
        self._reinit()


STATS = _Stats()
record_drop = STATS.record_drop
note_error = STATS.note_error
count = STATS.count
os.register_at_fork(after_in_child=STATS._reinit)
atexit.register(STATS.log_unlogged, force=True)

_strict = False


def enable_strict() -> None:
    """Strict mode (tests): obsml's internal errors are raised instead of counted, in the whole
    process and for good.

    One process setting, not one per middleware: internal errors also arise where no middleware
    is at hand (the writer thread, spool delivery, framework hooks shared by every middleware).
    It is only ever turned on, so a middleware created later without ``strict`` cannot turn it
    off for the ones that asked for it.
    """
    global _strict
    _strict = True


def is_strict() -> bool:
    return _strict


def report_internal_error(what: str, kind: str = "item") -> None:
    """Account for an exception obsml caught in its own code; call from an ``except`` block."""
    if _strict:
        raise
    _count_internal_error(what, kind, sys.exc_info()[1])


def _count_internal_error(what: str, kind: str, exc: BaseException | None) -> None:
    STATS.record_drop(kind, "internal_error")
    if STATS.log_throttle.due(f"error:{what}", time.monotonic()):
        logger.error("obsml internal error in %s; the request was not affected", what, exc_info=exc)


class guarded:  # named as the statement reads: ``with guarded("what"):``
    """``with guarded("reading a route"):`` runs obsml's own work so that its failure is counted and
    logged, never raised (``Exception`` only; raised in strict mode), and the caller goes on.

    A class rather than a generator, so it is cheap enough for per-request hooks. The adapters'
    per-message paths keep a plain ``try``/``except`` calling :func:`report_internal_error`, which
    costs nothing until it catches.
    """

    __slots__ = ("kind", "what")

    def __init__(self, what: str, kind: str = "item") -> None:
        self.what = what
        self.kind = kind

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> bool:
        if not isinstance(exc, Exception) or _strict:
            return False
        _count_internal_error(self.what, self.kind, exc)
        return True


def stats() -> dict[str, object]:
    """Counters since start, every one of them: captured, sampled out, exported, written, and
    ``dropped[reason][kind]``."""
    return STATS.snapshot()
