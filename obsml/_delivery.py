"""The delivery thread: drains the spool (``_spool``) to a remote sink, in order.

It puts each record to the sink and deletes it once the sink has it. A sink that fails is
retried with exponential backoff and jitter while records wait on disk; nothing on the
request path ever waits for the sink. Records a dead process left in the spool are adopted
and delivered first.
"""

from __future__ import annotations

import os
import random
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ._objects import count_written, describe_error, is_data
from ._spool import ADOPT_EVERY_S, CorruptRecord, Spool, read_record
from ._stats import count, logger, record_drop, report_internal_error
from ._throttle import LogThrottle

if TYPE_CHECKING:
    from ._sinks import Sink, SinkOpener

_BACKOFF_FIRST_S = 0.5
_BACKOFF_MAX_S = 30.0
_REJECT_AFTER = 8  # refusals in a row of the oldest record, while one of the next few goes through
_LOOK_AHEAD = 4


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
        self._log_throttle = LogThrottle()
        # The sink's latest failure, scrubbed, and when (wall clock): for the writer's status.
        self.last_error: tuple[str, float] | None = None

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
                self._next_adopt = now + ADOPT_EVERY_S
                try:
                    self.spool.adopt_orphans()
                except Exception:
                    report_internal_error("adopting spool records")
            if self.spool.records and now >= self._retry_at:
                self._drain()
            with self._idle:
                self._idle.notify_all()
            wait = ADOPT_EVERY_S if not self.spool.records else max(0.01, self._retry_at - time.monotonic())
            self._wake.wait(min(wait, ADOPT_EVERY_S))
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
                    record_drop("record", "sink_rejected", detail=describe_error(exc))
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
        if self._failures and is_data(relative):
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
        self.last_error = (describe_error(exc), time.time())
        count("sink_retries")
        delay = min(_BACKOFF_MAX_S, _BACKOFF_FIRST_S * 2 ** min(self._failures - 1, 16))
        delay *= random.uniform(0.5, 1.0)  # jitter: many workers must not retry in step
        self._retry_at = time.monotonic() + delay
        now = time.monotonic()
        if self._failures == 1:  # a new outage is logged at once
            self._log_throttle.forget()
        if self._log_throttle.due("failed", now):
            logger.warning(
                "obsml: the %s store failed (%s); %d object(s) wait in the spool, retrying in %.1f s",
                self.name, describe_error(exc), len(self.spool.records), delay,
            )
        self._close_sink()  # a broken plugin or connection is opened afresh next time

    def _recovered(self) -> None:
        if self._failures:
            logger.warning("obsml: the %s store recovered after %d failed attempt(s)", self.name, self._failures)
        self._failures = 0


_DELIVERIES: weakref.WeakSet[Delivery] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for delivery in list(_DELIVERIES):
        delivery.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
