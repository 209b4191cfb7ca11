"""A collector's input as rows of plain values: checked on the request path, expanded on the writer.

``check`` runs in ``collect()`` and does only what must raise there (width, value types, media);
``Rows.records`` turns the held data into one dict per row on the writer thread. numpy and
pandas are never imported: their objects are recognised by their module.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

PLAIN = (int, float, bool, str, datetime, type(None))
# Columns the collector adds to every record: a feature of one of these names would be overwritten.
RESERVED = frozenset({"correlation_id", "row", "trace_id", "span_id", "collected_at", "schema"})
# numpy dtype kinds a column may have as is: bool, int, unsigned, float, datetime64, str
_PLAIN_KINDS = frozenset("biufMU")
# pandas' infer_dtype() answers for object columns of plain values only
_PLAIN_INFERRED = frozenset({"empty", "string", "integer", "floating", "mixed-integer-float", "boolean", "datetime"})


class RowError(ValueError):
    """Misuse of ``collect()``; ``cause`` says which (logged once per cause)."""

    def __init__(self, cause: str, message: str) -> None:
        super().__init__(message)
        self.cause = cause


def _module(value: Any) -> str:
    return type(value).__module__.partition(".")[0]


def is_media(value: Any) -> bool:
    """Bytes, a PIL image, or an array of more than 2 dimensions (audio, images, video)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return True
    module = _module(value)
    return module == "PIL" or (module == "numpy" and getattr(value, "ndim", 0) > 2)


def check_value(value: Any, column: str, media: bool) -> bool:
    """Whether ``value`` is media (allowed only with ``media``); raises RowError when unsupported."""
    if isinstance(value, PLAIN):
        return False
    if is_media(value):
        if not media:
            raise RowError(
                f"media:{column}",
                f"column {column!r} holds media ({type(value).__name__}), not collected; "
                "pass media='offload' to write such values to the store",
            )
        return True
    if _module(value) == "numpy" and getattr(value, "ndim", 1) == 0:
        return False  # a numpy scalar
    raise RowError(
        f"type:{column}:{type(value).__name__}", f"column {column!r}: unsupported value type {type(value).__name__}"
    )


def row_count(data: Any) -> int:
    """How many rows ``collect(data)`` meant, for counting them when they are refused."""
    if isinstance(data, (list, tuple)) or _module(data) in ("numpy", "pandas"):
        return len(data) if getattr(data, "ndim", 1) else 1
    return 1


def columns_of(names: tuple[str, ...] | None, width: int) -> tuple[str, ...]:
    if names is None:
        return tuple(f"f{i}" for i in range(width))
    if len(names) != width:
        raise RowError("width", f"{width} value(s) per row, but {len(names)} feature name(s): {', '.join(names)}")
    return names


class Rows:
    """The rows of one ``collect()``: columns, and data held until the writer expands it."""

    __slots__ = ("columns", "data", "kind", "media")

    def __init__(self, data: Any, names: tuple[str, ...] | None, media: bool) -> None:
        module = _module(data)
        if module == "pandas" and type(data).__name__ == "DataFrame":
            self.columns = tuple(str(c) for c in data.columns)
            from pandas.api.types import infer_dtype  # pandas is imported: data is a DataFrame

            for column, (_, series) in zip(self.columns, data.items(), strict=True):
                # An object column is checked value by value only when pandas cannot tell it is plain.
                if series.dtype.kind not in _PLAIN_KINDS and infer_dtype(series, skipna=True) not in _PLAIN_INFERRED:
                    for value in series:
                        check_value(value, column, media)
            self.kind, self.data = "frame", data.copy()
        elif module == "numpy" and type(data).__name__ == "ndarray":
            if data.ndim > 2:  # a batch of media values: one per row
                self.columns = columns_of(names, 1)
                check_value(data[0] if len(data) else b"", self.columns[0], media)
                self.kind, self.data = "media", data.copy()
            else:
                array = data.reshape(-1, 1) if data.ndim < 2 else data
                self.columns = columns_of(names, array.shape[1])
                if array.dtype.kind not in _PLAIN_KINDS:
                    raise RowError(f"dtype:{array.dtype}", f"array of dtype {array.dtype} is not collected")
                self.kind, self.data = "array", array.copy()
        elif isinstance(data, (list, tuple)):
            self.kind, self.data, self.columns = "rows", [], ()
            self._check_rows(data, names, media)
        else:  # one scalar: one row of one value
            self.columns = columns_of(names, 1)
            check_value(data, self.columns[0], media)
            self.kind, self.data = "rows", [(data,)]
        self.media = media
        if not RESERVED.isdisjoint(self.columns):
            taken = ", ".join(sorted(RESERVED.intersection(self.columns)))
            raise RowError("reserved", f"column(s) {taken}: names obsml gives its own columns; rename the feature(s)")

    def _check_rows(self, data: list[Any] | tuple[Any, ...], names: tuple[str, ...] | None, media: bool) -> None:
        if data and isinstance(data[0], dict):
            self.columns = names or tuple(str(k) for k in data[0])
            for row in data:
                if (
                    not isinstance(row, dict)
                    or len(row) != len(self.columns)
                    or any(c not in row for c in self.columns)
                ):
                    raise RowError("width", f"every row must be a dict of the columns {', '.join(self.columns)}")
                for column in self.columns:
                    check_value(row[column], column, media)
                self.data.append(tuple(row[c] for c in self.columns))
            return
        rows = [row if isinstance(row, (list, tuple)) else (row,) for row in data]
        self.columns = columns_of(names, len(rows[0]) if rows else len(names or ()))
        for row in rows:
            if len(row) != len(self.columns):
                raise RowError(
                    "width",
                    f"a row of {len(row)} value(s), but {len(self.columns)} column(s): {', '.join(self.columns)}",
                )
            for column, value in zip(self.columns, row, strict=True):
                check_value(value, column, media)
        self.data = rows

    @property
    def count(self) -> int:
        return len(self.data)

    def values(self) -> list[list[Any]]:
        """Writer side: the rows as lists of plain Python values (media values left as they are)."""
        if self.kind == "frame":
            # pandas' missing values (NaN, NaT, None, NA) all become None: null in every format.
            columns = [
                [None if missing else v for v, missing in zip(column.tolist(), column.isna().tolist(), strict=True)]
                for _, column in self.data.items()
            ]
            return [list(row) for row in zip(*columns, strict=True)]
        if self.kind == "array":
            return self.data.tolist()  # type: ignore[no-any-return]
        if self.kind == "media":
            return [[value] for value in self.data]
        return [
            [v.item() if _module(v) == "numpy" and getattr(v, "ndim", 1) == 0 else v for v in row] for row in self.data
        ]


def fingerprint(columns: list[str], row: list[Any]) -> str:
    """First 16 hex of sha256 over the sorted column names and their value types."""
    described = sorted(f"{c}:{type(v).__name__}" for c, v in zip(columns, row, strict=True))
    return hashlib.sha256("\n".join(described).encode()).hexdigest()[:16]
