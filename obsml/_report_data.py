"""What ``obsml report`` shows, aggregated in DuckDB over the views of ``obsml._views`` (issue 19).

Every function here returns small Python values (a few hundred rows at most): counts, quantiles,
histograms and metrics are computed in SQL, so a week of spans and model data never comes into
Python whole. The sections are drawn by ``obsml._report_html``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from ._report_drift import Side, is_numeric
from ._views import _quoted, _text

#: Columns of a model-data view that are not features (``obsml._views.MODELDATA_COLUMNS``).
META = frozenset({"service", "model", "version", "correlation_id", "row", "trace_id", "span_id", "collected_at",
                  "schema"})
HISTOGRAM_BINS = 30
TOP_CATEGORIES = 15
TOP_ROWS = 10
_BUCKETS = (60, 300, 900, 3600, 3 * 3600, 6 * 3600, 86400)  # seconds: the first giving at most ~60 points
_FAILED = "(coalesce(error, false) OR coalesce(status_code, 0) >= 500)"


def bucket_seconds(since: datetime, until: datetime) -> int:
    """The time step of the over-time plots: the smallest of :data:`_BUCKETS` giving at most 60 points."""
    span = (until - since).total_seconds()
    return next((step for step in _BUCKETS if span / step <= 60), _BUCKETS[-1])


def where(model: str | None, version: str | None, *, version_column: str = "version") -> str:
    """A WHERE clause keeping one model and one version (either may be None: all)."""
    conditions = [f"model = {_text(model)}"] if model else []
    conditions += [f"{_quoted(version_column)} = {_text(version)}"] if version else []
    return " WHERE " + " AND ".join(conditions) if conditions else ""


# --- service health ---------------------------------------------------------------------------------------------

SPANS = "report_spans"


def materialize_spans(connection: Any, filters: str) -> int:
    """Read the window's requests once into a temporary table of the columns the report uses; returns its rows.

    The ``spans`` view parses every part file each time it is read: the sections' queries then read
    this table, not the JSON (a week of 1M spans: one read instead of one per query).
    """
    connection.execute(
        f"CREATE OR REPLACE TEMP TABLE {SPANS} AS SELECT start_time, duration_ms, version, status_code, error,"
        " exception_type, exception_message, correlation_id, request_body_size, response_body_size,"
        " request_body_uri IS NOT NULL AS request_offloaded, response_body_uri IS NOT NULL AS response_offloaded"
        f" FROM spans{filters}"
    )
    return int(connection.execute(f"SELECT count(*) FROM {SPANS}").fetchone()[0])


def health_over_time(connection: Any, step: int) -> list[tuple[Any, ...]]:
    """(time, version, requests, p50, p95, p99, failure rate) per time step and version."""
    return list(connection.execute(
        f"SELECT time_bucket(INTERVAL '{step} seconds', start_time) AS t, coalesce(version, '-') AS v, count(*),"
        " quantile_cont(duration_ms, 0.5), quantile_cont(duration_ms, 0.95), quantile_cont(duration_ms, 0.99),"
        f" avg(CASE WHEN {_FAILED} THEN 1.0 ELSE 0.0 END) FROM {SPANS} GROUP BY 1, 2 ORDER BY 1, 2"
    ).fetchall())


def health_by_version(connection: Any) -> list[tuple[Any, ...]]:
    """Per version: requests, p50, p95, p99, failure rate, median and p95 body sizes, offloaded-body shares."""
    return list(connection.execute(
        "SELECT coalesce(version, '-'), count(*), quantile_cont(duration_ms, 0.5), quantile_cont(duration_ms, 0.95),"
        f" quantile_cont(duration_ms, 0.99), avg(CASE WHEN {_FAILED} THEN 1.0 ELSE 0.0 END),"
        " quantile_cont(request_body_size, 0.5), quantile_cont(request_body_size, 0.95),"
        " quantile_cont(response_body_size, 0.5), quantile_cont(response_body_size, 0.95),"
        " avg(CASE WHEN request_offloaded THEN 1.0 ELSE 0.0 END),"
        " avg(CASE WHEN response_offloaded THEN 1.0 ELSE 0.0 END)"
        f" FROM {SPANS} GROUP BY 1 ORDER BY 1"
    ).fetchall())


def top_exceptions(connection: Any) -> list[tuple[Any, ...]]:
    """(exception type, an example message, count, an example correlation id), most frequent first."""
    return list(connection.execute(
        "SELECT exception_type, any_value(exception_message), count(*), any_value(correlation_id)"
        f" FROM {SPANS} WHERE exception_type IS NOT NULL GROUP BY 1 ORDER BY 3 DESC, 1 LIMIT {TOP_ROWS}"
    ).fetchall())


def dependencies(connection: Any, filters: str) -> list[tuple[Any, ...]]:
    """Per outbound target: calls, failure rate, p50 and p95 latency, most calls first."""
    return list(connection.execute(
        "SELECT coalesce(server_address || coalesce(':' || server_port, ''), name), count(*),"
        f" avg(CASE WHEN {_FAILED} THEN 1.0 ELSE 0.0 END), quantile_cont(duration_ms, 0.5),"
        f" quantile_cont(duration_ms, 0.95) FROM dependencies{filters} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20"
    ).fetchall())


def error_logs(connection: Any, filters: str) -> list[tuple[Any, ...]]:
    """(message, count, severity, an example correlation id) of log records at ERROR or above."""
    condition = (filters + " AND" if filters else " WHERE") + " coalesce(severity_number, 0) >= 17"
    return list(connection.execute(
        "SELECT left(message, 300), count(*), max(severity_text), any_value(correlation_id)"
        f" FROM logs{condition} GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {TOP_ROWS}"
    ).fetchall())


# --- model data -------------------------------------------------------------------------------------------------


def features(connection: Any, sql: str) -> dict[str, str]:
    """The feature columns of a model-data relation and their DuckDB types."""
    relation = connection.sql(sql)
    return {name: str(kind) for name, kind in zip(relation.columns, relation.types, strict=True) if name not in META}


def models(connection: Any, view: str) -> list[tuple[str, int]]:
    """(model, rows) of a model-data view, most rows first."""
    return [(str(name), int(n)) for name, n in connection.execute(
        f"SELECT model, count(*) FROM {_quoted(view)} GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()]


@dataclasses.dataclass
class Distribution:
    """One column's distribution in the window (and the reference): a histogram or the top categories."""

    column: str
    kind: str  # numeric or categorical
    labels: list[str]  # bin edges' starts (numeric) or category values
    window: list[int]
    reference: list[int] | None
    rows: int
    missing: float  # the share of null values in the window


def distribution(column: str, kind: str, window: Side, reference: Side | None) -> Distribution:
    quoted = _quoted(column)
    rows, missing = window.one(f"SELECT count(*), avg(CASE WHEN {quoted} IS NULL THEN 1.0 ELSE 0.0 END) FROM {{rows}}")
    sides = [window] if reference is None else [window, reference]
    if kind == "numeric":
        value = f"CAST({quoted} AS DOUBLE)"
        ranges = [side.one(f"SELECT min({value}), max({value}) FROM {{rows}}") for side in sides]
        lows = [low for low, _ in ranges if low is not None and math.isfinite(low)]
        highs = [high for _, high in ranges if high is not None and math.isfinite(high)]
        if not lows:
            return Distribution(column, kind, [], [], None if reference is None else [], rows, float(missing or 0))
        low, high = min(lows), max(highs)
        width = (high - low) / HISTOGRAM_BINS or 1.0
        bin_of = f"least(greatest(CAST(floor(({value} - {low!r}) / {width!r}) AS INTEGER), 0), {HISTOGRAM_BINS - 1})"
        counts = []
        for side in sides:
            found = dict(side.all(f"SELECT {bin_of}, count(*) FROM {{rows}} WHERE {value} IS NOT NULL GROUP BY 1"))
            counts.append([int(found.get(n, 0)) for n in range(HISTOGRAM_BINS)])
        labels = [f"{low + n * width:.6g}" for n in range(HISTOGRAM_BINS)]
    else:
        value = f"CAST({quoted} AS VARCHAR)"
        by_side = [dict(side.all(f"SELECT {value}, count(*) FROM {{rows}} WHERE {value} IS NOT NULL GROUP BY 1"))
                   for side in sides]
        totals: dict[str, int] = {}
        for side_counts in by_side:
            for category, n in side_counts.items():
                totals[category] = totals.get(category, 0) + int(n)
        labels = sorted(totals, key=lambda category: (-totals[category], category))[:TOP_CATEGORIES]
        counts = [[int(side_counts.get(category, 0)) for category in labels] for side_counts in by_side]
    return Distribution(column, kind, labels, counts[0], counts[1] if len(counts) > 1 else None, int(rows),
                        float(missing or 0))


def column_kind(duckdb_type: str) -> str:
    return "numeric" if is_numeric(duckdb_type) else "categorical"


def schema_changes(connection: Any, sources: dict[str, str]) -> list[tuple[Any, ...]]:
    """(identifier, schema fingerprint, first seen, last seen, rows) in time order, per identifier.

    ``sources`` is identifier -> the SQL of its rows in the window (each with ``schema`` and ``collected_at``).
    """
    union = " UNION ALL ".join(f"SELECT {_text(name)} AS identifier, CAST(schema AS VARCHAR) AS schema, collected_at"
                               f" FROM ({sql})" for name, sql in sources.items())
    return list(connection.execute(
        f"SELECT identifier, schema, min(collected_at), max(collected_at), count(*) FROM ({union})"
        " GROUP BY 1, 2 ORDER BY 1, 3"
    ).fetchall())


# --- quality with labels ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Quality:
    """Model quality on the joined rows that have a label (README: "Reports and drift")."""

    task: str  # classification or regression
    label: str  # the label column (as named in ``joined``)
    prediction: str | None  # the predicted class or value
    score: str | None  # a probability of the positive class, for ROC AUC
    positive: Any  # the positive class (binary classification), else None
    overall: dict[str, float | None]  # metric -> value over every labelled row
    by_version: list[tuple[str, dict[str, float | None]]]
    over_time: list[tuple[datetime, str, float | None]]  # (time, version, accuracy or MAE)
    delays: list[float]  # label delay quantiles in seconds: 0, 10, ..., 100 %
    labelled: int


def joined_column(columns: Sequence[str], name: str, identifier: str) -> str:
    """A column's name in ``joined``: suffixed with its identifier when another identifier has the same name."""
    suffixed = f"{name}_{identifier}"
    return suffixed if suffixed in columns else name


def choose_columns(predictions: dict[str, str], labels: dict[str, str], task: str | None,
                   columns: Sequence[str]) -> tuple[str, str, str | None, str | None] | None:
    """(task, label, prediction, score) columns of ``joined``, or None when there is no label column.

    The label is the first label column; the prediction the prediction column of the same name, else the first
    that is not a probability; the score the first floating-point prediction column (classification only).
    """
    if not labels:
        return None
    label_name, label_type = next(iter(labels.items()))
    if task is None:
        task = "regression" if label_type.upper() in ("FLOAT", "DOUBLE", "REAL") or label_type.startswith(
            "DECIMAL") else "classification"
    floats = [name for name, kind in predictions.items() if kind.upper() in ("FLOAT", "DOUBLE", "REAL")]
    if label_name in predictions:
        prediction: str | None = label_name
    else:
        others = [name for name in predictions if task == "regression" or name not in floats]
        prediction = others[0] if others else None
    score = next((name for name in floats if name != prediction), None) if task == "classification" else None
    if task == "regression" and prediction is None and predictions:
        prediction = next(iter(predictions))
    return (
        task, joined_column(columns, label_name, "labels"),
        None if prediction is None else joined_column(columns, prediction, "predictions"),
        None if score is None else joined_column(columns, score, "predictions"),
    )


def quality(connection: Any, rows: str, task: str, label: str, prediction: str | None, score: str | None,
            version: str, time: str, step: int) -> Quality:
    """Quality metrics of the labelled rows of ``rows`` (SQL over ``joined``), all computed in DuckDB."""
    y = _quoted(label)
    labelled = f"(SELECT * FROM ({rows}) WHERE {y} IS NOT NULL)"
    count = int(connection.execute(f"SELECT count(*) FROM {labelled}").fetchone()[0])
    group_version = f"coalesce(CAST({_quoted(version)} AS VARCHAR), '-')"
    positive = None
    if task == "classification":
        classes = [row[0] for row in connection.execute(f"SELECT DISTINCT {y} FROM {labelled} ORDER BY 1").fetchall()]
        positive = _positive(classes)

        def metrics(group: str) -> dict[str, dict[str, float | None]]:
            return _classification(connection, labelled, y, prediction, score, positive, group)
    else:
        def metrics(group: str) -> dict[str, dict[str, float | None]]:
            return _regression(connection, labelled, y, prediction, group)

    overall = metrics("'all'").get("all", {})
    by_version = sorted(metrics(group_version).items())
    headline = "accuracy" if task == "classification" else "mae"
    step_sql = f"time_bucket(INTERVAL '{step} seconds', {_quoted(time)})"
    over_time = []
    for group, values in metrics(f"CAST({step_sql} AS VARCHAR) || chr(31) || {group_version}").items():
        moment, _, version_name = group.partition("\x1f")
        over_time.append((datetime.fromisoformat(moment), version_name, values.get(headline)))
    over_time.sort(key=lambda point: (point[0], point[1]))
    delays = _delays(connection, labelled)
    return Quality(task, label, prediction, score, positive, overall, by_version, over_time, delays, count)


def _positive(classes: list[Any]) -> Any:
    """The positive class of a binary label (True, 1, or the second of two sorted values); None otherwise."""
    if len(classes) > 2:
        return None
    if True in classes or 1 in classes:
        return True if any(isinstance(value, bool) for value in classes) else 1
    return classes[-1] if len(classes) == 2 else None


def _classification(connection: Any, labelled: str, y: str, prediction: str | None, score: str | None,
                    positive: Any, group: str) -> dict[str, dict[str, float | None]]:
    found: dict[str, dict[str, float | None]] = {}
    if prediction is not None or score is not None:
        # The predicted class: the prediction column, cast to the label's type; else the score over 0.5.
        if prediction is not None:
            predicted = f"CAST({_quoted(prediction)} AS VARCHAR) = CAST({y} AS VARCHAR)"
            same = (f"CASE WHEN {predicted} OR (TRY_CAST({_quoted(prediction)} AS DOUBLE)"
                    f" = TRY_CAST({y} AS DOUBLE)) THEN 1.0 ELSE 0.0 END")
            predicted_positive = _is(prediction, positive)
        else:
            predicted_positive = f"({_quoted(score or '')} >= 0.5)"
            same = f"CASE WHEN {predicted_positive} = {_is_label(y, positive)} THEN 1.0 ELSE 0.0 END"
        for key, n, accuracy, tp, fp, fn in connection.execute(
            f"SELECT {group} AS g, count(*), avg({same}),"
            f" count(*) FILTER (WHERE {predicted_positive} AND {_is_label(y, positive)}),"
            f" count(*) FILTER (WHERE {predicted_positive} AND NOT {_is_label(y, positive)}),"
            f" count(*) FILTER (WHERE NOT {predicted_positive} AND {_is_label(y, positive)})"
            f" FROM {labelled} GROUP BY 1"
        ).fetchall():
            binary = positive is not None
            found[str(key)] = {
                "rows": float(n), "accuracy": _number(accuracy),
                "precision": (tp / (tp + fp) if tp + fp else 0.0) if binary else None,
                "recall": (tp / (tp + fn) if tp + fn else 0.0) if binary else None,
            }
    if score is not None and positive is not None:
        # ROC AUC as the Mann-Whitney statistic: the positives' mean rank, ties sharing their average rank.
        s = _quoted(score)
        is_positive = _is_label(y, positive)
        for key, auc in connection.execute(
            f"WITH ranked AS (SELECT {group} AS g, {is_positive} AS p,"
            f" rank() OVER (PARTITION BY {group} ORDER BY {s})"
            f" + (count(*) OVER (PARTITION BY {group}, {s}) - 1) / 2.0 AS r FROM {labelled} WHERE {s} IS NOT NULL)"
            " SELECT g, (sum(r) FILTER (WHERE p) - count(*) FILTER (WHERE p) * (count(*) FILTER (WHERE p) + 1) / 2.0)"
            " / nullif(count(*) FILTER (WHERE p) * count(*) FILTER (WHERE NOT p), 0) FROM ranked GROUP BY g"
        ).fetchall():
            found.setdefault(str(key), {})["roc_auc"] = _number(auc)
    return found


def _regression(connection: Any, labelled: str, y: str, prediction: str | None,
                group: str) -> dict[str, dict[str, float | None]]:
    if prediction is None:
        return {}
    error = f"(CAST({_quoted(prediction)} AS DOUBLE) - CAST({y} AS DOUBLE))"
    return {
        str(key): {"rows": float(n), "mae": _number(mae), "rmse": None if mse is None else math.sqrt(mse)}
        for key, n, mae, mse in connection.execute(
            f"SELECT {group}, count(*), avg(abs({error})), avg({error} * {error}) FROM {labelled}"
            f" WHERE {_quoted(prediction)} IS NOT NULL GROUP BY 1"
        ).fetchall()
    }


def _delays(connection: Any, labelled: str) -> list[float]:
    found = connection.execute(
        "SELECT quantile_cont(epoch(collected_at_labels) - epoch(collected_at_inputs),"
        f" {[n / 10 for n in range(11)]}) FROM {labelled}"
    ).fetchone()[0]
    return [float(value) for value in found or []]


def _is(column: str, positive: Any) -> str:
    return f"(CAST({_quoted(column)} AS VARCHAR) = {_text(_as_text(positive))}" + (
        f" OR TRY_CAST({_quoted(column)} AS DOUBLE) = 1.0)" if positive is True or positive == 1 else ")")


def _is_label(y: str, positive: Any) -> str:
    return f"coalesce(CAST({y} AS VARCHAR) = {_text(_as_text(positive))}, false)"


def _as_text(value: Any) -> str:
    return "true" if value is True else "false" if value is False else str(value)


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def window_length(since: datetime | None, until: datetime) -> timedelta:
    return until - since if since else timedelta(days=7)
