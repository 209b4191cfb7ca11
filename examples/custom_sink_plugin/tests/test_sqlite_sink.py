"""The sink on its own: rows per object, idempotent puts, whole-or-nothing, byte-identical payloads."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import obsml
import pytest

from obsml_sqlite_sink import SqliteSink, make_sink

PART = "traces/2026/01/02/03/1234-abcd1234-000001.jsonl"
PAYLOAD = "payloads/2026/01/02/" + "a" * 32 + "-" + "b" * 16 + "-request.bin"


def span_line(n: int) -> bytes:
    span = {
        "name": "POST /score", "trace_id": f"{n:032x}", "span_id": f"{n:016x}", "kind": "SERVER",
        "start_time": f"2026-01-02T03:04:{n:02d}+00:00", "duration_ms": 1.5 * n, "status": {"code": "UNSET"},
        "attributes": {
            "obsml.correlation_id": f"row-{n}", "obsml.model.name": "credit", "obsml.model.version": "10",
            "note": "a line separator \u2028 inside a string",
        },
    }
    return json.dumps(span, ensure_ascii=False).encode("utf-8")


def part_file(n: int) -> bytes:
    return b"".join(span_line(i) + b"\n" for i in range(1, n + 1))


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "nested" / "obsml.db"


@pytest.fixture
def sink(database: Path) -> Iterator[SqliteSink]:
    sink = make_sink(f"sqlite://{database}", settings=obsml.Settings())
    yield sink
    sink.close()


def put(sink: SqliteSink, relative: str, data: bytes) -> None:
    sink.put(relative, io.BytesIO(data), len(data))


def query(database: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(database) as connection:
        rows = connection.execute(sql).fetchall()
    connection.close()
    return rows


def test_the_entry_point_opens_a_sqlite_sink_for_the_sqlite_scheme() -> None:
    from importlib.metadata import entry_points

    (entry_point,) = [ep for ep in entry_points(group="obsml.sinks") if ep.name == "sqlite"]
    assert entry_point.load() is make_sink
    assert isinstance(make_sink("sqlite:///tmp/x.db", settings=obsml.Settings()), obsml.Sink)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("sqlite://relative/obsml.db", id="a host instead of an absolute path"),
        pytest.param("sqlite:///tmp/obsml.db?mode=ro", id="a query"),
        pytest.param("sqlite:///tmp/obsml.db#x", id="a fragment"),
        pytest.param("sqlite:obsml.db", id="a relative path"),
    ],
)
def test_a_store_url_that_is_not_an_absolute_file_path_is_refused_without_echoing_it(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite:///absolute/path") as error:
        make_sink(url, settings=obsml.Settings())
    assert url not in str(error.value)


def test_a_part_file_of_n_lines_gives_n_span_rows_with_their_fields(sink: SqliteSink, database: Path) -> None:
    put(sink, PART, part_file(5))
    rows = query(database, "SELECT line, trace_id, span_id, name, start_time, duration_ms, status, correlation_id,"
                           " model_name, model_version, json FROM spans ORDER BY line")
    assert len(rows) == 5
    assert rows[1][:10] == (
        2, f"{2:032x}", f"{2:016x}", "POST /score", "2026-01-02T03:04:02+00:00", 3.0, "UNSET", "row-2", "credit", "10"
    )
    assert [str(row[10]).encode("utf-8") for row in rows] == [span_line(i) for i in range(1, 6)]
    assert query(database, "SELECT relative, size FROM objects") == [(PART, len(part_file(5)))]
    assert query(database, "SELECT count(*) FROM payloads") == [(0,)]


def test_a_payload_round_trips_byte_identical_with_its_size_and_sha256(sink: SqliteSink, database: Path) -> None:
    body = bytes(range(256)) * 400 + b"\x00\n\r\xff"
    put(sink, PAYLOAD, body)
    ((relative, size, digest, data),) = query(database, "SELECT relative, size, sha256, data FROM payloads")
    assert (relative, size, digest) == (PAYLOAD, len(body), hashlib.sha256(body).hexdigest())
    assert data == body


def test_putting_the_same_objects_twice_adds_no_rows(sink: SqliteSink, database: Path) -> None:
    for _ in range(2):
        put(sink, PART, part_file(3))
        put(sink, PAYLOAD, b"body")
    sink.close()
    again = make_sink(f"sqlite://{database}", settings=obsml.Settings())  # as after a restart
    put(again, PART, part_file(3))
    again.close()
    assert query(database, "SELECT count(*) FROM objects") == [(2,)]
    assert query(database, "SELECT count(*) FROM spans") == [(3,)]
    assert query(database, "SELECT count(*) FROM payloads") == [(1,)]


def test_a_failed_put_stores_nothing_and_a_retry_stores_the_object_whole(sink: SqliteSink, database: Path) -> None:
    torn = part_file(3) + b"{not json\n"
    with pytest.raises(json.JSONDecodeError):
        put(sink, PART, torn)  # the first three lines parsed, the fourth did not: all rolled back
    with pytest.raises(OSError, match="read 4 of 10 bytes"):
        sink.put(PAYLOAD, io.BytesIO(b"body"), 10)
    assert query(database, "SELECT count(*) FROM objects") == [(0,)]
    assert query(database, "SELECT count(*) FROM spans") == [(0,)]

    put(sink, PART, part_file(3))
    assert query(database, "SELECT count(*) FROM spans") == [(3,)]

