"""DuckDB views over one store and one time window: what ``obsml query`` (and ``obsml logs``) read.

::

    with StoreViews.open(store, since=since, until=until) as views:   # DuckDB imported here
        if not views.define(["spans"]):                                # which of them hold data
            ...  # "no data in this window"
        rows = views.connection.sql("SELECT status_code, count(*) FROM spans GROUP BY 1").fetchall()

The views (README: "Reading the store"):

- ``spans``: one row per request (a SERVER span: a line without ``kind`` is one), the columns of
  :data:`SPAN_COLUMNS`, read from the hour folders of the window only (``obsml._query.span_files``)
  with a declared schema, so a key that first appears late, or changes type, breaks nothing.
- ``dependencies``: one row per outbound call (a CLIENT span beside the requests, issue 18), the
  columns of :data:`DEPENDENCY_COLUMNS`, with its request's correlation id, service, model, version
  and route joined by trace id and parent span id from the requests of the same window.
- ``logs``: one row per log record of ``logs/<yyyy>/<mm>/<dd>/<hh>/`` (issue 18), the columns of
  :data:`LOG_COLUMNS`, declared likewise.
- one view per model-data identifier (``inputs``, ``predictions``, ``labels``…): its real columns,
  every model, version and service unioned by name, plus ``service``, ``model`` and ``version``;
- ``modeldata``: every identifier's rows, the features as one JSON column;
- ``joined``: inputs ⋈ predictions ⋈ labels by model and correlation id, as :func:`obsml.modeldata.joined`.

A view is defined only when asked for (:meth:`StoreViews.define`, or :meth:`StoreViews.define_for`
with the names an SQL text reads): model data has no declared schema, and DuckDB reads every file of
an identifier to learn its columns. A view asked for that has no file in the window is empty, with
its columns where they are known.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from types import ModuleType
from typing import Any

from ._compacted import PARQUET
from ._query import _openable, identifiers, log_files, part_files, span_files, union_sql, window_sql
from ._reader import StoreReader

__all__ = [
    "DEPENDENCY_COLUMNS", "LOG_COLUMNS", "MODELDATA_COLUMNS", "SPAN_COLUMNS", "StoreViews", "join_sql", "load_duckdb",
]

#: The ``spans`` view: (column, DuckDB type, where it comes from in the span's JSON line).
SPAN_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("start_time", "TIMESTAMPTZ", "start_time"),
    ("end_time", "TIMESTAMPTZ", "end_time"),
    ("duration_ms", "DOUBLE", "duration_ms"),
    ("trace_id", "VARCHAR", "trace_id"),
    ("span_id", "VARCHAR", "span_id"),
    ("parent_span_id", "VARCHAR", "parent_span_id"),
    ("name", "VARCHAR", "name"),
    ("kind", "VARCHAR", "kind: SERVER only (a line without one, written before issue 18, counts as SERVER)"),
    ("service", "VARCHAR", "obsml.service"),
    ("model", "VARCHAR", "obsml.model.name"),
    ("version", "VARCHAR", "obsml.model.version"),
    ("method", "VARCHAR", "http.request.method"),
    ("route", "VARCHAR", "http.route"),
    ("path", "VARCHAR", "url.path"),
    ("status_code", "INTEGER", "http.response.status_code"),
    ("error", "BOOLEAN", "status.code = 'ERROR'"),
    ("correlation_id", "VARCHAR", "obsml.correlation_id"),
    ("exception_type", "VARCHAR", "exception.type of the first exception event"),
    ("exception_message", "VARCHAR", "exception.message of the first exception event"),
    ("request_body", "VARCHAR", "obsml.request.body"),
    ("request_body_uri", "VARCHAR", "obsml.request.body.uri"),
    ("request_body_size", "BIGINT", "obsml.request.body.size"),
    ("response_body", "VARCHAR", "obsml.response.body"),
    ("response_body_uri", "VARCHAR", "obsml.response.body.uri"),
    ("response_body_size", "BIGINT", "obsml.response.body.size"),
    ("client_address", "VARCHAR", "client.address"),
    ("writer", "VARCHAR", "the part file's <pid>-<random>"),
    ("attributes", "JSON", "attributes (all of them)"),
    ("events", "JSON", "events"),
    ("resource", "JSON", "resource"),
)
#: The ``dependencies`` view: (column, DuckDB type, where it comes from). ``request.`` columns are the
#: request span's (trace_id and span_id = parent_span_id); the call's own attributes give all but
#: the route when the request is not in the window.
DEPENDENCY_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("start_time", "TIMESTAMPTZ", "start_time"),
    ("end_time", "TIMESTAMPTZ", "end_time"),
    ("duration_ms", "DOUBLE", "duration_ms"),
    ("trace_id", "VARCHAR", "trace_id"),
    ("span_id", "VARCHAR", "span_id"),
    ("parent_span_id", "VARCHAR", "parent_span_id"),
    ("name", "VARCHAR", "name"),
    ("method", "VARCHAR", "http.request.method"),
    ("url", "VARCHAR", "url.full"),
    ("server_address", "VARCHAR", "server.address"),
    ("server_port", "INTEGER", "server.port"),
    ("status_code", "INTEGER", "http.response.status_code"),
    ("error", "BOOLEAN", "status.code = 'ERROR'"),
    ("error_type", "VARCHAR", "error.type"),
    ("exception_type", "VARCHAR", "exception.type of the first exception event"),
    ("exception_message", "VARCHAR", "exception.message of the first exception event"),
    ("correlation_id", "VARCHAR", "request.correlation_id"),
    ("service", "VARCHAR", "request.service"),
    ("model", "VARCHAR", "request.model"),
    ("version", "VARCHAR", "request.version"),
    ("route", "VARCHAR", "request.route"),
    ("writer", "VARCHAR", "the part file's <pid>-<random>"),
    ("attributes", "JSON", "attributes (all of them)"),
)
#: The ``logs`` view: (column, DuckDB type, where it comes from in the log record's JSON line).
LOG_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("time", "TIMESTAMPTZ", "time"),
    ("trace_id", "VARCHAR", "trace_id"),
    ("span_id", "VARCHAR", "span_id"),
    ("correlation_id", "VARCHAR", "obsml.correlation_id"),
    ("service", "VARCHAR", "obsml.service"),
    ("model", "VARCHAR", "obsml.model.name"),
    ("version", "VARCHAR", "obsml.model.version"),
    ("severity_text", "VARCHAR", "severity_text"),
    ("severity_number", "INTEGER", "severity_number"),
    ("logger", "VARCHAR", "logger"),
    ("message", "VARCHAR", "body as text (a structured body as its JSON text)"),
    ("body", "JSON", "body"),
    ("exception_type", "VARCHAR", "exception.type"),
    ("exception_message", "VARCHAR", "exception.message"),
    ("exception_stacktrace", "VARCHAR", "exception.stacktrace"),
    ("attributes", "JSON", "attributes (all of them)"),
    ("writer", "VARCHAR", "the part file's <pid>-<random>"),
)
#: Columns every model-data view has (``modeldata`` adds ``identifier`` and ``features``).
MODELDATA_COLUMNS: tuple[tuple[str, str], ...] = (
    ("service", "VARCHAR"), ("model", "VARCHAR"), ("version", "VARCHAR"), ("correlation_id", "VARCHAR"),
    ("row", "BIGINT"), ("trace_id", "VARCHAR"), ("span_id", "VARCHAR"), ("collected_at", "TIMESTAMPTZ"),
    ("schema", "VARCHAR"),
)  # fmt: skip
#: The identifiers ``joined`` joins, in order: the first is the left side of both left joins.
JOINED = ("inputs", "predictions", "labels")
FIXED_VIEWS = ("spans", "dependencies", "logs", "modeldata", "joined")

# Every top-level key of a span line is declared: DuckDB reads a file whose lines hold an undeclared
# key many times slower (measured: 45x), and a declared schema never depends on which file came first.
_SPAN_LINE = {
    "name": "VARCHAR", "trace_id": "VARCHAR", "span_id": "VARCHAR", "parent_span_id": "VARCHAR",
    "kind": "VARCHAR", "start_time": "TIMESTAMPTZ", "end_time": "TIMESTAMPTZ", "duration_ms": "DOUBLE",
    "status": "STRUCT(code VARCHAR, description VARCHAR)", "attributes": "JSON", "events": "JSON",
    "resource": "JSON", "dropped_attributes": "BIGINT",
}  # fmt: skip
_LOG_LINE = {
    "time": "TIMESTAMPTZ", "observed_time": "TIMESTAMPTZ", "trace_id": "VARCHAR", "span_id": "VARCHAR",
    "severity_text": "VARCHAR", "severity_number": "INTEGER", "logger": "VARCHAR", "body": "JSON",
    "attributes": "JSON", "resource": "JSON",
}  # fmt: skip
_ATTRIBUTE_PREFIXES = ("obsml.", "http.", "url.", "client.", "server.", "error.", "exception.")
# Obsml's request spans have always been SERVER spans; lines written before issue 18 may lack the key.
_IS_REQUEST = "coalesce(kind, 'SERVER') = 'SERVER'"
# The first exception event (README: several are possible; the first is the one that failed the request).
_EXCEPTION = "list_filter(json_extract(events, '$[*]'), lambda e: e->>'name' = 'exception')[1]"
_DERIVED = {
    "error": "coalesce(status.code = 'ERROR', false)",
    "exception_type": f"json_extract_string({_EXCEPTION}, '$.attributes.\"exception.type\"')",
    "exception_message": f"json_extract_string({_EXCEPTION}, '$.attributes.\"exception.message\"')",
    # A compacted parquet keeps each row's part file (obsml._compact), so the writer survives compaction.
    "writer": r"regexp_extract(filename, '([^/]+)-[0-9]+\.jsonl$', 1)",
    "kind": "coalesce(kind, 'SERVER')",
}
_LOG_DERIVED = {
    # A string body is the message itself; a structured one (a printed JSON line) its JSON text.
    "message": "CASE json_type(body) WHEN 'VARCHAR' THEN json_extract_string(body, '$') WHEN 'NULL' THEN NULL"
               " ELSE CAST(body AS VARCHAR) END",
    "writer": _DERIVED["writer"],
}


def load_duckdb() -> ModuleType:
    """The ``duckdb`` module, or an ImportError naming the install that brings it."""
    try:
        return importlib.import_module("duckdb")
    except ImportError:
        raise ImportError("reading the store needs DuckDB: pip install 'obsml[query]'") from None


def connect(duckdb: ModuleType, reader: StoreReader) -> Any:
    """A new DuckDB connection that can open ``reader``'s files (fsspec stores other than local registered)."""
    connection = duckdb.connect()
    connection.execute("SET TimeZone = 'UTC'")  # TIMESTAMPTZ comes back as UTC, not local time
    connection.execute("SET enable_progress_bar = false")  # it would draw on the terminal over the output
    protocols = (reader.fs.protocol,) if isinstance(reader.fs.protocol, str) else reader.fs.protocol
    if "file" not in protocols:
        connection.register_filesystem(reader.fs)
    return connection


class StoreViews:
    """One DuckDB connection over one store, with views over ``[since, until)`` defined on demand."""

    def __init__(self, reader: StoreReader, connection: Any, since: datetime | None, until: datetime | None) -> None:
        self.reader = reader
        self.connection = connection
        self.since = since
        self.until = until
        self.defined: dict[str, bool] = {}  # view name -> whether it has data in the window
        self._identifiers: list[str] | None = None

    @classmethod
    def open(
        cls, store: str, *, since: datetime | None = None, until: datetime | None = None, must_exist: bool = True
    ) -> StoreViews:
        """Views over the store at ``store`` (an ``OBSML_STORE`` value), rows with a time in ``[since, until)``.

        Raises ImportError without DuckDB, ``obsml.ConfigError`` for a store that cannot be read, or
        with ``must_exist``, that is not there (a mistyped ``--store`` is not an empty store; one
        followed as it comes may not be made yet).
        """
        duckdb = load_duckdb()
        reader = StoreReader.open_existing(store) if must_exist else StoreReader.open(store)
        return cls(reader, connect(duckdb, reader), since, until)

    def __enter__(self) -> StoreViews:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.connection.close()

    @property
    def identifiers(self) -> list[str]:
        """The model-data identifiers with a view: those in the store, and always inputs, predictions, labels."""
        if self._identifiers is None:
            found = {*identifiers(self.reader), *JOINED} - set(FIXED_VIEWS)
            self._identifiers = sorted(found)
        return self._identifiers

    def define_for(self, sql: str) -> list[str]:
        """Define the views ``sql`` reads; returns those of them that hold data in the window.

        Raises DuckDB's ParserException when ``sql`` does not parse.
        """
        duckdb = load_duckdb()
        try:
            names = self.connection.get_table_names(sql)  # the module's own would start a second database
        except duckdb.ParserException:
            raise
        except duckdb.Error:  # it can fail to bind what the query does: then every view, and DuckDB says what
            names = {*FIXED_VIEWS, *self.identifiers}
        wanted = [name for name in sorted(names) if name in FIXED_VIEWS or name in self.identifiers]
        return self.define(wanted)

    def define(self, names: Iterable[str]) -> list[str]:
        """Define the views ``names`` (unknown names are ignored); returns those that hold data in the window."""
        names = list(names)
        for name in names:
            if name in self.defined:
                continue
            if name == "spans":
                sql = self._spans_sql()
                self._create(name, sql or _empty([(column, kind) for column, kind, _ in SPAN_COLUMNS]), sql)
            elif name == "dependencies":
                sql = self._dependencies_sql()
                self._create(name, sql or _empty([(column, kind) for column, kind, _ in DEPENDENCY_COLUMNS]), sql)
            elif name == "logs":
                sql = self._logs_sql()
                self._create(name, sql or _empty([(column, kind) for column, kind, _ in LOG_COLUMNS]), sql)
            elif name == "modeldata":
                self._create(name, *self._modeldata_sql())
            elif name == "joined":
                self._create(name, *self._joined_sql())
            elif name in self.identifiers:
                sql = self._identifier_sql(name, self.since, self.until)
                self._create(name, sql or _empty(MODELDATA_COLUMNS), sql)
        return [name for name in names if self.defined.get(name)]

    def define_spans(self, files: Sequence[str]) -> None:
        """(Re)define ``spans`` over ``files`` (part files, relative to the store) instead of the window's
        hour folders, still keeping the window's rows: ``obsml logs`` reads a few hours at a time, newest
        first, and ``obsml tail`` only the part files that are new."""
        sql = self._spans_sql([_openable(self.reader, path) for path in files])
        self._create("spans", sql or _empty([(column, kind) for column, kind, _ in SPAN_COLUMNS]), sql)

    def _create(self, name: str, sql: str, data: str | None) -> None:
        self.connection.execute(f"CREATE OR REPLACE TEMP VIEW {_quoted(name)} AS {sql}")
        self.defined[name] = data is not None

    def _spans_sql(self, files: list[str] | None = None) -> str | None:
        files = span_files(self.reader, self.since, self.until) if files is None else files
        if not files:
            return None
        columns = [_column(name, kind, key, _DERIVED) for name, kind, key in SPAN_COLUMNS]
        # Each attribute column is its own json_extract, computed only when a query uses it: cheaper than
        # one json_transform of them all (measured) for the few columns a query reads. Likewise the
        # exception, kept out of a subquery, where DuckDB would compute it for every row whatever is read.
        return f"SELECT {', '.join(columns)} FROM {_read(files, _SPAN_LINE)} WHERE {_IS_REQUEST}{self._within()}"

    def _dependencies_sql(self) -> str | None:
        files = span_files(self.reader, self.since, self.until)
        if not files:
            return None
        source, within = _read(files, _SPAN_LINE), self._within()
        own = [(name, kind, key) for name, kind, key in DEPENDENCY_COLUMNS if not key.startswith("request.")]
        # The request's columns, from the request spans of the same window. A call carries the
        # correlation id, service, model and version itself (obsml puts them on its CLIENT spans), so
        # only the route is NULL for a call whose request is outside the window.
        joined = [name for name, _, key in DEPENDENCY_COLUMNS if key.startswith("request.")]
        carried = [(name, kind, key) for name, kind, key in SPAN_COLUMNS if name in joined and name != "route"]
        calls = ", ".join(_column(name, kind, key, _DERIVED) for name, kind, key in [*own, *carried])
        from_request = ", ".join(
            _column(name, kind, key, _DERIVED) for name, kind, key in SPAN_COLUMNS if name in joined
        )
        carried_names = {name for name, _, _ in carried}

        def pick(name: str) -> str:
            quoted = _quoted(name)
            if name in carried_names:
                return f"coalesce(c.{quoted}, r.{quoted}) AS {quoted}"
            return f"{'r' if name in joined else 'c'}.{quoted}"

        selected = ", ".join(pick(name) for name, _, _ in DEPENDENCY_COLUMNS)
        return (
            f"SELECT {selected} FROM (SELECT {calls} FROM {source} WHERE kind = 'CLIENT'{within}) AS c"
            f" LEFT JOIN (SELECT trace_id, span_id, {from_request} FROM {source} WHERE {_IS_REQUEST}{within}) AS r"
            " ON r.trace_id = c.trace_id AND r.span_id = c.parent_span_id"
        )

    def _logs_sql(self) -> str | None:
        files = log_files(self.reader, self.since, self.until)
        if not files:
            return None
        columns = ", ".join(_column(name, kind, key, _LOG_DERIVED) for name, kind, key in LOG_COLUMNS)
        return f"SELECT {columns} FROM {_read(files, _LOG_LINE)}" + self._within("time", " WHERE ")

    def _within(self, column: str = "start_time", first: str = " AND ") -> str:
        """The window as SQL conditions on ``column``, after ``first``; empty without a window."""
        where = [f"{column} >= {_instant(self.since)}"] if self.since else []
        where += [f"{column} < {_instant(self.until)}"] if self.until else []
        return first + " AND ".join(where) if where else ""

    def _identifier_sql(self, identifier: str, since: datetime | None, until: datetime | None) -> str | None:
        files = part_files(self.reader, None, identifier, service=None, version=None, since=since, until=until)
        union = union_sql(files, with_service=True, with_version=True, with_model=True)
        if union is None:
            return None
        relation = self.connection.sql(union)
        return window_sql(union, dict(zip(relation.columns, map(str, relation.types), strict=True)), since, until)

    def _modeldata_sql(self) -> tuple[str, str | None]:
        meta = [name for name, _ in MODELDATA_COLUMNS]
        selects = []
        for identifier in self.identifiers:
            sql = self._identifier_sql(identifier, self.since, self.until)
            if sql is None:
                continue
            columns = self.connection.sql(sql).columns
            pairs = ", ".join(f"{_text(c)}: {_quoted(c)}" for c in columns if c not in meta)
            features = "{" + pairs + "}" if pairs else "'{}'::JSON"
            selected = [_quoted(c) if c in columns else f"CAST(NULL AS {kind}) AS {c}" for c, kind in MODELDATA_COLUMNS]
            selects.append(f"SELECT {', '.join(selected[:3])}, {_text(identifier)} AS identifier, "
                           f"{', '.join(selected[3:])}, to_json({features}) AS features FROM ({sql})")
        empty = _empty([*MODELDATA_COLUMNS[:3], ("identifier", "VARCHAR"), *MODELDATA_COLUMNS[3:],
                        ("features", "JSON")])
        union = " UNION ALL BY NAME ".join(selects) or None
        return (union or empty), union

    def _joined_sql(self) -> tuple[str, str | None]:
        first, *others = JOINED
        # As obsml.modeldata.joined: inputs of the window, their predictions from `since` on, labels of any date.
        windows = [(self.since, self.until), *((self.since, None) for _ in others[:-1]), (None, None)]
        present = [(identifier, sql) for identifier, (since, until) in zip(JOINED, windows, strict=True)
                   if (sql := self._identifier_sql(identifier, since, until)) is not None]
        if not present or present[0][0] != first:
            return _empty([("correlation_id", "VARCHAR"), ("model", "VARCHAR")]), None
        columns = {name: self.connection.sql(sql).columns for name, sql in present}
        sql = join_sql(present, columns, keys=("correlation_id", "model"))
        return sql, sql


def join_sql(present: Sequence[tuple[str, str]], columns: dict[str, list[str]], keys: Sequence[str]) -> str:
    """One query left-joining ``present`` (identifier, query) on ``keys``, colliding names suffixed.

    When the first identifier has the collector's ``row`` (a row's index in its ``collect()``), rows
    pair by it too, so three inputs and three predictions of one id give three lines, not nine; a
    side without it (a part file written by other means) joins on ``keys`` alone. A column found in
    more than one identifier gets the identifier as a suffix (``collected_at_inputs``); the keys
    appear once, from the first.
    """
    seen: dict[str, int] = {}
    for names in columns.values():
        for name in names:
            seen[name] = seen.get(name, 0) + 1
    keys = (*keys, "row") if "row" in columns[present[0][0]] else tuple(keys)
    selected = [f"t0.{_quoted(key)}" for key in keys]
    joins = []
    for n, (identifier, sql) in enumerate(present):
        for name in columns[identifier]:
            if name in keys:
                continue
            alias = f"{name}_{identifier}" if seen[name] > 1 else name
            selected.append(f"t{n}.{_quoted(name)} AS {_quoted(alias)}")
        if n:
            on = [f"t{n}.{_quoted(key)} = t0.{_quoted(key)}" for key in keys if key != "row"]
            if "row" in keys and "row" in columns[identifier]:
                on.append(f"(t{n}.row = t0.row OR t{n}.row IS NULL OR t0.row IS NULL)")
            joins.append(f" LEFT JOIN ({sql}) AS t{n} ON {' AND '.join(on)}")
    order = ", ".join(f"t0.{_quoted(key)}" for key in ("collected_at", *keys))
    return f"SELECT {', '.join(selected)} FROM ({present[0][1]}) AS t0{''.join(joins)} ORDER BY {order}"


def _read(files: list[str], declared: dict[str, str]) -> str:
    """DuckDB's reading of JSON-line part files, every top-level key declared (see ``_SPAN_LINE``), and
    of compacted parquet files (``obsml compact``: the same keys and ``filename``), cast to the same types."""
    columns = "{" + ", ".join(f"{_text(key)}: {_text(kind)}" for key, kind in declared.items()) + "}"
    parts = [path for path in files if not path.endswith(PARQUET)]
    compacted = [path for path in files if path.endswith(PARQUET)]
    lines = f"read_json({_list(parts)}, format='newline_delimited', filename=true, columns={columns})"
    if not compacted:
        return lines
    typed = ", ".join(f"CAST({_quoted(key)} AS {kind}) AS {_quoted(key)}" for key, kind in declared.items())
    reads = [f"SELECT * FROM {lines}"] if parts else []
    reads.append(f"SELECT {typed}, filename FROM read_parquet({_list(compacted)})")
    return "(" + " UNION ALL BY NAME ".join(reads) + ")"


def _column(name: str, kind: str, key: str, derived: dict[str, str]) -> str:
    """One column of a view: derived, an attribute's value (``key`` one of the semantic conventions'
    names), or a top-level key of the line."""
    if name in derived:
        return f"{derived[name]} AS {name}"
    if key.startswith(_ATTRIBUTE_PREFIXES):
        text = f"json_extract_string(attributes, {_text('$.' + _json_text(key))})"
        return f"TRY_CAST({text} AS {kind}) AS {name}" if kind != "VARCHAR" else f"{text} AS {name}"
    return _quoted(name)


def _empty(columns: Iterable[tuple[str, str]]) -> str:
    return "SELECT " + ", ".join(f"CAST(NULL AS {kind}) AS {_quoted(name)}" for name, kind in columns) + " LIMIT 0"


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _json_text(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _list(paths: list[str]) -> str:
    return "[" + ", ".join(map(_text, paths)) + "]"


def _instant(moment: datetime) -> str:
    return f"TIMESTAMPTZ {_text(moment.astimezone(timezone.utc).isoformat())}"
