"""``obsml status``: the writers' status files of a window, summed (README: "obsml status").

Counters are cumulative per writer process. The window picks the writers, not the counts: a
writer is in the window when it was alive in it (started before its end, last seen after its
start), and it counts with its latest status, everything since it started. So a drop in the
window is never missed, and a drop of an earlier hour of a writer still alive in the window
counts too; a restart starts afresh. Nothing here imports DuckDB: the files are small JSON
read with fsspec, so the command starts fast.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, TextIO

from ._exceptions import ConfigError
from ._objects import STATUS_FOLDER, one_line_error
from ._query import days, moment
from ._reader import StoreReader
from ._secrets import scrub
from ._stats import COUNTERS

STALE_HEARTBEATS = 3  # a writer not seen for this many heartbeats, without having exited, is stale
Status = dict[str, Any]
Drops = dict[str, dict[str, int]]


def run_status(
    store: str, since: str | None, until: str | None, output: str = "text", out: TextIO | None = None
) -> int:
    """Print the status of ``store``'s writers in the window; 1 when something was dropped, else 0."""
    out = out or sys.stdout  # looked up now: a default bound at import would keep whatever stdout was then
    now = datetime.now(timezone.utc)
    try:
        start, end = moment(since, now, "--since"), moment(until, now, "--until")
        reader = StoreReader.open_existing(store)  # a mistyped --store is not an empty store
    except ConfigError as exc:
        print(f"obsml status: {exc}", file=sys.stderr)
        return 2
    shown = scrub(reader.shown())  # a URL may carry a SAS token
    try:
        found = _read(reader, start, end)
    except Exception as exc:  # whatever the filesystem raises (adlfs: the Azure SDK's errors), in one line
        print(f"obsml status: cannot read {shown}: {one_line_error(exc)}", file=sys.stderr)
        return 2
    writers = [_with_state(status, now) for status in _latest(found) if _in(status, start, end)]
    writers.sort(key=lambda status: (status["host"], status["started"], status["pid"]))
    totals = _totals(status["stats"] for status in writers)
    if output == "json":
        document = {
            "store": shown,
            "since": start.isoformat() if start else None,
            "until": end.isoformat() if end else None,
            "now": now.isoformat(),
            "writers_alive": sum(w["state"] == "alive" for w in writers),
            "writers_stale": sum(w["stale"] for w in writers),
            "writers_exited": sum(w["exited"] for w in writers),
            "totals": totals,
            "writers": writers,
        }
        print(json.dumps(document, indent=2), file=out)
    elif not writers:
        window = f"since {_shown(start)}" if start else "at any time"
        window += f" until {_shown(end)}" if end else ""
        print(f"obsml status: nothing found: no writer reported to {shown} {window}", file=out)
    else:
        _print_text(shown, start, end, writers, totals, out)
    return 1 if _dropped(totals) else 0


def _read(reader: StoreReader, start: datetime | None, end: datetime | None) -> list[Status]:
    window = days(start, end)
    folders = [STATUS_FOLDER] if window is None else [f"{STATUS_FOLDER}/{day:%Y/%m/%d}" for day in window]
    names = [name for folder in folders for name in reader.files(folder) if name.endswith(".json")]
    if not names:
        return []
    # One call: an async filesystem (abfs) fetches them concurrently. A file that cannot be read or
    # parsed, or lacks what is shown (another tool's, an older format), is left out, not fatal.
    found = reader.fs.cat([f"{reader.root}/{name}" for name in names], on_error="omit")
    statuses = []
    for data in found.values():
        try:
            status = json.loads(data)
        except ValueError:
            continue
        if _valid(status):
            statuses.append(status)
    return statuses


_KEYS = ("writer", "pid", "host", "service", "version", "started", "last_seen", "exited", "heartbeat_s", "stats")


def _valid(status: Any) -> bool:
    if not isinstance(status, dict) or any(key not in status for key in _KEYS) or not isinstance(status["stats"], dict):
        return False
    try:
        _time(status["started"]), _time(status["last_seen"]), float(status["heartbeat_s"])
    except (TypeError, ValueError):
        return False
    return True


def _latest(statuses: Iterable[Status]) -> list[Status]:
    """Each writer's latest status (a writer alive over midnight has one file per day)."""
    latest: dict[str, Status] = {}
    for status in statuses:
        known = latest.get(status["writer"])
        if known is None or status["last_seen"] > known["last_seen"]:
            latest[status["writer"]] = status
    return list(latest.values())


def _in(status: Status, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or _time(status["last_seen"]) >= start) and (end is None or _time(status["started"]) <= end)


def _with_state(status: Status, now: datetime) -> Status:
    silent = (now - _time(status["last_seen"])).total_seconds()
    stale = not status["exited"] and silent > STALE_HEARTBEATS * float(status["heartbeat_s"])
    return {**status, "stale": stale, "state": "exited" if status["exited"] else "stale" if stale else "alive"}


def _totals(counters: Iterable[dict[str, Any]]) -> dict[str, Any]:
    totals: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    dropped: Drops = {}
    for stats in counters:
        for name in COUNTERS:
            totals[name] += int(stats.get(name, 0))
        for reason, kinds in stats.get("dropped", {}).items():
            by_kind = dropped.setdefault(reason, {})
            for kind, n in kinds.items():
                by_kind[kind] = by_kind.get(kind, 0) + int(n)
    totals["dropped"] = dropped
    return totals


def _dropped(stats: dict[str, Any]) -> int:
    return sum(n for kinds in stats.get("dropped", {}).values() for n in kinds.values())


_WRITTEN = ("trace_files_written", "payloads_written", "modeldata_files_written", "log_files_written")


def _written(stats: dict[str, Any]) -> int:
    return sum(int(stats.get(name, 0)) for name in _WRITTEN)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _shown(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "now"


def _age(text: str, now: datetime) -> str:
    seconds = max(0, int((now - _time(text)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


# Columns: heading, right-aligned, and the order in which a narrow terminal gives them up (0: never).
_COLUMNS = (
    ("WRITER", False, 0), ("HOST", False, 4), ("PID", True, 0), ("SERVICE", False, 2), ("VERSION", False, 1),
    ("STATE", False, 0), ("LAST SEEN", True, 0), ("CAPTURED", True, 0), ("WRITTEN", True, 0),
    ("SPOOLED", True, 3), ("DROPPED", True, 0),
)


def _print_text(
    store: str, start: datetime | None, end: datetime | None, writers: list[Status], totals: dict[str, Any],
    out: TextIO,
) -> None:
    now = datetime.now(timezone.utc)
    rows = [
        [
            w["writer"], w["host"], str(w["pid"]), w["service"], w["version"], w["state"], _age(w["last_seen"], now),
            f"{w['stats'].get('requests_captured', 0):,}", f"{_written(w['stats']):,}",
            f"{w['stats'].get('objects_spooled', 0):,}", f"{_dropped(w['stats']):,}",
        ]
        for w in writers
    ]
    states = {state: sum(w["state"] == state for w in writers) for state in ("alive", "stale", "exited")}
    summary = ", ".join(f"{n} {state}" for state, n in states.items() if n)
    total = [
        f"TOTAL ({len(writers)})", "", "", "", "", "", "", f"{totals['requests_captured']:,}",
        f"{_written(totals):,}", f"{totals['objects_spooled']:,}", f"{_dropped(totals):,}",
    ]
    print(f"obsml status of {store}, {_shown(start) if start else 'the start'} to {_shown(end)}", file=out)
    print(f"writers: {summary} (counters: since each started)", file=out)
    print(file=out)
    _print_table([*rows, total], out)
    dropped = totals["dropped"]
    print(file=out)
    if not _dropped(totals):
        print("nothing dropped", file=out)
        return
    print("dropped, by reason and kind:", file=out)
    lines = [(reason, kind, f"{n:,}") for reason, kinds in sorted(dropped.items()) for kind, n in sorted(kinds.items())]
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    for reason, kind, n in lines:
        print(f"  {reason:<{widths[0]}}  {kind:<{widths[1]}}  {n:>{widths[2]}}", file=out)
    errors = {reason: w["last_errors"][reason] for w in writers for reason in w.get("last_errors", {})}
    for reason, error in sorted(errors.items()):
        print(f"  latest {reason}: {error['error']} ({error['at']})", file=out)


def _print_table(rows: list[list[str]], out: TextIO) -> None:
    """Aligned columns; on a narrow terminal the least useful columns go first."""
    columns = list(range(len(_COLUMNS)))
    width = shutil.get_terminal_size().columns

    def widths(keep: list[int]) -> dict[int, int]:
        return {i: max(len(_COLUMNS[i][0]), *(len(row[i]) for row in rows)) for i in keep}

    for _, i in sorted((_COLUMNS[i][2], i) for i in columns if _COLUMNS[i][2]):
        if sum(widths(columns).values()) + 2 * (len(columns) - 1) <= width:
            break
        columns.remove(i)
    sizes = widths(columns)
    for row in [[heading for heading, _, _ in _COLUMNS], *rows]:
        cells = [row[i].rjust(sizes[i]) if _COLUMNS[i][1] else row[i].ljust(sizes[i]) for i in columns]
        print("  ".join(cells).rstrip(), file=out)
