"""Reading model data back: what ``obsml.Collector`` wrote, as pandas DataFrames, through DuckDB.

``read(store, model, identifier)`` is one identifier's rows (``inputs``, ``predictions``…) in a time
window; ``joined(store, model)`` is inputs ⋈ predictions ⋈ labels by ``correlation_id``. DuckDB and
pandas come with ``pip install 'obsml[query]'``; this module imports them only when called.

Rows come back in ``collected_at`` order (a UTC ``TIMESTAMPTZ``); ``correlation_id``, ``trace_id``,
``span_id`` and ``schema`` are text. Part files of every format (jsonl, csv, parquet) and every
schema are read together, columns unioned by name (a column a part lacks is null there). With
``version=None`` (``service=None``) every version (service) in the store is read, and the frame has
a ``version`` (``service``) column saying which.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from datetime import datetime, timezone
from types import ModuleType
from typing import Any

from ._query import moment, part_files, union_sql, window_sql
from ._reader import StoreReader
from ._views import connect, join_sql

__all__ = ["IDENTIFIERS", "joined", "read"]

#: The identifiers ``joined`` joins, in order: the first is the left side of both left joins.
IDENTIFIERS = ("inputs", "predictions", "labels")

DataFrame = Any  # a pandas.DataFrame: pandas ships no type information, and is not a dependency
When = datetime | str | None


def read(
    store: str, model: str, identifier: str, *, version: str | None = None, service: str | None = None,
    since: When = None, until: When = None,
) -> DataFrame:
    """The rows of one identifier collected in ``[since, until)``, oldest first.

    ``store`` is an ``OBSML_STORE`` value (a directory, ``file://``, ``memory://``, ``abfs://``…).
    ``since`` and ``until`` are datetimes (naive means UTC), ISO strings, or durations before now
    (``'7d'``, ``'12h'``, ``'15m'``); only the date folders of the window are listed. A window with
    no rows is an empty frame.
    """
    duckdb, pandas = _modules()
    with _Session(duckdb, store) as session:
        sql = session.sql(model, identifier, version=version, service=service, since=since, until=until)
        return pandas.DataFrame() if sql is None else session.connection.sql(sql).df()


def joined(
    store: str, model: str, *, since: When = None, version: str | None = None, service: str | None = None,
    identifiers: Sequence[str] = IDENTIFIERS,
) -> DataFrame:
    """Inputs ⋈ predictions ⋈ labels: every input row since ``since``, left-joined by
    ``correlation_id`` to its predictions and to its labels, collected at any time.

    The labels are read whatever their date, so a label collected days later still joins. A column
    name found in more than one identifier (``collected_at``, ``schema``, ``version``…) gets the
    identifier as a suffix (``collected_at_inputs``, ``collected_at_labels``); the others keep their
    names, and ``correlation_id`` appears once. An id with several rows in two identifiers joins each
    to each, as any join does.
    """
    duckdb, pandas = _modules()
    first, *others = identifiers
    with _Session(duckdb, store) as session:
        sources = [session.sql(model, first, version=version, service=service, since=since, until=None)]
        sources += [
            # Predictions come after their inputs, labels any time later: a window from `since` for the
            # first, none for the last (their date folders are not bounded by the inputs' window).
            session.sql(model, other, version=version, service=service, since=since if other != others[-1] else None)
            for other in others
        ]
        if sources[0] is None:
            return pandas.DataFrame()
        present = [(name, sql) for name, sql in zip(identifiers, sources, strict=True) if sql is not None]
        columns = {name: session.connection.sql(sql).columns for name, sql in present}
        return session.connection.sql(join_sql(present, columns, keys=("correlation_id",))).df()


class _Session:
    """One DuckDB connection over one store: fsspec stores other than local files registered in it."""

    def __init__(self, duckdb: ModuleType, store: str) -> None:
        self.reader = StoreReader.open(store)
        self.now = datetime.now(timezone.utc)
        self.connection = connect(duckdb, self.reader)

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.connection.close()

    def sql(
        self, model: str, identifier: str, *, version: str | None, service: str | None, since: When, until: When = None
    ) -> str | None:
        """The query of one identifier's rows in the window, or None when no part file is in it."""
        start, end = moment(since, self.now, "since"), moment(until, self.now, "until")
        files = part_files(
            self.reader, model, identifier, service=service, version=version, since=start, until=end
        )
        union = union_sql(files, with_service=service is None, with_version=version is None)
        if union is None:
            return None
        relation = self.connection.sql(union)
        return window_sql(union, dict(zip(relation.columns, map(str, relation.types), strict=True)), start, end)


def _modules() -> tuple[ModuleType, ModuleType]:
    try:
        return importlib.import_module("duckdb"), importlib.import_module("pandas")
    except ImportError as exc:
        missing = exc.name or "duckdb or pandas"
        raise ImportError(f"obsml.modeldata reads with DuckDB and pandas, and {missing} is missing: "
                          "pip install 'obsml[query]'") from None
