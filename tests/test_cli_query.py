"""``obsml query`` over stores written by the real middleware (uvicorn, gunicorn, Azurite), and by hand
where a test needs a layout no server makes in time (hour folders of other days, late keys)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fsspec
import httpx
import pyarrow.parquet as pq
import pytest
from adlfs import AzureBlobFileSystem
from apps import make_app
from azure.storage.blob import ContainerClient
from azurite import Azurite
from conftest import install_plugin, read_spans, running_gunicorn, running_server

import obsml
from obsml._query import span_files
from obsml._reader import StoreReader
from obsml._views import SPAN_COLUMNS
from obsml.cli import main

OPTIONS = {"service": "credit", "model": "best_model", "version": "10", "inline_limit": 64}
BIG = b'{"rows": [' + b", ".join(b'{"income": %d}' % n for n in range(20)) + b"]}"  # over the inline limit


def query(capsys: pytest.CaptureFixture[str], store: str | Path, sql: str, *options: str) -> tuple[int, str, str]:
    code = main(["query", sql, "--store", str(store), *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows(capsys: pytest.CaptureFixture[str], store: str | Path, sql: str, *options: str) -> list[dict[str, Any]]:
    code, out, err = query(capsys, store, sql, "--format", "json", *options)
    assert code == 0, err
    return list(json.loads(out))


def send_mix(client: httpx.Client) -> None:
    """Three small echoes, one big (offloaded), a 404 and a failure, each with its correlation id."""
    for n in range(3):
        client.post("/echo", content=b'{"n": %d}' % n, headers={"x-correlation-id": f"small-{n}"})
    client.post("/echo", content=BIG, headers={"x-correlation-id": "big-1"})
    client.get("/no-such-route", headers={"x-correlation-id": "missing-1"})
    client.get("/fail/before", headers={"x-correlation-id": "failed-1"})


def test_query_returns_what_was_sent_through_the_middleware_under_uvicorn(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_server(make_app(store=str(store), **OPTIONS)) as url, httpx.Client(base_url=url) as client:
        send_mix(client)
    assert obsml.flush(10)

    by_status = rows(capsys, store, "select status_code, count(*) as n from spans group by 1 order by 1")
    assert by_status == [{"status_code": 200, "n": 4}, {"status_code": 404, "n": 1}, {"status_code": 500, "n": 1}]
    found = {row["correlation_id"]: row for row in rows(capsys, store, "select * from spans", "--since", "1h")}
    assert set(found) == {"small-0", "small-1", "small-2", "big-1", "missing-1", "failed-1"}
    assert [found[f"small-{n}"]["request_body"] for n in range(3)] == ['{"n": 0}', '{"n": 1}', '{"n": 2}']
    assert found["small-1"]["response_body"] == '{"n": 1}'
    big = found["big-1"]
    assert big["request_body"] is None and big["request_body_size"] == len(BIG)
    assert Path(big["request_body_uri"].removeprefix("file://")).read_bytes() == BIG
    failed = found["failed-1"]
    assert (failed["error"], failed["exception_type"]) == (True, "RuntimeError")
    assert failed["exception_message"] == "model exploded before answering"
    assert (found["missing-1"]["error"], found["missing-1"]["exception_type"]) == (False, None)
    spans = {span["attributes"]["obsml.correlation_id"]: span for span in read_spans(store)}
    for correlation_id, row in found.items():
        span = spans[correlation_id]
        assert list(row) == [name for name, _, _ in SPAN_COLUMNS]
        assert (row["trace_id"], row["span_id"], row["name"]) == (span["trace_id"], span["span_id"], span["name"])
        assert (row["service"], row["model"], row["version"]) == ("credit", "best_model", "10")
        assert row["attributes"] == span["attributes"]
        assert datetime.fromisoformat(row["start_time"]) == datetime.fromisoformat(span["start_time"])
        assert row["writer"] and row["writer"] == row["writer"].strip()


def test_query_counts_each_gunicorn_workers_requests_by_its_part_files(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_gunicorn("wsgi_apps:flask_app", store, "--workers", "2") as server:
        with httpx.Client(base_url=server.url) as client:
            for n in range(12):
                client.post("/echo", content=b"row %d" % n, headers={"x-correlation-id": f"row-{n}"})
            client.get("/fail/before", headers={"x-correlation-id": "bad-row"})
        assert server.stop() == 0

    found = rows(capsys, store, "select correlation_id, request_body, status_code, exception_type, writer from spans")
    assert sorted(row["correlation_id"] for row in found) == sorted([*(f"row-{n}" for n in range(12)), "bad-row"])
    assert {row["request_body"] for row in found if row["status_code"] == 200} == {f"row {n}" for n in range(12)}
    assert [row["exception_type"] for row in found if row["status_code"] == 500] == ["ValueError"]
    per_writer = Counter(row["writer"] for row in found)
    on_disk = Counter()
    for part in store.glob("traces/*/*/*/*/*.jsonl"):
        on_disk[part.name.rsplit("-", 1)[0]] += len(part.read_bytes().splitlines())
    assert per_writer == on_disk


def test_every_format_parses_back_to_the_same_rows(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_server(make_app(store=str(store), **OPTIONS)) as url, httpx.Client(base_url=url) as client:
        send_mix(client)
    assert obsml.flush(10)
    sql = "select correlation_id, status_code, error, request_body, attributes from spans order by correlation_id"

    expected = rows(capsys, store, sql)
    code, out, _ = query(capsys, store, sql, "--format", "jsonl")
    assert code == 0 and [json.loads(line) for line in out.splitlines()] == expected
    code, out, _ = query(capsys, store, sql, "--format", "csv")
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [row["correlation_id"] for row in parsed] == [row["correlation_id"] for row in expected]
    assert [int(row["status_code"]) for row in parsed] == [row["status_code"] for row in expected]
    assert [row["request_body"] or None for row in parsed] == [row["request_body"] or None for row in expected]
    assert [json.loads(row["attributes"]) for row in parsed] == [row["attributes"] for row in expected]
    target = tmp_path / "result.parquet"
    code, out, _ = query(capsys, store, sql, "--format", "parquet", "--output", str(target))
    table = pq.read_table(target).to_pylist()
    assert code == 0 and out == ""
    assert [(r["correlation_id"], r["status_code"], r["error"]) for r in table] == [
        (r["correlation_id"], r["status_code"], r["error"]) for r in expected
    ]
    target = tmp_path / "result.json"
    assert query(capsys, store, sql, "--format", "json", "--output", str(target))[:2] == (0, "")
    assert json.loads(target.read_text()) == expected
    code, _, err = query(capsys, store, sql, "--format", "parquet")
    assert code == 2 and "--output" in err


def hand_written_span(at: datetime, correlation_id: str, status: int, **attributes: Any) -> str:
    """A span line as the jsonl exporter writes it."""
    return json.dumps({
        "name": "POST /score", "trace_id": "1" * 32, "span_id": "2" * 16, "parent_span_id": None, "kind": "SERVER",
        "start_time": at.isoformat(), "end_time": (at + timedelta(milliseconds=5)).isoformat(), "duration_ms": 5.0,
        "status": {"code": "ERROR" if status >= 500 else "UNSET", "description": None},
        "attributes": {"obsml.correlation_id": correlation_id, "http.response.status_code": status, **attributes},
        "events": [], "resource": {"service.name": "credit"}, "dropped_attributes": 0,
    }) + "\n"  # fmt: skip


def write_hour(store: Path, at: datetime, lines: list[str], writer: str = "4242-0a1b2c3d") -> Path:
    folder = store / "traces" / f"{at:%Y/%m/%d/%H}"
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f"{writer}-{len(list(folder.iterdir())) + 1:06d}.jsonl"
    part.write_text("".join(lines))
    return part


def test_a_window_reads_only_its_hour_folders_and_its_rows(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ten = datetime(2026, 11, 2, 10, 0, tzinfo=timezone.utc)
    write_hour(store, ten, [hand_written_span(ten + timedelta(minutes=m), f"ten-{m}", 200) for m in (10, 50)])
    eleven = write_hour(store, ten + timedelta(hours=1), [hand_written_span(ten + timedelta(hours=1), "eleven", 200)])
    write_hour(store, ten + timedelta(days=1), ["not json at all\n"])  # read only by a window that covers it

    reader = StoreReader.open(str(store))
    assert span_files(reader, ten + timedelta(minutes=30), ten + timedelta(hours=1, minutes=1))[-1] == str(eleven)
    assert len(span_files(reader, ten + timedelta(minutes=30), ten + timedelta(hours=1, minutes=1))) == 2
    assert span_files(reader, ten + timedelta(hours=1), ten + timedelta(hours=2)) == [str(eleven)]
    assert len(span_files(reader, None, ten + timedelta(hours=2))) == 2
    found = rows(capsys, store, "select correlation_id from spans", "--since", "2026-11-02T10:30", "--until",
                 "2026-11-02T11:00:00.000001")
    assert [row["correlation_id"] for row in found] == ["ten-50", "eleven"]
    code, _, err = query(capsys, store, "select count(*) from spans")  # the whole store: the bad file too
    assert code == 2 and err.startswith("obsml query: ")


def test_keys_that_appear_late_or_change_type_read_the_same(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    at = datetime(2026, 11, 2, 10, 0, tzinfo=timezone.utc)
    write_hour(store, at, [hand_written_span(at, f"plain-{n}", 200) for n in range(3)])
    late = hand_written_span(at + timedelta(minutes=1), "late", 200, **{"obsml.request.body.uri": "file:///x.bin"})
    changed = hand_written_span(at + timedelta(minutes=2), "changed", 200, **{"obsml.request.body.size": "12"})
    write_hour(store, at, [late, changed], writer="4343-0b0b0b0b")
    found = rows(capsys, store, "select correlation_id, request_body_uri, request_body_size, writer from spans "
                 "order by start_time")  # fmt: skip
    assert [(r["correlation_id"], r["request_body_uri"], r["request_body_size"]) for r in found][-2:] == [
        ("late", "file:///x.bin", None), ("changed", None, 12)
    ]
    assert [r["writer"] for r in found] == ["4242-0a1b2c3d"] * 3 + ["4343-0b0b0b0b"] * 2


def test_a_window_without_data_says_so_in_one_line_and_succeeds(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    at = datetime(2026, 11, 2, 10, 0, tzinfo=timezone.utc)
    write_hour(store, at, [hand_written_span(at, "only", 200)])
    code, out, err = query(capsys, store, "select * from spans", "--since", "2h")
    assert (code, out) == (0, "")
    assert err.count("\n") == 1 and err.startswith("obsml query: no data in this window (since ")
    code, out, err = query(capsys, store / "nothing-here", "select * from spans")
    assert (code, out) == (0, "") and "no data in this window" in err


def test_the_table_fits_the_terminal_and_says_when_it_cut_a_value(
    store: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    at = datetime(2026, 11, 2, 10, 0, tzinfo=timezone.utc)
    long_body = "x" * 200
    write_hour(store, at, [hand_written_span(at, "c-1", 200, **{"obsml.request.body": long_body}),
                           hand_written_span(at, "c-22", 503)])
    sql = "select correlation_id, status_code, request_body from spans order by correlation_id"
    monkeypatch.setenv("COLUMNS", "60")
    code, out, _ = query(capsys, store, sql)
    lines = out.splitlines()
    assert code == 0 and all(len(line) <= 60 for line in lines[:-1]), out
    assert lines[0].split() == ["correlation_id", "status_code", "request_body"]
    assert lines[2].startswith("c-1 ") and lines[2].endswith("…")
    assert lines[3].split() == ["c-22", "503", "NULL"]
    assert lines[-1] == "(2 rows); long values cut to fit 60 columns: --format csv or json prints them whole"
    monkeypatch.setenv("COLUMNS", "300")
    code, out, _ = query(capsys, store, sql)
    assert long_body in out and out.splitlines()[-1] == "(2 rows)"


def test_bad_sql_prints_duckdbs_error_without_a_traceback_and_exits_2(store: Path) -> None:
    at = datetime(2026, 11, 2, 10, 0, tzinfo=timezone.utc)
    write_hour(store, at, [hand_written_span(at, "only", 200)])
    for sql, message in (("selec * from spans", "Parser Error: syntax error"),
                         ("select no_such_column from spans", "Binder Error")):
        result = subprocess.run([sys.executable, "-m", "obsml.cli", "query", sql, "--store", str(store)],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2
        assert result.stderr.startswith(f"obsml query: {message}"), result.stderr
        assert "Traceback" not in result.stderr


def test_without_duckdb_the_query_says_which_install_brings_it(store: Path) -> None:
    block_duckdb = "import sys; sys.modules['duckdb'] = None; from obsml.cli import main; "
    run = f"raise SystemExit(main(['query', 'select 1', '--store', {str(store)!r}]))"
    result = subprocess.run([sys.executable, "-c", block_duckdb + run], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "obsml query: reading the store needs DuckDB: pip install 'obsml[query]'\n"


def test_a_sink_plugin_store_says_in_one_line_that_it_cannot_be_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    install_plugin(tmp_path, monkeypatch, "box", "def make_sink(url, *, settings): ...\n", group="obsml.sinks",
                   factory="make_sink")
    code, out, err = query(capsys, "box://somewhere", "select * from spans")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "the box:// store is a sink plugin's, which obsml cannot read back" in err


def test_model_data_views_hold_each_identifier_all_of_them_and_the_join(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = obsml.Collector("best_model", "inputs", ["income", "age"], store=str(store), service="credit")
    predictions = obsml.Collector("best_model", "predictions", ["p"], store=str(store), service="credit")
    for n, correlation_id in enumerate(("loan-1", "loan-2")):
        inputs.collect([[50_000 + n, 40 + n]], correlation_id=correlation_id)
        predictions.collect([[0.5 + n / 10]], correlation_id=correlation_id)
    obsml.Collector("best_model", "labels", ["approved"], store=str(store)).collect([[True]], correlation_id="loan-2")
    assert obsml.flush(10)

    assert rows(capsys, store, "select correlation_id, income, age, model from inputs order by 1") == [
        {"correlation_id": "loan-1", "income": 50000, "age": 40, "model": "best_model"},
        {"correlation_id": "loan-2", "income": 50001, "age": 41, "model": "best_model"},
    ]
    found = rows(capsys, store, "select identifier, correlation_id, features from modeldata order by 1, 2")
    assert [(r["identifier"], r["correlation_id"], r["features"]) for r in found] == [
        ("inputs", "loan-1", {"income": 50000, "age": 40}), ("inputs", "loan-2", {"income": 50001, "age": 41}),
        ("labels", "loan-2", {"approved": True}),
        ("predictions", "loan-1", {"p": 0.5}), ("predictions", "loan-2", {"p": 0.6}),
    ]
    joined = rows(capsys, store, "select correlation_id, income, p, approved from joined order by 1")
    assert joined == [{"correlation_id": "loan-1", "income": 50000, "p": 0.5, "approved": None},
                      {"correlation_id": "loan-2", "income": 50001, "p": 0.6, "approved": True}]
    code, _, err = query(capsys, store, "select * from spans")  # model data only: no span in the store
    assert code == 0 and "no data in this window" in err


@pytest.fixture
def blob_store(azurite: Azurite, azure_container: ContainerClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    AzureBlobFileSystem.clear_instance_cache()  # fsspec caches filesystems by arguments, not by environment
    yield f"abfs://{azure_container.container_name}/obsml"
    AzureBlobFileSystem.clear_instance_cache()


def test_an_azure_blob_store_is_queried_through_adlfs(blob_store: str, capsys: pytest.CaptureFixture[str]) -> None:
    with running_server(make_app(store=blob_store, **OPTIONS)) as url, httpx.Client(base_url=url) as client:
        send_mix(client)
        assert obsml.flush(30)

    by_status = rows(capsys, blob_store, "select status_code, count(*) as n from spans group by 1 order by 1",
                     "--since", "1h")
    assert by_status == [{"status_code": 200, "n": 4}, {"status_code": 404, "n": 1}, {"status_code": 500, "n": 1}]
    found = {r["correlation_id"]: r for r in rows(capsys, blob_store, "select * from spans")}
    assert found["small-2"]["request_body"] == '{"n": 2}'
    assert found["big-1"]["request_body_uri"].startswith(f"{blob_store}/payloads/")
    assert fsspec.open(found["big-1"]["request_body_uri"], "rb").open().read() == BIG


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_file_and_memory_urls_are_read_like_a_directory(
    scheme: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    at = datetime(2026, 11, 2, 10, 0, tzinfo=timezone.utc)
    line = hand_written_span(at, f"{scheme}-1", 201)
    if scheme == "file":
        write_hour(tmp_path, at, [line])
        store = f"file://{tmp_path}"
    else:
        store = f"memory://query-{tmp_path.name}"
        fsspec.filesystem("memory").pipe_file(f"/query-{tmp_path.name}/traces/{at:%Y/%m/%d/%H}/7-ab-000001.jsonl",
                                              line.encode())
    writer = "7-ab" if scheme == "memory" else "4242-0a1b2c3d"
    assert rows(capsys, store, "select correlation_id, status_code, writer from spans") == [
        {"correlation_id": f"{scheme}-1", "status_code": 201, "writer": writer}
    ]


def test_a_store_that_refuses_the_listing_says_so_in_one_line(
    azurite: Azurite, azure_container: ContainerClient, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    wrong_key = azurite.connection_string.replace("AccountKey=Eby8", "AccountKey=AAAA")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", wrong_key)
    AzureBlobFileSystem.clear_instance_cache()
    try:
        code, out, err = query(capsys, f"abfs://{azure_container.container_name}/obsml", "select * from spans")
    finally:
        AzureBlobFileSystem.clear_instance_cache()
    assert (code, out) == (2, "")
    assert err.startswith(f"obsml query: cannot read abfs://{azure_container.container_name}/obsml: ")
    assert err.count("\n") == 1 and "AccountKey" not in err
