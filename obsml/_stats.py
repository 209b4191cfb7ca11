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
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from ._secrets import install_log_scrubbing

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
]
# Reasons that arise only while the process ends: each is logged, since nothing reads the
# counters afterwards; there are at most as many as requests in flight.
_EXIT_REASONS = frozenset({"flush_timeout", "after_exit"})

Counter = Literal[
    "requests_captured",  # spans handed to the writer
    "requests_sampled_out",  # successful requests skipped by OBSML_SAMPLE_RATE
    "spans_exported",  # spans the exporters accepted (jsonl: written to the store, or to its spool)
    "payloads_written",  # bodies in the store under payloads/ (for a remote store: delivered)
    "trace_files_written",  # part files in the store under traces/ (for a remote store: delivered)
    "objects_spooled",  # objects committed to the local spool of a remote store
    "objects_drained",  # of those, delivered after the sink had failed (the spool held them)
    "sink_retries",  # failed attempts to put an object to a remote store (retried later)
    "spool_records_adopted",  # records of a dead process taken over and delivered by this one
    "temp_files_removed",  # temporary files of dead processes swept from a local store at start
]

_LOG_INTERVAL_S = 60.0


class _Stats:
    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._drops: dict[str, dict[str, int]] = {}
        self._reinit()

    def _reinit(self) -> None:
        # Also in a forked child: a lock held by a parent's thread at the fork, or the parent's
        # timer thread, must not be inherited (gunicorn --preload forks a master with threads).
        self._lock = threading.Lock()
        self._last_logged: dict[str, float] = {}
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

    def record_drop(self, kind: str, reason: DropReason, n: int = 1, detail: str = "") -> None:
        now = time.monotonic()
        with self._lock:
            by_reason = self._drops.setdefault(reason, {})
            by_reason[kind] = by_reason.get(kind, 0) + n
            unlogged = self._unlogged.setdefault(reason, {})
            unlogged[kind] = unlogged.get(kind, 0) + n
            if detail:
                self._first_error.setdefault(reason, detail)
            if reason in _EXIT_REASONS:  # nothing reads the counters afterwards: log each now
                self._last_logged.pop(reason, None)
            line = self._take_line(reason, now)
            if line is None and self._timer is None:
                self._arm_timer(now)
        if line is not None:
            logger.warning(*line)

    def _take_line(self, reason: str, now: float) -> tuple[str, ...] | None:
        """The log line of ``reason``'s unlogged drops, if one is due (call under the lock)."""
        last = self._last_logged.get(reason)
        if reason not in self._unlogged or (last is not None and now - last < _LOG_INTERVAL_S):
            return None
        self._last_logged[reason] = now
        kinds = self._unlogged.pop(reason)
        counts = ", ".join(f"{n} {kind}(s)" for kind, n in kinds.items())
        error = self._first_error.pop(reason, "")
        since = "" if last is None else f" in the last {now - last:.0f} s"
        return "obsml dropped %s%s: %s%s", counts, since, reason, f" ({error})" if error else ""

    def _arm_timer(self, now: float) -> None:
        due = min(self._last_logged.get(reason, now) + _LOG_INTERVAL_S for reason in self._unlogged)
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
                self._last_logged.clear()
            lines = [line for reason in list(self._unlogged) if (line := self._take_line(reason, now))]
            if self._unlogged:
                self._arm_timer(now)
        for line in lines:
            logger.warning(*line)

    def _due(self, key: str) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last_logged.get(key)
            if last is not None and now - last < _LOG_INTERVAL_S:
                return False
            self._last_logged[key] = now
            return True

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            dropped = {reason: dict(kinds) for reason, kinds in self._drops.items()}
            return {**self._counts, "dropped": dropped}

    def reset(self) -> None:
        with self._lock:
            timer = self._timer
            self._counts.clear()
            self._drops.clear()
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


def set_strict(value: bool) -> None:
    """Under strict mode (tests), obsml's internal errors are raised instead of counted."""
    global _strict
    _strict = value


def report_internal_error(what: str, kind: str = "item") -> None:
    """Account for an exception obsml caught in its own code; call from an ``except`` block."""
    if _strict:
        raise
    STATS.record_drop(kind, "internal_error")
    if STATS._due(f"error:{what}"):
        logger.exception("obsml internal error in %s; the request was not affected", what)


@contextmanager
def guarded(what: str, kind: str = "item") -> Iterator[None]:
    """Run obsml's own work so that its failure is counted and logged, never raised (Exception only)."""
    try:
        yield
    except Exception:
        report_internal_error(what, kind)


def stats() -> dict[str, object]:
    """Counters since start: captured, sampled out, exported, written, and ``dropped[reason][kind]``."""
    return STATS.snapshot()
