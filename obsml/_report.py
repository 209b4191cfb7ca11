"""``obsml report`` (a self-contained HTML report) and ``obsml drift`` (the drift table, a retraining gate).

Both read the store through ``obsml._views`` (issue 19): the window's views, and for
``--reference`` either the same views over an earlier period (``2026-11-01..2026-11-08``,
``14d..7d``) or a training-data file (CSV, Parquet, JSONL) that DuckDB reads in place. The
aggregation is ``obsml._report_data``'s and ``obsml._report_drift``'s, the page ``obsml._report_html``'s.
Heavy libraries (DuckDB, scipy, matplotlib) are imported only here, when a command runs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from datetime import datetime, timezone
from typing import IO, Any

from ._exceptions import ConfigError, ObsmlError
from ._objects import one_line_error
from ._report_compare import Comparison, Thresholds, drift_table, parse_reference
from ._secrets import scrub

DEFAULT_THRESHOLDS = Thresholds()  # PSI 0.2, p-value 0.01


def missing_extra(command: str, modules: tuple[str, ...]) -> str | None:
    """The one-line error naming the extra to install when one of ``modules`` is missing, else None."""
    for name in modules:
        if importlib.util.find_spec(name) is None:
            return f"obsml {command}: needs {name}: pip install 'obsml[report]'"
    return None


def run_drift(
    store: str, *, since: datetime | None, until: datetime | None, reference: str, model: str | None = None,
    version: str | None = None, thresholds: Thresholds = DEFAULT_THRESHOLDS, format: str = "text",
    out: IO[str] | None = None, err: IO[str] | None = None,
) -> int:
    """Print the drift table; 1 when a column is drifted, 0 when none is (or the window has no model data),
    2 on a usage or store error, or a reference without rows of the window's columns."""
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
        print(f"obsml drift: {one_line_error(exc)}", file=err)
        return 2
    for line in comparison.notes:
        print(f"obsml drift: {line}", file=err)
    if not rows and comparison.present:  # a gate against nothing is misconfigured, not passed
        print(f"obsml drift: the reference {reference} has no rows of the window's columns", file=err)
        return 2
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
    thresholds: Thresholds = DEFAULT_THRESHOLDS, out: IO[str] | None = None, err: IO[str] | None = None,
) -> int:
    """Write the HTML report of the window to ``output``; 0 when written, 2 on a usage or store error."""
    out, err = out or sys.stdout, err or sys.stderr
    if message := missing_extra("report", ("duckdb", "scipy", "matplotlib")):
        print(message, file=err)
        return 2
    from ._progress import Progress
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
        print(f"obsml report: {one_line_error(exc)}", file=err)
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
