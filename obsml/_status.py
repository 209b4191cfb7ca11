"""Each writer's status in the store: what ``obsml status`` reads (README: "obsml status").

A writer (one per process and store) writes ``_obsml/status/<yyyy>/<mm>/<dd>/<writer-id>.json``
from its background thread, overwriting it in place during the day: its identity, start and
last-seen times, every ``obsml.stats()`` counter, the latest error per drop reason and of the
sink (scrubbed), and its spool. It writes when a counter changed, at most once per
``every`` seconds, and at least once per ``heartbeat`` seconds so that a live but idle
writer is still seen; and once more at exit (or at an ASGI lifespan shutdown), marked ``exited``.

A status never crowds out data: it leaves the disk reserve and the spool share kept for part
files alone (like a body), a remote store holds at most one status record waiting for the
sink, and a status that cannot be written is counted as a drop of kind ``status`` and tried
again only at the next heartbeat (its own drops do not count as a change).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .__version__ import __version__
from ._objects import STATUS_FOLDER, StoreWriteError, describe_error, failure_reason, utc_folders
from ._secrets import scrub
from ._stats import STATS, record_drop

if TYPE_CHECKING:
    from ._control import ControlTicker
    from ._settings import Settings
    from ._store import Store

FORMAT = 1
MIN_EVERY_S = 2.0  # never more often than this, however short the flush interval
MAX_HEARTBEAT_S = 60.0
KIND = "status"  # the kind of a status's own drops


def intervals(flush_interval: float) -> tuple[float, float]:
    """(every, heartbeat): the shortest time between two statuses, and the longest while alive."""
    every = max(flush_interval, MIN_EVERY_S)
    return every, max(every, min(10 * flush_interval, MAX_HEARTBEAT_S))


def iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, timezone.utc).isoformat(timespec="milliseconds")


class StatusReport:
    """A writer's ticker (ticked last) writing its status; ``closed`` says the writer is exiting."""

    def __init__(
        self, settings: Settings, store: Store, closed: Callable[[], bool], control: ControlTicker | None = None
    ) -> None:
        self._store = store
        self._control = control
        self._closed = closed
        self._every, self._heartbeat = intervals(settings.flush_interval)
        self._identity = {
            "host": socket.gethostname(),
            "service": settings.service,
            "model": settings.model,
            "version": settings.version,
            "obsml_version": __version__,
            "store": store.scheme,  # never the URL: it may carry credentials
            "flush_interval_s": settings.flush_interval,
            "every_s": self._every,
            "heartbeat_s": self._heartbeat,
        }
        self._pid = 0
        self._exit_next = False

    def exit_next(self) -> None:
        """Have the next flush write the last status, marked exited (the server is stopping).

        Asked once: should the process go on serving (a server restarted in the same process), the
        statuses after it say so.
        """
        self._exit_next = True

    def _start(self) -> None:
        self._pid = os.getpid()
        self._writer_id, self._started = _this_process()
        self._written_at = -float("inf")  # time.monotonic() of the last attempt
        self._reported: object = None  # what that attempt reported, less the status's own drops
        self._waiting: Path | None = None  # a remote store's status record not yet delivered

    def tick(self, force: bool) -> None:
        # ``force`` (a flush) is not enough: obsml.flush() may be called per request. Only the exit is.
        if self._pid != os.getpid():
            self._start()
        exiting = self._closed() or (force and self._exit_next)  # the shutdown's flush, not a tick before it
        if exiting:
            self._exit_next = False
        now = time.monotonic()
        if not exiting and now < self._written_at + self._every:
            return
        counters = STATS.snapshot()
        reported = _without_own_drops(counters)
        if not exiting:
            if reported == self._reported and now < self._written_at + self._heartbeat:
                return
            if self._waiting is not None and self._waiting.exists():
                return  # the sink has not taken the previous one yet: no pile of statuses in the spool
        self._written_at, self._reported = now, reported
        self._write(self._document(counters, exiting))

    def _document(self, counters: dict[str, object], exiting: bool) -> dict[str, Any]:
        delivery = self._store.delivery
        sink: dict[str, Any] = {"scheme": self._store.scheme, "last_error": None, "last_error_at": None}
        if delivery is not None:
            if delivery.last_error is not None:
                sink["last_error"], sink["last_error_at"] = scrub(delivery.last_error[0]), iso(delivery.last_error[1])
            sink["spool_bytes"] = delivery.spool.bytes
            sink["spool_records"] = len(delivery.spool.records)
        errors = {reason: {"error": scrub(text), "at": iso(at)} for reason, (text, at) in STATS.last_errors().items()}
        return {
            "format": FORMAT,
            "writer": self._writer_id,
            "pid": self._pid,
            **self._identity,
            "started": iso(self._started),
            "last_seen": iso(time.time()),
            "exited": exiting,
            "stats": counters,
            "sink": sink,
            "last_errors": errors,
            # What the runtime switches made of each middleware and collector here (README "Runtime switches").
            "control": None if self._control is None else {
                "changed_at": self._control.changed_at, "applied": self._control.applied()
            },
        }

    def _write(self, document: dict[str, Any]) -> None:
        relative = f"{STATUS_FOLDER}/{utc_folders(time.time_ns())}/{self._writer_id}.json"
        data = json.dumps(document, separators=(",", ":")).encode()
        try:
            target = self._store.open_atomic(relative)
            try:
                target.write(data)
            except BaseException:
                target.abort()
                raise
            target.commit()
        except (OSError, StoreWriteError) as exc:
            record_drop(KIND, failure_reason(exc), detail=describe_error(exc))
            return
        self._waiting = getattr(target, "committed", None)  # a spool record (remote stores only)


_process: tuple[int, str, float] = (0, "", 0.0)  # pid, writer id, started


def _this_process() -> tuple[str, float]:
    """The writer id of this process, and when it was first asked for (its first status).

    One per process, not per pipeline: the counters are the process's, so two pipelines writing
    to one store write one file, never counted twice. A forked child is a writer of its own.
    """
    global _process
    if _process[0] != os.getpid():
        _process = (os.getpid(), f"{os.getpid()}-{secrets.token_hex(4)}", time.time())
    return _process[1], _process[2]


def _without_own_drops(counters: dict[str, object]) -> object:
    dropped: dict[str, dict[str, int]] = counters["dropped"]  # type: ignore[assignment]
    others = {(reason, kind): n for reason, kinds in dropped.items() for kind, n in kinds.items() if kind != KIND}
    return {**counters, "dropped": others}
