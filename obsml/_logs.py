"""``obsml logs`` and ``obsml tail``: the requests in a store, filtered in SQL, newest first or as they come.

Filters become one parameterised ``WHERE`` over the ``spans`` view (user text is always a DuckDB
parameter, never pasted into SQL). ``logs`` walks the hour folders of ``traces/`` newest first and
queries them in growing batches until ``--limit`` rows are found: every span of an hour folder
started in that hour (README: "The store"), so the batches come out in time order and a recent
window never reads the old ones. ``tail`` polls the current and the previous hour folder: a part
file is written once, whole, and never rewritten (``_parts.py``), so its name is all it needs to
remember. With ``--correlation-id``, ``logs`` prints each request's timeline: its log records and
outbound calls (the ``logs`` and ``dependencies`` views of its hours, matched by trace id and span id,
issue 18) under it, in time order. The views are :mod:`obsml._views`'s; DuckDB is imported only when a
command runs (``pip install 'obsml[query]'``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import fsspec

from ._compacted import MANIFEST, PARQUET, readable
from ._exceptions import ObsmlError
from ._logs_format import Printer, Row, Timeline
from ._objects import one_line_error
from ._query import subfolders
from ._reader import StoreReader
from ._secrets import scrub

if TYPE_CHECKING:
    from ._views import StoreViews

_STATUS = re.compile(r"([1-5])(?:(xx)|(\d\d))", re.IGNORECASE)
# Columns of a line; with --bodies also those of the bodies (encoding and content type are attributes).
LINE_COLUMNS = (
    "start_time", "status_code", "duration_ms", "method", "route", "path", "service", "model", "version",
    "correlation_id", "trace_id", "span_id", "error", "exception_type", "exception_message",
)
_BODY_ATTRIBUTES = ("encoding", "content_type", "truncated", "captured_size")
# The timeline's entries under a request: what the ``logs`` and ``dependencies`` views give of each.
LOG_ENTRY = (
    "time", "severity_text", "severity_number", "logger", "message", "body", "exception_type", "exception_message",
    "exception_stacktrace", "trace_id", "span_id", "correlation_id", "attributes",
)
DEPENDENCY_ENTRY = (
    "start_time", "end_time", "duration_ms", "method", "url", "server_address", "server_port", "status_code",
    "error", "error_type", "exception_type", "exception_message", "name", "trace_id", "span_id",
    "parent_span_id", "attributes",
)
HOUR, DAY = timedelta(hours=1), timedelta(days=1)


def status_range(text: str) -> tuple[int, int]:
    """``5xx`` (a class) or ``503`` (a code) as the inclusive range of status codes it means."""
    match = _STATUS.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"expected a status class such as 5xx or 4xx, or a code such as 503, got {text!r}")
    if match[2]:
        return int(match[1]) * 100, int(match[1]) * 100 + 99
    return int(match[0]), int(match[0])


@dataclass(frozen=True)
class Filters:
    """What ``--status``, ``--model``… ask for; :meth:`where` is the SQL and its parameters."""

    status: tuple[int, int] | None = None
    model: str | None = None
    version: str | None = None
    route: str | None = None
    correlation_id: str | None = None
    contains: str | None = None
    errors: bool = False

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        if self.status is not None:
            clauses.append("status_code BETWEEN ? AND ?")
            params += self.status
        for column in ("model", "version", "correlation_id"):
            if (value := getattr(self, column)) is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if self.route is not None:  # the template (/items/{id}) or the path itself (/items/42)
            clauses.append("(route = ? OR path = ?)")
            params += [self.route, self.route]
        if self.contains is not None:
            # Inline text bodies only, in any case (as Kusto's `contains`); base64 text would match by accident.
            either = " OR ".join(
                f"(contains(lower({side}_body), lower(?)) AND {_attribute(side, 'encoding')} IS DISTINCT FROM 'base64')"
                for side in ("request", "response")
            )
            clauses.append(f"({either})")
            params += [self.contains, self.contains]
        if self.errors:
            clauses.append("(error OR status_code >= 500)")
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def select_sql(filters: Filters, *, bodies: bool) -> tuple[str, list[Any]]:
    """The query of the requests matching ``filters`` over the ``spans`` view, oldest first."""
    where, params = filters.where()
    return f"SELECT {_columns(bodies)} FROM spans{where} ORDER BY start_time", params


def newest_sql(filters: Filters, *, bodies: bool) -> tuple[str, str, list[Any]]:
    """The queries of the newest requests matching ``filters``: the first finds the starts of the newest
    and of the n-th newest (``LIMIT ?``), the second reads the requests from it on (``start_time >= ?``,
    ``LIMIT ?``); both take the filters' parameters first.

    DuckDB computes every selected column of every row before it sorts, and each column is a parse of
    the span's attributes: sorting the start times alone first is 5x faster on an hour of 5,000 spans.
    """
    where, params = filters.where()
    first = (f"SELECT min(start_time), max(start_time) FROM (SELECT start_time FROM spans{where}"
             " ORDER BY start_time DESC LIMIT ?)")
    since = f"{where} AND start_time >= ?" if where else " WHERE start_time >= ?"
    return first, f"SELECT {_columns(bodies)} FROM spans{since} ORDER BY start_time DESC LIMIT ?", params


def _columns(bodies: bool) -> str:
    columns = list(LINE_COLUMNS)
    if bodies:
        for side in ("request", "response"):
            columns += [f"{side}_body", f"{side}_body_uri", f"{side}_body_size"]
            columns += [f"{_attribute(side, name)} AS {side}_body_{name}" for name in _BODY_ATTRIBUTES]
    return ", ".join(columns)


def run_logs(
    store: str, filters: Filters, *, since: datetime | None, until: datetime | None, limit: int,
    format: str = "text", bodies: bool = False,
) -> int:
    """Print the newest ``limit`` requests in ``[since, until)`` matching ``filters``: 0, also when there
    are none; 2 when the store cannot be read."""
    if (views := _open(store, "logs", since, until)) is None:
        return 2
    printer = _printer(views.reader, "logs", format, bodies)
    with views, _quiet_when_output_closes(), _interrupts(at_once=True) as interrupted:
        try:
            found, read_any = _newest(views, filters, since=since, until=until, limit=limit, bodies=bodies)
        except Exception as exc:  # the store's listing, a part file DuckDB cannot read, or Ctrl-C in a query
            if interrupted.is_set():
                raise KeyboardInterrupt from None
            printer.note(_cannot_read(views, exc))
            return 2
        try:
            timeline = _timeline(views, found) if filters.correlation_id is not None and found else None
        except Exception as exc:  # as above: the log or span part files of the requests' hours
            if interrupted.is_set():
                raise KeyboardInterrupt from None
            printer.note(_cannot_read(views, exc))
            return 2
        if found:
            printer.rows(found, timeline)
        else:
            printer.note("no requests match in this window" if read_any else "no data in this window")
    return 0


def _newest(
    views: StoreViews, filters: Filters, *, since: datetime | None, until: datetime | None, limit: int, bodies: bool
) -> tuple[list[Row], bool]:
    """The newest ``limit`` requests matching ``filters``, and whether the window had any part file."""
    first, sql, params = newest_sql(filters, bodies=bodies)
    found: list[Row] = []
    read_any = False
    for batch in _batches(hour_folders(views.reader, since, until), views.reader):
        read_any = True
        views.define_spans([path for files in batch.values() for path in files])
        wanted = limit - len(found)
        [(oldest, newest)] = views.connection.execute(first, [*params, wanted]).fetchall()
        if oldest is None:
            continue
        # Only the hours from the oldest to the newest kept hold them: those are read again, not the batch.
        views.define_spans([
            path for hour, files in batch.items() if _hour(oldest) <= hour <= _hour(newest) for path in files
        ])
        found += _rows(views.connection.execute(sql, [*params, oldest, wanted]))
        if len(found) >= limit:
            break
    return found, read_any


def _timeline(views: StoreViews, requests: list[Row]) -> Timeline:
    """The log records and outbound calls of ``requests`` by request (trace id, span id), in time order:
    those of the hour folders from the first request's start to the last one's end."""
    from ._views import StoreViews

    starts = [row["start_time"] for row in requests]
    ends = [row["start_time"] + timedelta(milliseconds=row["duration_ms"] or 0) for row in requests]
    hours = StoreViews(views.reader, views.connection, _hour(min(starts)), _hour(max(ends)) + HOUR)
    hours.define(["logs", "dependencies"])  # on the same connection; `obsml logs` reads no other view by these names
    wanted = ", ".join("(?, ?)" for _ in requests)
    params = [key for row in requests for key in (row["trace_id"], row["span_id"])]
    timeline: Timeline = {}
    for record, view, columns, parent in (
        ("log", "logs", LOG_ENTRY, "span_id"), ("dependency", "dependencies", DEPENDENCY_ENTRY, "parent_span_id"),
    ):
        selected = ", ".join(f"v.{column}" for column in columns)
        sql = (f"SELECT {selected} FROM {view} AS v JOIN (VALUES {wanted}) AS wanted(trace_id, span_id)"
               f" ON v.trace_id = wanted.trace_id AND v.{parent} = wanted.span_id")
        for row in _rows(views.connection.execute(sql, params)):
            timeline.setdefault((row["trace_id"], row[parent]), []).append({"record": record, **row})
    for entries in timeline.values():
        entries.sort(key=lambda entry: entry["time"] if entry["record"] == "log" else entry["start_time"])
    return timeline


def run_tail(
    store: str, filters: Filters, *, interval: float, format: str = "text", bodies: bool = False,
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> int:
    """Print the requests of every part file that appears from now on, until interrupted: then 0.

    A poll that fails (the store unreachable for a while, a part file DuckDB cannot read) is said on
    stderr, once until another failure or a success, and the polls go on.
    """
    if (views := _open(store, "tail", None, None, must_exist=False)) is None:  # it may start before the server
        return 2
    printer = _printer(views.reader, "tail", format, bodies)
    sql, params = select_sql(filters, bodies=bodies)
    with views, _quiet_when_output_closes(), _interrupts(at_once=False) as interrupted:
        try:
            seen = set(_recent_files(views.reader, clock()))
        except Exception as exc:  # the store's listing: whatever the filesystem raises
            printer.note(_cannot_read(views, exc))
            return 2
        printer.note("following new requests (Ctrl-C to stop)")
        failure = ""
        while not interrupted.wait(interval):
            rows: list[Row] = []
            try:
                current = _recent_files(views.reader, clock())
                # One file at a time, so that one DuckDB cannot read (said once) keeps none of the others back.
                for path in [path for path in current if path not in seen]:
                    seen.add(path)
                    views.define_spans([path])
                    rows += _rows(views.connection.execute(sql, params))
                seen &= set(current)  # the folders polled: files of older hours will not come again
                failure = ""
            except Exception as exc:
                if _cannot_read(views, exc) != failure:
                    failure = _cannot_read(views, exc)
                    printer.note(failure)
            printer.rows(sorted(rows, key=lambda row: row["start_time"]))
    return 0


@contextmanager
def _interrupts(*, at_once: bool) -> Iterator[threading.Event]:
    """An event set by Ctrl-C. ``at_once``: Ctrl-C also raises KeyboardInterrupt where it lands, and
    inside a DuckDB query, which it stops, that comes out as a RuntimeError: the event tells them
    apart. Otherwise the event alone ends ``tail`` between two polls, and a second Ctrl-C raises."""
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        raise_now = at_once or interrupted.is_set()
        interrupted.set()
        if raise_now:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _cannot_read(views: StoreViews, exc: Exception) -> str:
    # One line (the Azure SDK's messages have several), scrubbed: a filesystem's message may hold a URL's secrets.
    return f"cannot read {scrub(views.reader.shown())}: {one_line_error(exc)}"


def _open(
    store: str, command: str, since: datetime | None, until: datetime | None, must_exist: bool = True
) -> StoreViews | None:
    """Views of ``store`` (DuckDB imported here), or None once it is said in one line why it cannot be read."""
    from ._views import StoreViews

    try:
        return StoreViews.open(store, since=since, until=until, must_exist=must_exist)
    except (ImportError, ObsmlError) as exc:
        sys.stderr.write(f"obsml {command}: {exc}\n")
        return None


@contextmanager
def _quiet_when_output_closes() -> Iterator[None]:
    """A reader of the output gone away (``| head``) ends the command, without a second error at exit."""
    try:
        yield
    except BrokenPipeError:  # as Python's documentation for SIGPIPE advises
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _printer(reader: StoreReader, command: str, format: str, bodies: bool) -> Printer:
    out = sys.stdout.buffer
    terminal = out.isatty()
    width = shutil.get_terminal_size().columns if terminal else None  # COLUMNS, else the terminal's

    def fetch(uri: str) -> bytes:
        """An offloaded body, through the store's filesystem (and its credentials) when it is the store's."""
        protocols = (reader.fs.protocol,) if isinstance(reader.fs.protocol, str) else reader.fs.protocol
        if uri.partition("://")[0] in protocols:
            return bytes(reader.fs.cat_file(reader.fs._strip_protocol(uri)))
        with fsspec.open(uri, "rb") as file:
            return bytes(file.read())

    return Printer(out, format=format, bodies=bodies, width=width, terminal=terminal, fetch=fetch,
                   notes=sys.stderr.buffer, command=command)


def hour_folders(reader: StoreReader, since: datetime | None, until: datetime | None) -> Iterator[tuple[datetime, str]]:
    """The hours and ``traces/<yyyy>/<mm>/<dd>/<hh>`` folders overlapping ``[since, until)``, newest first,
    each level listed only when reached; folders that are not dates are skipped."""
    for year in reversed(subfolders(reader, "traces")):
        for month in reversed(subfolders(reader, f"traces/{year}")):
            for day in reversed(subfolders(reader, f"traces/{year}/{month}")):
                if (first := _start(f"{year}-{month}-{day}")) is None or _outside(first, DAY, since, until):
                    continue
                for hour in reversed(subfolders(reader, f"traces/{year}/{month}/{day}")):
                    start = _start(f"{year}-{month}-{day}T{hour}")
                    if start is not None and not _outside(start, HOUR, since, until):
                        yield start, f"traces/{year}/{month}/{day}/{hour}"


def _start(iso: str) -> datetime | None:
    try:
        return datetime.fromisoformat(iso).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def _outside(start: datetime, length: timedelta, since: datetime | None, until: datetime | None) -> bool:
    return (since is not None and start + length <= since) or (until is not None and start >= until)


def _hour(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def _batches(folders: Iterator[tuple[datetime, str]], reader: StoreReader) -> Iterator[dict[datetime, list[str]]]:
    """The part files of ``folders`` by hour, in batches of 1, 2, 4… folders: a rare match costs a few
    queries. Hours without part files are left out."""
    batch: dict[datetime, list[str]] = {}
    listed, size = 0, 1
    for hour, folder in folders:
        if files := _part_files(reader, folder):
            batch[hour] = files
        listed += 1
        if listed == size:
            if batch:
                yield batch
            batch, listed, size = {}, 0, size * 2
    if batch:
        yield batch


def _recent_files(reader: StoreReader, now: datetime) -> list[str]:
    """The part files of the previous and the current hour (a part file lands after its spans' hour)."""
    folders = [f"traces/{moment:%Y/%m/%d/%H}" for moment in (now - timedelta(hours=1), now)]
    for folder in folders:  # a remote filesystem caches listings
        reader.fs.invalidate_cache(f"{reader.root}/{folder}")
    # Part files only: a compacted parquet holds spans of parts already listed here (obsml._compacted).
    return [path for folder in folders for path in reader.files(folder) if path.endswith(".jsonl")]


def _part_files(reader: StoreReader, folder: str) -> list[str]:
    """The files of an hour folder to read: its part files, or a compacted parquet instead of those it holds."""
    return readable(reader, [path for path in reader.files(folder) if path.endswith((".jsonl", PARQUET, MANIFEST))])


def _rows(result: Any) -> list[Row]:
    """The rows of an executed query as dicts, JSON columns parsed (DuckDB gives their text)."""
    names = [column[0] for column in result.description]
    is_json = [str(column[1]) == "JSON" for column in result.description]
    return [
        {name: json.loads(value) if parse and isinstance(value, str) else value
         for name, value, parse in zip(names, values, is_json, strict=True)}
        for values in result.fetchall()
    ]


def _attribute(side: str, name: str) -> str:
    return f"json_extract_string(attributes, '$.\"obsml.{side}.body.{name}\"')"
