"""What ``obsml report`` and ``obsml drift`` compare: the window's model data and the reference's (issue 19).

``--reference`` is an earlier period of the same store (``2026-11-01..2026-11-08``, ``14d..7d``), read
through its own ``obsml._views.StoreViews``, or a training-data file (CSV, Parquet, JSONL) that DuckDB
reads in place; the columns compared are those of ``inputs`` and ``predictions`` found on both sides.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime
from typing import Any

from ._exceptions import ConfigError

REFERENCE_SUFFIXES = {".csv": "read_csv", ".parquet": "read_parquet", ".jsonl": "read_json", ".json": "read_json",
                      ".ndjson": "read_json"}
IDENTIFIERS = ("inputs", "predictions")  # whose columns are compared: the features and the predictions


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


class Comparison:
    """The window's model data and the reference's, per identifier, for one model (``--model`` or the busiest)."""

    def __init__(self, views: Any, reference: Reference | None, store: str, model: str | None,
                 version: str | None) -> None:
        from ._report_data import models
        from ._views import StoreViews

        self.views, self.reference, self.notes = views, reference, []
        present = views.define(["inputs", "predictions", "labels"])
        self.present = [identifier for identifier in IDENTIFIERS if identifier in present]
        self.has_labels = "labels" in present
        self.version = version
        self._tables: dict[str, str] = {}
        found = models(views.connection, self._window_table(self.present[0])) if self.present else []
        self.model = model
        if model is None and found:
            self.model = found[0][0]
            if len(found) > 1:
                self.notes.append(f"{len(found)} models in this window; this report shows {self.model!r} (the most "
                                  "rows): give --model for another")
        self.reference_views: Any = None
        self._columns: list[tuple[str, str, str, Any, Any]] | None = None
        if reference is not None and reference.path is None:
            self.reference_views = StoreViews.open(store, since=reference.since, until=reference.until)
            self.reference_views.define(list(IDENTIFIERS))

    def close(self) -> None:
        if self.reference_views is not None:
            self.reference_views.connection.close()

    def window(self, identifier: str) -> Any:
        """The window's rows of ``identifier`` (``labels`` too), of the model and version shown."""
        from ._report_data import where
        from ._report_drift import Side

        return Side(self.views.connection, f"SELECT * FROM {self._window_table(identifier)}{where(self.model, None)}")

    def _window_table(self, identifier: str) -> str:
        from ._report_data import where

        return self._table(self.views.connection, f"window_{identifier}",
                           f"SELECT * FROM {identifier}{where(None, self.version)}")

    def reference_side(self, identifier: str) -> Any:
        """The reference's rows for ``identifier``, or None without a reference or without its rows."""
        from ._report_data import where
        from ._report_drift import Side
        from ._views import _text

        if self.reference is None:
            return None
        if self.reference.path is not None:
            reader = REFERENCE_SUFFIXES[os.path.splitext(self.reference.path)[1].lower()]
            table = self._table(self.views.connection, "reference_file",
                                f"SELECT * FROM {reader}({_text(os.path.abspath(self.reference.path))})")
            return Side(self.views.connection, f"SELECT * FROM {table}")
        if not self.reference_views.defined.get(identifier):
            return None
        table = self._table(self.reference_views.connection, f"reference_{identifier}",
                            f"SELECT * FROM {identifier}{where(self.model, None)}")
        return Side(self.reference_views.connection, f"SELECT * FROM {table}")

    def _table(self, connection: Any, name: str, sql: str) -> str:
        """``sql`` read once into a temporary table: a model-data view parses every part file (and infers its
        schema again) each time it is read or bound, and each statistic reads its side again."""
        if name not in self._tables:
            connection.execute(f"CREATE OR REPLACE TEMP TABLE report_{name} AS {sql}")
            self._tables[name] = f"report_{name}"
        return self._tables[name]

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
