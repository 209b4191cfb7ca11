"""The drift table of ``obsml report`` and ``obsml drift`` (issue 19): window against reference, per column.

Each side is one SQL relation (a model-data view of the window, of a reference period, or a
reference file read by DuckDB); every count is taken in DuckDB, so a week of rows never comes into
Python whole:

- a numeric column: the reference's deciles (``quantile_cont``) are the bins of the population
  stability index, each side counted per bin in SQL; the Kolmogorov-Smirnov test
  (``scipy.stats.ks_2samp``) runs on a reservoir sample of at most :data:`KS_SAMPLE` values a side;
- a categorical column (text, booleans): counts per value in SQL, the PSI over the values of both
  sides, and the chi-square test of the 2 by K table (``scipy.stats.chi2_contingency``).

A column is drifted when its PSI reaches ``psi_threshold`` or its test's p-value falls below
``p_threshold``; rows are sorted by severity (drifted first, then by PSI).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from ._views import _quoted

KS_SAMPLE = 20_000  # values a side for the KS test: a bounded sample, and a test that does not flag noise
PSI_BINS = 10  # deciles of the reference
EPSILON = 1e-4  # a share of 0 in one side would make the PSI infinite: a bin never seen counts as this
NUMERIC = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
           "FLOAT", "DOUBLE", "REAL", "DECIMAL")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Drift:
    """One column's drift: the JSON object of ``obsml drift --format json`` (README: "Reports and drift")."""

    feature: str
    identifier: str  # inputs, predictions...: where the column was found
    kind: str  # numeric or categorical
    psi: float
    test: str  # ks or chi2
    statistic: float
    p_value: float
    drifted: bool
    window_rows: int
    reference_rows: int

    def as_json(self) -> dict[str, Any]:
        return {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
                for key, value in dataclasses.asdict(self).items()}


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of a comparison: a DuckDB connection and the SQL of its rows."""

    connection: Any
    sql: str

    def one(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        return self.connection.execute(sql.replace("{rows}", f"({self.sql})"), list(parameters)).fetchone()

    def all(self, sql: str, parameters: Sequence[Any] = ()) -> list[Any]:
        return list(self.connection.execute(sql.replace("{rows}", f"({self.sql})"), list(parameters)).fetchall())


def is_numeric(duckdb_type: str) -> bool:
    return duckdb_type.upper().startswith(NUMERIC)


def psi(reference: Sequence[float], window: Sequence[float]) -> float:
    """The population stability index of two lists of counts over the same bins."""
    total_ref, total_win = sum(reference), sum(window)
    if not total_ref or not total_win:
        return math.nan
    value = 0.0
    for ref, win in zip(reference, window, strict=True):
        expected, actual = max(ref / total_ref, EPSILON), max(win / total_win, EPSILON)
        value += (actual - expected) * math.log(actual / expected)
    return value


def numeric_drift(column: str, identifier: str, window: Side, reference: Side, *, psi_threshold: float,
                  p_threshold: float) -> Drift:
    from scipy import stats

    quoted = _quoted(column)
    value = f"CAST({quoted} AS DOUBLE)"
    quantiles = [n / PSI_BINS for n in range(1, PSI_BINS)]
    edges_row = reference.one(f"SELECT quantile_cont({value}, {quantiles}) FROM {{rows}} WHERE {quoted} IS NOT NULL")
    edges = sorted(set(edges_row[0] or []))
    bucket = bin_sql(value, edges)
    counts = []
    for side in (reference, window):
        found = dict(side.all(f"SELECT {bucket}, count(*) FROM {{rows}} WHERE {quoted} IS NOT NULL GROUP BY 1"))
        counts.append([found.get(n, 0) for n in range(len(edges) + 1)])
    samples = [
        [row[0] for row in side.all(
            f"SELECT {value} FROM {{rows}} WHERE {quoted} IS NOT NULL USING SAMPLE reservoir({KS_SAMPLE} ROWS)"
            " REPEATABLE (19)")]
        for side in (reference, window)
    ]
    if samples[0] and samples[1]:
        result = stats.ks_2samp(samples[0], samples[1])
        statistic, p_value = float(result.statistic), float(result.pvalue)
    else:
        statistic, p_value = math.nan, math.nan
    return _drift(column, identifier, "numeric", psi(*counts), "ks", statistic, p_value, counts,
                  psi_threshold, p_threshold)


def bin_sql(value: str, edges: Sequence[float]) -> str:
    """SQL numbering the bin of ``value``: 0 up to the first edge (included), n above the last."""
    if not edges:
        return "0"
    cases = " ".join(f"WHEN {value} <= {float(edge)!r} THEN {n}" for n, edge in enumerate(edges))
    return f"CASE {cases} ELSE {len(edges)} END"


def categorical_drift(column: str, identifier: str, window: Side, reference: Side, *, psi_threshold: float,
                      p_threshold: float) -> Drift:
    from scipy import stats

    value = f"CAST({_quoted(column)} AS VARCHAR)"
    found = [dict(side.all(f"SELECT {value}, count(*) FROM {{rows}} WHERE {value} IS NOT NULL GROUP BY 1"))
             for side in (reference, window)]
    categories = sorted(set(found[0]) | set(found[1]))
    counts = [[side.get(category, 0) for category in categories] for side in found]
    statistic, p_value = math.nan, math.nan
    if sum(counts[0]) and sum(counts[1]) and len(categories) > 1:
        result = stats.chi2_contingency(counts)
        statistic, p_value = float(result.statistic), float(result.pvalue)
    elif sum(counts[0]) and sum(counts[1]):  # one value on both sides: nothing moved
        statistic, p_value = 0.0, 1.0
    return _drift(column, identifier, "categorical", psi(*counts), "chi2", statistic, p_value, counts,
                  psi_threshold, p_threshold)


def _drift(column: str, identifier: str, kind: str, index: float, test: str, statistic: float, p_value: float,
           counts: list[list[int]], psi_threshold: float, p_threshold: float) -> Drift:
    drifted = (math.isfinite(index) and index >= psi_threshold) or (math.isfinite(p_value) and p_value < p_threshold)
    return Drift(column, identifier, kind, index, test, statistic, p_value, bool(drifted), sum(counts[1]),
                 sum(counts[0]))


def by_severity(rows: Sequence[Drift]) -> list[Drift]:
    """Drifted first, then the largest PSI, then the smallest p-value."""
    def key(row: Drift) -> tuple[bool, float, float]:
        index = row.psi if math.isfinite(row.psi) else -1.0
        p_value = row.p_value if math.isfinite(row.p_value) else 2.0
        return (not row.drifted, -index, p_value)

    return sorted(rows, key=key)
