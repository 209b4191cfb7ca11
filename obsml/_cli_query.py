"""``obsml query "SQL"``: SQL over the store's views (``obsml._views``), printed as a table or written out.

The table (the default) is aligned to the terminal's width (``shutil.get_terminal_size``: the
``COLUMNS`` variable, else the terminal, else 80): when the natural widths do not fit, the widest
columns are narrowed and long cells end with ``…``, and a last line says so. ``csv``, ``json`` (one
array), ``jsonl`` and ``parquet`` (needs ``--output``) keep every value whole; a JSON column comes
out as JSON in ``json`` and ``jsonl``, as its text in ``csv``.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import json
import shutil
import sys
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from ._exceptions import ObsmlError
from ._objects import one_line_error
from ._secrets import scrub

FORMATS = ("table", "csv", "json", "jsonl", "parquet")
ELLIPSIS = "…"
MIN_WIDTH = 6  # a narrowed column keeps at least this many characters, the ellipsis included
BATCH = 10_000  # rows fetched at a time for the streamed formats


def run_query(
    sql: str, *, store: str, since: dt.datetime | None, until: dt.datetime | None, format: str = "table",
    output: str | None = None, out: IO[str] | None = None, err: IO[str] | None = None,
) -> int:
    """Run ``sql`` over the views of ``store`` in ``[since, until)``; returns the exit status.

    0: printed (or "no data in this window", when no view the query reads has a file in it);
    2: DuckDB missing, a store that cannot be read, bad SQL (DuckDB's message), or parquet without a file.
    """
    out, err = out or sys.stdout, err or sys.stderr
    if format == "parquet" and output is None:
        print("obsml query: --format parquet writes a file: give --output FILE", file=err)
        return 2
    try:
        from ._views import StoreViews, load_duckdb

        duckdb = load_duckdb()
        views = StoreViews.open(store, since=since, until=until)
    except (ImportError, ObsmlError) as exc:
        print(f"obsml query: {exc}", file=err)
        return 2
    with views:
        try:
            read = views.define_for(sql)
        except duckdb.Error as exc:
            print(f"obsml query: {scrub(str(exc))}", file=err)
            return 2
        except Exception as exc:  # listing the store: whatever the filesystem raises (adlfs: the Azure SDK's errors)
            reason = one_line_error(exc)
            print(f"obsml query: cannot read {scrub(views.reader.shown())}: {reason}", file=err)
            return 2
        try:
            if views.defined and not read:
                print(f"obsml query: no data in this window ({_window(since, until)}): "
                      f"no part file of {', '.join(sorted(views.defined))}", file=err)
                return 0
            if format == "parquet":
                if (relation := views.connection.sql(sql)) is not None:  # None: a statement without a result
                    relation.write_parquet(output)
                return 0
            result = views.connection.execute(sql)
            with _opened(output, out) as target:
                _write(result, format, target)
        except duckdb.Error as exc:
            print(f"obsml query: {scrub(str(exc))}", file=err)  # its message may name a file's URL
            return 2
    return 0


def _write(result: Any, format: str, target: IO[str]) -> None:
    """The rows of ``result`` (an executed DuckDB cursor) to ``target`` in ``format``."""
    columns = [column[0] for column in result.description]
    kinds = [str(column[1]).split("(")[0] for column in result.description]
    is_json = [kind == "JSON" for kind in kinds]
    if format == "table":
        rows = result.fetchall()
        numeric = [kind in _NUMERIC for kind in kinds]
        for line in table_lines(columns, [[_cell(v) for v in row] for row in rows], numeric,
                                shutil.get_terminal_size().columns):
            print(line, file=target)
        return
    batches = _batches(result)
    if format == "csv":
        writer = csv.writer(target, lineterminator="\n")
        writer.writerow(columns)
        for rows in batches:
            writer.writerows([_csv_value(v) for v in row] for row in rows)
        return
    records = (
        {name: (json.loads(v) if json_column and isinstance(v, str) else v)
         for name, v, json_column in zip(columns, row, is_json, strict=True)}
        for rows in batches for row in rows
    )  # fmt: skip
    if format == "jsonl":
        for record in records:
            target.write(json.dumps(record, ensure_ascii=False, default=_json_value) + "\n")
        return
    target.write("[")
    for n, record in enumerate(records):
        target.write(("," if n else "") + "\n" + json.dumps(record, ensure_ascii=False, default=_json_value))
    target.write("\n]\n")


def table_lines(
    columns: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool], width: int
) -> list[str]:
    """``rows`` (cells as text) as an aligned table at most ``width`` characters wide where it can be.

    Columns whose natural width fits an even share of what is left keep it; the others share the
    rest, and a cell longer than its column is cut, ending with an ellipsis. The last line counts
    the rows and, when a cell was cut, says so.
    """
    natural = [max([len(name), *(len(row[i]) for row in rows)]) for i, name in enumerate(columns)]
    widths = _fit(natural, width - 2 * (len(columns) - 1))
    cut = False

    def line(cells: Sequence[str]) -> str:
        nonlocal cut
        parts = []
        for i, cell in enumerate(cells):
            if len(cell) > widths[i]:
                cell, cut = cell[: widths[i] - 1] + ELLIPSIS, True
            parts.append(cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    lines = [line(columns), "  ".join("-" * w for w in widths)]
    lines += [line(row) for row in rows]
    footer = f"({len(rows)} row{'' if len(rows) == 1 else 's'})"
    if cut:
        footer += f"; long values cut to fit {width} columns: --format csv or json prints them whole"
    return [*lines, footer]


def _fit(natural: list[int], room: int) -> list[int]:
    if sum(natural) <= room:
        return natural
    widths = list(natural)
    narrowed = set(range(len(natural)))
    while True:  # give every column its natural width up to an even share of what is left
        left = room - sum(widths[i] for i in range(len(widths)) if i not in narrowed)
        share = max(MIN_WIDTH, left // max(1, len(narrowed)))
        fitting = {i for i in narrowed if natural[i] <= share}
        if not fitting:
            for i in narrowed:
                widths[i] = share
            return widths
        narrowed -= fitting


_NUMERIC = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
            "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL"}


def _cell(value: Any) -> str:
    """A value as one line of table text: NULL for null, control characters escaped."""
    if value is None:
        return "NULL"
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, default=_json_value)
    elif isinstance(value, bytes):
        text = value.hex()
    else:
        text = str(value)
    return text.translate(_ESCAPES)


_ESCAPES = {ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=_json_value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return _json_value(value) if isinstance(value, (bytes, decimal.Decimal, uuid.UUID, dt.timedelta)) else value


def _json_value(value: Any) -> Any:
    """What ``json`` cannot write by itself: times as ISO-8601, decimals as numbers, bytes as base64."""
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _batches(result: Any) -> Iterator[list[tuple[Any, ...]]]:
    while rows := result.fetchmany(BATCH):
        yield rows


def _window(since: dt.datetime | None, until: dt.datetime | None) -> str:
    start = f"since {since:%Y-%m-%d %H:%M:%S} UTC" if since else "from the start"
    return start + (f", until {until:%Y-%m-%d %H:%M:%S} UTC" if until else "")


@contextmanager
def _opened(path: str | None, default: IO[str]) -> Iterator[IO[str]]:
    """``path`` opened for writing text, or ``default`` (left open) when there is no path."""
    if path is None:
        yield default
        return
    with open(path, "w", encoding="utf-8", newline="") as file:
        yield file
