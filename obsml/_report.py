"""``obsml report`` (a self-contained HTML report) and ``obsml drift`` (the drift table, a retraining gate).

Both read the store through ``obsml._views`` (issue 19): the window's views, and for
``--reference`` either the same views over an earlier period (``2026-11-01..2026-11-08``,
``14d..7d``) or a training-data file (CSV, Parquet, JSONL) that DuckDB reads in place. The
aggregation is ``obsml._report_data``'s and ``obsml._report_drift``'s, the page ``obsml._report_html``'s.
Heavy libraries (DuckDB, scipy, matplotlib) are imported only here, when a command runs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import sys
from datetime import datetime, timezone
from typing import IO, Any

from ._exceptions import ConfigError, ObsmlError
from ._objects import describe_error
from ._secrets import scrub

REFERENCE_SUFFIXES = {".csv": "read_csv", ".parquet": "read_parquet", ".jsonl": "read_json", ".json": "read_json",
                      ".ndjson": "read_json"}
IDENTIFIERS = ("inputs", "predictions")  # whose columns are compared: the features and the predictions
MAX_PLOTS = 40  # distributions drawn; more columns are listed in the tables only


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """When a column is flagged as drifted: PSI at or over ``psi``, or the test's p-value under ``p_value``."""

    psi: float = 0.2
    p_value: float = 0.01


@dataclasses.dataclass(frozen=True)
class Reference:
    """``--reference``: an earlier period of the store, or a file; shown as given."""

    text: str
    since: datetime | None = None
    until: datetime | None = None
    path: str | None = None


def parse_reference(text: str, now: datetime) -> Reference:
    """``A..B`` (each an ISO time or a duration before now) or an existing CSV/Parquet/JSONL file.

    Raises ConfigError for anything else.
    """
    from ._query import moment

    if ".." in text and not os.path.exists(text):
        first, _, last = text.partition("..")
        since, until = moment(first, now, "--reference"), moment(last, now, "--reference")
        if since is None or until is None or since >= until:
            raise ConfigError(f"--reference: {text!r}: the period must be START..END with START before END")
        return Reference(text, since=since, until=until)
    suffix = os.path.splitext(text)[1].lower()
    if suffix not in REFERENCE_SUFFIXES:
        raise ConfigError(f"--reference: {text!r} is neither a period (START..END) nor a .csv, .parquet or .jsonl file")
    if not os.path.isfile(text):
        raise ConfigError(f"--reference: no such file: {text}")
    return Reference(text, path=text)


class Progress:
    """``obsml report: [3/7] model data`` redrawn on one line of a terminal; nothing when not a terminal."""

    def __init__(self, command: str, total: int, stream: IO[str]) -> None:
        self.command, self.total, self.stream, self.done = command, total, stream, 0
        self.shown = stream.isatty()

    def step(self, what: str) -> None:
        self.done += 1
        if self.shown:
            filled = int(20 * (self.done - 1) / self.total)
            bar = "#" * filled + "-" * (20 - filled)
            self.stream.write(f"\r\x1b[2K{self.command}: [{bar}] {self.done}/{self.total} {what}")
            self.stream.flush()

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def missing_extra(command: str, modules: tuple[str, ...]) -> str | None:
    """The one-line error naming the extra to install when one of ``modules`` is missing, else None."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            return f"obsml {command}: needs {name}: pip install 'obsml[report]'"
    return None


class Comparison:
    """The window's model data and the reference's, per identifier, for one model (``--model`` or the busiest)."""

    def __init__(self, views: Any, reference: Reference | None, store: str, model: str | None,
                 version: str | None) -> None:
        from ._report_data import models
        from ._views import StoreViews

        self.views, self.reference, self.notes = views, reference, []
        present = views.define(["inputs", "predictions", "labels", "modeldata"])
        self.present = [identifier for identifier in IDENTIFIERS if identifier in present]
        self.has_labels = "labels" in present
        found = models(views.connection, self.present[0]) if self.present else []
        self.model = model
        if model is None and found:
            self.model = found[0][0]
            if len(found) > 1:
                self.notes.append(f"{len(found)} models in this window; this report shows {self.model!r} (the most "
                                  "rows): give --model for another")
        self.version = version
        self.reference_views: Any = None
        self._columns: list[tuple[str, str, str, Any, Any]] | None = None
        if reference is not None and reference.path is None:
            self.reference_views = StoreViews.open(store, since=reference.since, until=reference.until)
            self.reference_views.define(list(IDENTIFIERS))

    def close(self) -> None:
        if self.reference_views is not None:
            self.reference_views.connection.close()

    def window(self, identifier: str) -> Any:
        from ._report_data import where
        from ._report_drift import Side

        return Side(self.views.connection, f"SELECT * FROM {identifier}{where(self.model, self.version)}")

    def reference_side(self, identifier: str) -> Any:
        """The reference's rows for ``identifier``, or None without a reference or without its rows."""
        from ._report_data import where
        from ._report_drift import Side
        from ._views import _text

        if self.reference is None:
            return None
        if self.reference.path is not None:
            reader = REFERENCE_SUFFIXES[os.path.splitext(self.reference.path)[1].lower()]
            return Side(self.views.connection, f"SELECT * FROM {reader}({_text(os.path.abspath(self.reference.path))})")
        if not self.reference_views.defined.get(identifier):
            return None
        return Side(self.reference_views.connection, f"SELECT * FROM {identifier}{where(self.model, None)}")

    def columns(self) -> list[tuple[str, str, str, Any, Any]]:
        """(identifier, column, kind, window side, reference side or None) for every feature and prediction."""
        from ._report_data import column_kind, features

        if self._columns is not None:
            return self._columns
        found = []
        for identifier in self.present:
            window = self.window(identifier)
            reference = self.reference_side(identifier)
            theirs = features(reference.connection, reference.sql) if reference is not None else {}
            for column, kind in features(window.connection, window.sql).items():
                compared = reference if column in theirs else None
                if reference is not None and compared is None:
                    self.notes.append(f"{identifier}.{column} is not in the reference: not compared")
                both_numeric = column_kind(kind) == "numeric" and (compared is None or column_kind(
                    theirs[column]) == "numeric")
                found.append((identifier, column, "numeric" if both_numeric else "categorical", window, compared))
        self._columns = found
        return found


def drift_table(comparison: Comparison, thresholds: Thresholds) -> list[Any]:
    """The drift rows of every compared column, by severity."""
    from ._report_drift import by_severity, categorical_drift, numeric_drift

    rows = []
    for identifier, column, kind, window, reference in comparison.columns():
        if reference is None:
            continue
        measure = numeric_drift if kind == "numeric" else categorical_drift
        rows.append(measure(column, identifier, window, reference, psi_threshold=thresholds.psi,
                            p_threshold=thresholds.p_value))
    return by_severity(rows)


def run_drift(
    store: str, *, since: datetime | None, until: datetime | None, reference: str, model: str | None = None,
    version: str | None = None, thresholds: Thresholds = Thresholds(), format: str = "text",
    out: IO[str] | None = None, err: IO[str] | None = None,
) -> int:
    """Print the drift table; 1 when a column is drifted, 0 when none is, 2 on a usage or store error."""
    out, err = out or sys.stdout, err or sys.stderr
    if message := missing_extra("drift", ("duckdb", "scipy")):
        print(message, file=err)
        return 2
    from ._views import StoreViews

    try:
        parsed = parse_reference(reference, datetime.now(timezone.utc))
        with StoreViews.open(store, since=since, until=until) as views:
            comparison = Comparison(views, parsed, store, model, version)
            try:
                rows = drift_table(comparison, thresholds)
            finally:
                comparison.close()
    except ConfigError as exc:
        print(f"obsml drift: {exc}", file=err)
        return 2
    except ObsmlError as exc:
        print(f"obsml drift: {scrub(str(exc))}", file=err)
        return 2
    except Exception as exc:  # DuckDB's and the filesystem's errors, in one line
        print(f"obsml drift: {scrub(describe_error(exc))}", file=err)
        return 2
    for line in comparison.notes:
        print(f"obsml drift: {line}", file=err)
    if not rows:
        print("obsml drift: no model data to compare in this window", file=err)
    if format == "json":
        for row in rows:
            print(json.dumps(row.as_json()), file=out)
    elif rows:
        _print_drift(rows, out)
    return 1 if any(row.drifted for row in rows) else 0


def _print_drift(rows: list[Any], out: IO[str]) -> None:
    lines = [("FEATURE", "KIND", "PSI", "TEST", "STATISTIC", "P-VALUE", "DRIFTED")]
    lines += [(f"{row.identifier}.{row.feature}", row.kind, _short(row.psi), row.test, _short(row.statistic),
               _short(row.p_value), "yes" if row.drifted else "no") for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip(), file=out)


def _short(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.4g}"


def run_report(
    store: str, *, since: datetime | None, until: datetime | None, output: str, reference: str | None = None,
    model: str | None = None, version: str | None = None, task: str | None = None,
    thresholds: Thresholds = Thresholds(), out: IO[str] | None = None, err: IO[str] | None = None,
) -> int:
    """Write the HTML report of the window to ``output``; 0 when written, 2 on a usage or store error."""
    out, err = out or sys.stdout, err or sys.stderr
    if message := missing_extra("report", ("duckdb", "scipy", "matplotlib")):
        print(message, file=err)
        return 2
    from ._report_sections import build_report
    from ._views import StoreViews

    now = datetime.now(timezone.utc)
    progress = Progress("obsml report", 6, err)
    try:
        parsed = parse_reference(reference, now) if reference else None
        with StoreViews.open(store, since=since, until=until) as views:
            document = build_report(views, store=store, reference=parsed, model=model, version=version, task=task,
                                    thresholds=thresholds, now=now, progress=progress)
    except ConfigError as exc:
        progress.close()
        print(f"obsml report: {exc}", file=err)
        return 2
    except ObsmlError as exc:
        progress.close()
        print(f"obsml report: {scrub(str(exc))}", file=err)
        return 2
    except Exception as exc:  # DuckDB's and the filesystem's errors, in one line
        progress.close()
        print(f"obsml report: {scrub(describe_error(exc))}", file=err)
        return 2
    progress.close()
    try:
        with open(output, "w", encoding="utf-8") as file:
            file.write(document)
    except OSError as exc:
        print(f"obsml report: cannot write {output}: {exc.strerror or exc}", file=err)
        return 2
    print(f"obsml report: wrote {output}", file=out)
    return 0
