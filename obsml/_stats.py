"""Counters of what obsml captured, wrote and dropped, and the one guard around its own work.

Every lost item goes through :func:`record_drop` with a reason, so ``obsml.stats()`` can
always account for it. Drops and internal errors are logged at most once per reason per
minute, never per item.
"""

from __future__ import annotations

import logging
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
    "spool_full",  # a remote store's spool reached OBSML_SPOOL_MAX_BYTES while the sink was behind
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
    "spans_exported",  # spans the exporters accepted
    "payloads_written",  # bodies in the store under payloads/ (for a remote store: delivered)
    "trace_files_written",  # part files in the store under traces/ (for a remote store: delivered)
    "objects_spooled",  # objects committed to the local spool of a remote store
    "objects_drained",  # of those, delivered after the sink had failed (the spool held them)
    "sink_retries",  # failed attempts to put an object to a remote store (retried later)
    "spool_records_adopted",  # records of a dead process taken over and delivered by this one
]

_LOG_INTERVAL_S = 60.0


class _Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._drops: dict[str, dict[str, int]] = {}
        self._last_logged: dict[str, float] = {}

    def count(self, name: Counter, n: int = 1) -> None:
        with self._lock:
            self._counts[name] = self._counts.get(name, 0) + n

    def record_drop(self, kind: str, reason: DropReason, n: int = 1, detail: str = "") -> None:
        with self._lock:
            by_reason = self._drops.setdefault(reason, {})
            by_reason[kind] = by_reason.get(kind, 0) + n
        if reason in _EXIT_REASONS or self._due(f"drop:{reason}"):
            logger.warning("obsml dropped %d %s item(s): %s%s", n, kind, reason, f" ({detail})" if detail else "")

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
            self._counts.clear()
            self._drops.clear()
            self._last_logged.clear()


STATS = _Stats()
record_drop = STATS.record_drop
count = STATS.count

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
