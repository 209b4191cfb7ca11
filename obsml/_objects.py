"""Objects in the store, below both places that write them (``_store`` on the local disk,
``_spool`` for a remote sink): the atomic-object interface, how a failed write is counted,
and the date folders of the store layout.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Protocol

from ._secrets import scrub
from ._stats import DropReason, count

# Folders of part files (spans, request log records, model data rows): they may use the disk reserve
# and the spool budget that bodies and other offloaded values leave them.
PART_FOLDERS = ("traces/", "logs/", "modeldata/")
# Each writer's status (``_status``): obsml's own bookkeeping, not data, so it is counted under none
# of the data counters (a status counted as written would change what the next status reports).
STATUS_FOLDER = "_obsml/status"


class StoreWriteError(Exception):
    """An object could not be written; ``reason`` is the drop reason it is counted under."""

    def __init__(self, reason: DropReason) -> None:
        super().__init__(reason)
        self.reason: DropReason = reason


class AtomicTarget(Protocol):
    """An object being written: whole in the store after :meth:`commit`, gone after :meth:`abort`."""

    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


def failure_reason(exc: BaseException) -> DropReason:
    """The drop reason of a failed store write: a :class:`StoreWriteError`'s own, else ``store_error``."""
    return exc.reason if isinstance(exc, StoreWriteError) else "store_error"


def is_data(relative: str) -> bool:
    """Whether an object is data (spans, bodies, model data), not obsml's status."""
    return not relative.startswith(STATUS_FOLDER)


def count_written(relative: str) -> None:
    if not is_data(relative):
        return
    if relative.startswith("traces/"):
        count("trace_files_written")
    elif relative.startswith("modeldata/"):
        count("modeldata_files_written")
    elif relative.startswith("logs/"):
        count("log_files_written")
    else:
        count("payloads_written")


def describe_error(exc: BaseException) -> str:
    """An exception's type and message for a log line, scrubbed of credentials before it is cut
    (a secret cut in half would no longer be recognised)."""
    return f"{type(exc).__name__}: {scrub(str(exc))[:300]}"


def one_line_error(exc: BaseException) -> str:
    """:func:`describe_error` on one line, for a command's message (the Azure SDK's span several)."""
    return " ".join(describe_error(exc).split())


def utc_folders(ns: int, hourly: bool = False) -> str:
    """The date partition of a time in the store layout: ``yyyy/mm/dd`` (``/hh`` when hourly), UTC."""
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y/%m/%d/%H" if hourly else "%Y/%m/%d")
