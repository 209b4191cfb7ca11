"""The sections of ``obsml report``, in order: health, dependencies and logs, model data, quality, drift.

Each section is (title, HTML); a section without its data (an empty window, no model data, no
labels, no reference) says so in a sentence rather than being left out or failing.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from ._progress import Progress
from ._report_compare import Comparison, Reference, Thresholds, drift_table
from ._report_data import (
    bucket_seconds,
    choose_columns,
    dependencies,
    distribution,
    error_logs,
    features,
    health_by_version,
    health_over_time,
    joined_column,
    materialize_spans,
    quality,
    schema_changes,
    top_exceptions,
    where,
)
from ._report_html import delay_plot, distribution_plot, lines_by_version, missing, note, page, table
from ._status_command import _dropped, _in, _latest, _read, _totals
from ._views import _quoted, join_sql

Section = tuple[str, str]


def build_report(
    views: Any, *, store: str, reference: Reference | None, model: str | None, version: str | None, task: str | None,
    thresholds: Thresholds, now: datetime, progress: Progress,
) -> str:
    """The whole HTML document of the report of ``views``' window."""
    from ._secrets import scrub

    until = views.until or now
    step = bucket_seconds(views.since or until - timedelta(days=365), until)
    sections: list[Section] = []
    progress.step("requests")
    window = (views.since or until - timedelta(days=365), until)
    sections.append(("Service health", _health(views, model, version, step, window)))
    progress.step("drops")
    sections.append(("Drops", _drops(views)))
    progress.step("dependencies and logs")
    sections.append(("Dependencies and error logs", _dependencies(views, model, version)))
    progress.step("model data")
    comparison = Comparison(views, reference, store, model, version)
    try:
        columns = comparison.columns() if comparison.present else []
        sections.append(("Model data", _model_data(views, comparison, columns)))
        progress.step("quality")
        sections.append(("Quality with labels", _quality(views, comparison, task, step, window)))
        progress.step("drift")
        sections.append(("Drift", _drift(comparison, thresholds)))
    finally:
        comparison.close()
    start = f"{views.since:%Y-%m-%d %H:%M} UTC" if views.since else "the start"
    subtitle = f"Store {scrub(views.reader.shown())}, {start} to {until:%Y-%m-%d %H:%M} UTC"
    subtitle += f"; model {comparison.model}" if comparison.model else ""
    subtitle += f", version {version}" if version else ""
    subtitle += f"; reference {reference.text}" if reference else "; no reference"
    return page("obsml report", subtitle, sections)


def _health(views: Any, model: str | None, version: str | None, step: int, window: tuple[datetime, datetime]) -> str:
    if not views.define(["spans"]):
        return missing("No request in this window: nothing was captured, or the window is wrong "
                            "(--since, --until).")
    if not materialize_spans(views.connection, where(model, version)):
        return missing("No request of this model and version in this window.")
    seconds = step * 1.0
    series: dict[str, list[tuple[Any, list[float | None]]]] = defaultdict(list)
    for moment, name, n, p50, p95, p99, failed in health_over_time(views.connection, step):
        series[name].append((moment, [n / seconds, p50, p95, p99, 100 * failed]))
    plot = lines_by_version(
        f"per {_step_name(step)}", sorted(series.items()),
        ["requests/s", "p50 ms", "p95 ms", "p99 ms", "failed %"], window,
    )
    summary = table(
        ["version", "requests", "p50 ms", "p95 ms", "p99 ms", "failed %", "request body p50 B", "p95 B",
         "response body p50 B", "p95 B", "request bodies offloaded %", "response bodies offloaded %"],
        [(v, n, p50, p95, p99, 100 * f, q50, q95, r50, r95, 100 * o1, 100 * o2)
         for v, n, p50, p95, p99, f, q50, q95, r50, r95, o1, o2 in health_by_version(views.connection)],
    )
    exceptions = top_exceptions(views.connection)
    raised = table(["exception", "example message", "requests", "example correlation id"], exceptions) \
        if exceptions else note("No exception in this window.")
    return f"{summary}{plot}<h3>Top exceptions</h3>{raised}"


def _drops(views: Any) -> str:
    statuses = [status for status in _latest(_read(views.reader, views.since, views.until))
                if _in(status, views.since, views.until)]
    if not statuses:
        return missing("No writer status in this window: obsml status has nothing to sum.")
    totals = _totals(status["stats"] for status in statuses)
    if not _dropped(totals):
        return note(f"Nothing dropped by the {len(statuses)} writer(s) alive in this window.")
    rows = [(reason, kind, n)
            for reason, kinds in sorted(totals["dropped"].items()) for kind, n in sorted(kinds.items())]
    return table(["reason", "kind", "dropped"], rows)


def _dependencies(views: Any, model: str | None, version: str | None) -> str:
    filters = where(model, version)
    present = views.define(["dependencies", "logs"])
    parts = ["<h3>Outbound calls</h3>"]
    calls = dependencies(views.connection, filters) if "dependencies" in present else []
    parts.append(table(["target", "calls", "failed share", "p50 ms", "p95 ms"], calls) if calls
                 else missing("No outbound call in this window (OBSML_DEPENDENCIES, README: "
                                   "\"Dependencies (outbound calls)\")."))
    parts.append("<h3>Most frequent error log messages</h3>")
    errors = error_logs(views.connection, filters) if "logs" in present else []
    parts.append(table(["message", "records", "severity", "example correlation id"], errors) if errors
                 else note("No log record at ERROR or above in this window."))
    return "".join(parts)


def _model_data(views: Any, comparison: Comparison, columns: list[tuple[str, str, str, Any, Any]]) -> str:
    if not comparison.present:
        return missing("No model data in this window: nothing was collected with obsml.Collector "
                            "(README: \"Model data (Collector)\"), or not in this window.")
    parts = [note(line) for line in comparison.notes]
    if comparison.reference is None:
        parts.append(note("No reference given (--reference): distributions of the window alone."))
    plots, rates = [], []
    for n, (identifier, column, kind, window, reference) in enumerate(columns):
        shown = distribution(column, kind, window, reference)
        rates.append((identifier, column, kind, shown.rows, 100 * shown.missing))
        if n < 40 and shown.labels:
            plots.append(distribution_plot(f"{identifier}.{column}", kind, shown.labels, shown.window,
                                                shown.reference))
    parts.append(table(["identifier", "column", "kind", "rows", "missing %"], rates))
    parts.append(f'<div class="grid">{"".join(plots)}</div>')
    sources = {identifier: comparison.window(identifier).sql for identifier in comparison.present}
    if comparison.has_labels:
        sources["labels"] = comparison.window("labels").sql
    schemas = schema_changes(views.connection, sources)
    by_identifier: dict[str, int] = defaultdict(int)
    for row in schemas:
        by_identifier[row[0]] += 1
    changed = [name for name, n in by_identifier.items() if n > 1]
    parts.append("<h3>Schema fingerprints</h3>")
    parts.append(note(("Schema changed in: " + ", ".join(sorted(changed))) if changed
                           else "One schema per identifier in this window: no change."))
    parts.append(table(["identifier", "schema", "first seen", "last seen", "rows"], schemas))
    return "".join(parts)


def _quality(views: Any, comparison: Comparison, task: str | None, step: int,
             window: tuple[datetime, datetime]) -> str:
    if "inputs" not in comparison.present or not comparison.has_labels:
        return missing("No labels in this window: collect them with obsml.Collector(model, \"labels\", ...) "
                            "under the correlation id of their inputs (README: \"Model data (Collector)\").")
    connection = views.connection
    # inputs ⋈ predictions ⋈ labels as the joined view pairs them, over the tables already read (the
    # labels of the window: a label collected after --until is not in it).
    present = [(name, comparison.window(name).sql) for name in [*comparison.present, "labels"]]
    columns = {name: connection.sql(sql).columns for name, sql in present}
    joined = join_sql(present, columns, keys=("correlation_id", "model"))
    joined_columns = connection.sql(joined).columns
    predictions = features(connection, present[1][1]) if "predictions" in comparison.present else {}
    labels = features(connection, present[-1][1])
    chosen = choose_columns(predictions, labels, task, joined_columns)
    if chosen is None:
        return missing("The labels have no column to score.")
    chosen_task, label, prediction, score = chosen
    version_column = joined_column(joined_columns, "version", "inputs")
    time_column = joined_column(joined_columns, "collected_at", "inputs")
    # The labelled rows, read once: every metric below reads them again.
    connection.execute(f"CREATE OR REPLACE TEMP TABLE report_labelled AS SELECT * FROM ({joined})"
                       f" WHERE {_quoted(label)} IS NOT NULL")
    notes = []
    if chosen_task == "classification" and prediction is not None and score is not None and not connection.execute(
        f"SELECT count(*) FROM report_labelled WHERE CAST({_quoted(prediction)} AS VARCHAR) IN"
        f" (SELECT DISTINCT CAST({_quoted(label)} AS VARCHAR) FROM report_labelled)"
    ).fetchone()[0]:
        # The prediction speaks another language than the label (approve/decline against True/False): the
        # score, at 0.5, says the predicted class instead.
        notes.append(note(f"{prediction} never takes a value of {label}: the predicted class is {score} >= 0.5"))
        prediction = None
    found = quality(connection, "SELECT * FROM report_labelled", chosen_task, label, prediction, score,
                         version_column, time_column, step)
    if not found.labelled:
        return missing("No labelled row in this window: labels have not arrived for these inputs yet.")
    names = ["accuracy", "precision", "recall", "roc_auc"] if chosen_task == "classification" else ["mae", "rmse"]
    parts = [note(f"{chosen_task}: label {label}, prediction {prediction or '-'}"
                       + (f", score {score}" if score else "") + f"; {found.labelled:,} labelled rows"), *notes]
    parts.append(table(["version", "rows", *names],
                            [("all", int(found.overall.get("rows") or 0), *(found.overall.get(m) for m in names))]
                            + [(v, int(m.get("rows") or 0), *(m.get(name) for name in names))
                               for v, m in found.by_version]))
    series: dict[str, list[tuple[Any, list[float | None]]]] = defaultdict(list)
    for moment, name, value in found.over_time:
        series[name].append((moment, [value]))
    parts.append(lines_by_version(f"per {_step_name(step)}", sorted(series.items()), [names[0]], window))
    if found.delays:
        parts.append("<h3>Label delay</h3>")
        parts.append(table(["p10", "p50", "p90", "max"],
                                [tuple(_duration(found.delays[i]) for i in (1, 5, 9, 10))]))
        parts.append(delay_plot(found.delays))
    return "".join(parts)


def _drift(comparison: Comparison, thresholds: Thresholds) -> str:
    if not comparison.present:
        return missing("No model data in this window: no drift to measure.")
    if comparison.reference is None:
        return missing("No reference: give --reference START..END (an earlier period) or a training-data "
                            "file (CSV, Parquet, JSONL) to measure drift against.")
    rows = drift_table(comparison, thresholds)
    if not rows:
        return missing(f"The reference {comparison.reference.text} has no rows or no column in common.")
    flagged = [row.drifted for row in rows]
    parts = [note(f"Flagged: PSI >= {thresholds.psi} or p-value < {thresholds.p_value}. "
                       f"{sum(flagged)} of {len(rows)} columns drifted.")]
    parts.append(table(
        ["column", "kind", "PSI", "test", "statistic", "p-value", "drifted", "window rows", "reference rows"],
        [(f"{row.identifier}.{row.feature}", row.kind, row.psi, row.test, row.statistic, row.p_value, row.drifted,
          row.window_rows, row.reference_rows) for row in rows],
        flagged,
    ))
    return "".join(parts)


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _step_name(step: int) -> str:
    return {60: "minute", 300: "5 minutes", 900: "15 minutes", 3600: "hour", 10800: "3 hours", 21600: "6 hours",
            86400: "day"}.get(step, f"{step} s")
