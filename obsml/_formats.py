"""How a batch of model-data records becomes one part file: ``jsonl``, ``csv`` or ``parquet``.

A record is a dict of plain values (``collected_at`` a UTC datetime). Columns of a batch are the
union of its records' keys, in order of appearance (a part file may hold rows of two schemas).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from ._exceptions import ConfigError

Encode = Callable[[list[dict[str, Any]]], Iterable[bytes]]
PARQUET_HINT = "pip install 'obsml[parquet]'"


def _text(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None  # NaN: null, as JSON has no NaN
    return value.isoformat(timespec="microseconds") if isinstance(value, datetime) else value


def encode_jsonl(records: list[dict[str, Any]]) -> Iterator[bytes]:
    for record in records:
        line = json.dumps({k: _text(v) for k, v in record.items()}, ensure_ascii=False, separators=(",", ":"))
        yield line.encode("utf-8", "surrogatepass") + b"\n"


def _columns(records: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(key for record in records for key in record))


def _csv_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(_text(value))


def encode_csv(records: list[dict[str, Any]]) -> Iterator[bytes]:
    columns = _columns(records)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for record in records:
        writer.writerow([_csv_text(record.get(c)) for c in columns])
    yield buffer.getvalue().encode("utf-8", "surrogatepass")


def encode_parquet(records: list[dict[str, Any]]) -> Iterator[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {c: [record.get(c) for record in records] for c in _columns(records)}
    # A column of nulls only (ids outside a request) is typed as text, not as pyarrow's null type.
    table = pa.table({c: pa.array(v, pa.string()) if all(x is None for x in v) else v for c, v in columns.items()})
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    yield buffer.getvalue().to_pybytes()


def encoder(name: str) -> Encode:
    """The encoder of format ``name``; ConfigError when parquet is asked for without pyarrow."""
    if name == "parquet":
        try:
            import pyarrow.parquet  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"format 'parquet' needs pyarrow: {PARQUET_HINT}") from exc
        return encode_parquet
    return encode_csv if name == "csv" else encode_jsonl
