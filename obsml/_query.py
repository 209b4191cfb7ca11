"""Which part files of a store a time window needs, and the SQL reading model data: no DuckDB here.

Spans are ``traces/<yyyy>/<mm>/<dd>/<hh>/<writer-id>-<seq>.jsonl`` (README: "The store"), log records
``logs/<yyyy>/<mm>/<dd>/<hh>/…`` likewise (issue 18): a window reads only its hour folders
(:func:`span_files`, :func:`log_files`). Model data is the collector's layout (README:
"Model data: reading back"),
``modeldata/<service>/<model>/<version>/<identifier>/<yyyy>/<mm>/<dd>/<writer-id>-<seq>.<suffix>``:
a window reads only its days. Where ``obsml compact`` has been, a compacted parquet stands for the
part files its manifest names (``obsml._compacted``). The file lists are built here from the date
folders, never by DuckDB's globbing or hive partitioning (the folders are plain ``yyyy/mm/dd/hh``).
The connection and its views are ``obsml._views``'s (and ``obsml.modeldata``'s).
"""

from __future__ import annotations

import re
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone

from ._compacted import MANIFEST, PARQUET, readable
from ._exceptions import ConfigError
from ._reader import StoreReader

ROOT = "modeldata"
SPANS = "traces"
LOGS = "logs"
# Columns DuckDB's sniffing could guess wrong ("0042" as an integer, an all-null span_id as JSON):
# declared for csv, cast for jsonl, as the write side means them.
TEXT_COLUMNS = ("correlation_id", "trace_id", "span_id", "schema")
_READERS = {
    "jsonl": "read_json({files}, format='newline_delimited', union_by_name=true, sample_size=-1)",
    "csv": "read_csv({files}, union_by_name=true, sample_size=-1, header=true, types={types})",
    "parquet": "read_parquet({files}, union_by_name=true)",
}
_CSV_TYPES = "{" + ", ".join(f"'{name}': 'VARCHAR'" for name in TEXT_COLUMNS) + ", 'collected_at': 'TIMESTAMPTZ'}"
_DURATION = re.compile(r"(\d+)\s*(w|d|h|m|s)")
_UNITS = {"w": "weeks", "d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def moment(value: datetime | str | None, now: datetime, setting: str) -> datetime | None:
    """``value`` as an aware UTC datetime: a datetime (naive means UTC), an ISO string, or a
    duration before ``now`` such as ``'7d'``, ``'15m'``, ``'2h'``, ``'1w'``."""
    if value is None:
        return None
    if isinstance(value, str):
        if _DURATION.fullmatch(value.strip()):
            return now - duration(value, setting)
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ConfigError(f"{setting}: {value!r} is neither a duration (7d, 15m) nor an ISO date") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def duration(text: str, setting: str) -> timedelta:
    """``text`` (``2h``, ``30m``, ``0s``, ``1w``) as a timedelta; ConfigError otherwise."""
    if match := _DURATION.fullmatch(text.strip()):
        return timedelta(**{_UNITS[match[2]]: int(match[1])})
    raise ConfigError(f"{setting}: {text!r} is not a duration (30m, 2h, 1d)")


def subfolders(reader: StoreReader, folder: str) -> list[str]:
    """The names of the folders directly under ``folder`` (hidden ones skipped), sorted."""
    try:
        entries = reader.fs.ls(f"{reader.root}/{folder}", detail=True)
    except FileNotFoundError:
        return []
    names = (str(entry["name"]).rstrip("/").rsplit("/", 1)[-1] for entry in entries if entry["type"] == "directory")
    return sorted(name for name in names if not name.startswith("."))


def span_files(reader: StoreReader, since: datetime | None, until: datetime | None) -> list[str]:
    """The span part files whose hour folder overlaps ``[since, until)``, as paths DuckDB opens."""
    return hour_files(reader, SPANS, since, until)


def log_files(reader: StoreReader, since: datetime | None, until: datetime | None) -> list[str]:
    """The log part files whose hour folder overlaps ``[since, until)``, as paths DuckDB opens."""
    return hour_files(reader, LOGS, since, until)


def hour_files(reader: StoreReader, top: str, since: datetime | None, until: datetime | None) -> list[str]:
    """The part files of ``top/<yyyy>/<mm>/<dd>/<hh>/`` folders overlapping ``[since, until)``.

    A day wholly inside the window is listed in one call; the first and last days hour by hour,
    so an hour of a full day lists one folder, not the day's.
    """
    if since is None and until is None:
        listed = reader.files(top)
    else:
        start = (since or datetime(1970, 1, 1, tzinfo=timezone.utc)).replace(minute=0, second=0, microsecond=0)
        end = until or datetime.now(timezone.utc)
        if end - start > timedelta(days=31):  # a long window: the day folders there are, not every date in it
            day_list = [day for day in _hour_days(reader, top) if start.date() <= day <= end.date()]
        else:
            day_list = [start.date() + timedelta(days=n) for n in range((end.date() - start.date()).days + 1)]
        listed = []
        for day in day_list:
            first = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            if start <= first and first + timedelta(days=1) <= end:
                listed += reader.files(f"{top}/{day:%Y/%m/%d}")
            else:
                listed += [path for hour in range(24) if start <= first + timedelta(hours=hour) < end
                           for path in reader.files(f"{top}/{day:%Y/%m/%d}/{hour:02d}")]
    listed = [path for path in listed if path.endswith((".jsonl", PARQUET, MANIFEST)) and path.count("/") == 5]
    return [_openable(reader, path) for path in readable(reader, listed)]


def _hour_days(reader: StoreReader, top: str) -> list[date]:
    """The day folders under ``top/`` (``traces``, ``logs``)."""
    found = []
    for yyyy in subfolders(reader, top):
        for mm in subfolders(reader, f"{top}/{yyyy}"):
            for dd in subfolders(reader, f"{top}/{yyyy}/{mm}"):
                if (day := _day(yyyy, mm, dd)) is not None:
                    found.append(day)
    return found


def days(since: datetime | None, until: datetime | None) -> list[date] | None:
    """The date folders of a window, or None for every day (a window open at its start)."""
    if since is None:
        return None
    last = (until or datetime.now(timezone.utc)).date()
    return [since.date() + timedelta(days=n) for n in range((last - since.date()).days + 1)]


def part_files(
    reader: StoreReader, model: str | None, identifier: str, *, service: str | None, version: str | None,
    since: datetime | None, until: datetime | None,
) -> dict[tuple[str, str, str, str], list[str]]:
    """The part files of a window, by (service, model, version, suffix), as paths DuckDB opens.

    ``None`` for ``model``, ``service`` or ``version`` means every one found in the store.
    """
    found: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
    first, last = (since.date() if since else date.min), (until.date() if until else date.max)
    window = days(since, until)
    for service_name in [service] if service else subfolders(reader, ROOT):
        for model_name in [model] if model else subfolders(reader, f"{ROOT}/{service_name}"):
            model_folder = f"{ROOT}/{service_name}/{model_name}"
            for version_name in [version] if version else subfolders(reader, model_folder):
                folder = f"{model_folder}/{version_name}/{identifier}"
                # A long window lists the identifier once rather than one call per day.
                listed = reader.files(folder) if window is None or len(window) > 31 else [
                    path for day in window for path in reader.files(f"{folder}/{day:%Y/%m/%d}")
                ]
                for path in readable(reader, listed):
                    below = path[len(folder) + 1:].split("/")  # yyyy, mm, dd, name
                    day = _day(*below[:3]) if len(below) == 4 else None
                    suffix = below[-1].rpartition(".")[2]
                    if day is not None and first <= day <= last and suffix in _READERS:
                        found[(service_name, model_name, version_name, suffix)].append(_openable(reader, path))
    return found


def identifiers(reader: StoreReader) -> list[str]:
    """Every identifier (``inputs``, ``predictions``…) of any model, version and service in the store."""
    found = {
        identifier
        for service in subfolders(reader, ROOT)
        for model in subfolders(reader, f"{ROOT}/{service}")
        for version in subfolders(reader, f"{ROOT}/{service}/{model}")
        for identifier in subfolders(reader, f"{ROOT}/{service}/{model}/{version}")
    }
    return sorted(found)


def union_sql(
    files: dict[tuple[str, str, str, str], list[str]], *, with_service: bool, with_version: bool,
    with_model: bool = False,
) -> str | None:
    """One query over ``files``, formats and schemas unioned by name; None when there is no file."""
    selects = []
    for (service, model, version, suffix), paths in sorted(files.items()):
        source = _READERS[suffix].format(files=_list(paths), types=_CSV_TYPES)
        extra = (f", {_text(service)} AS service" if with_service else "") + (
            f", {_text(model)} AS model" if with_model else "") + (
            f", {_text(version)} AS version" if with_version else ""
        )
        selects.append(f"SELECT *{extra} FROM {source}")
    return " UNION ALL BY NAME ".join(selects) or None


def window_sql(union: str, types: dict[str, str], since: datetime | None, until: datetime | None) -> str:
    """The rows of ``union`` (whose column types are ``types``) in the window, typed, in time order."""
    where = [f"collected_at >= {_instant(since)}"] if since else []
    where += [f"collected_at < {_instant(until)}"] if until else []
    # Cast after the union, and only the columns present: span_id is absent outside requests.
    casts = [f'CAST("{_name(name)}" AS VARCHAR) AS "{_name(name)}"' for name in TEXT_COLUMNS if name in types]
    # DuckDB reads JSON integers of both signs as HUGEINT (a float in pandas); the writer's ints fit in 64 bits.
    casts += [f'CAST("{_name(name)}" AS BIGINT) AS "{_name(name)}"'
              for name, kind in types.items() if kind == "HUGEINT"]
    return (
        f"SELECT * REPLACE (CAST(collected_at AS TIMESTAMPTZ) AS collected_at{''.join(', ' + c for c in casts)})"
        f" FROM ({union})" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY collected_at"
    )


def _day(yyyy: str, mm: str, dd: str) -> date | None:
    try:
        return date(int(yyyy), int(mm), int(dd))
    except ValueError:  # not a date folder: never read
        return None


def _openable(reader: StoreReader, relative: str) -> str:
    path = f"{reader.root}/{relative}"
    protocols = (reader.fs.protocol,) if isinstance(reader.fs.protocol, str) else reader.fs.protocol
    return path if "file" in protocols else str(reader.fs.unstrip_protocol(path))


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _list(paths: list[str]) -> str:
    return "[" + ", ".join(map(_text, paths)) + "]"


def _name(name: str) -> str:
    return name.replace('"', '""')


def _instant(moment: datetime) -> str:
    return f"TIMESTAMPTZ {_text(moment.isoformat())}"
