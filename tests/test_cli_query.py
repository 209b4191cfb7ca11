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
from request_records import Call, Line, raised, write_calls, write_lines

import obsml
from obsml._query import span_files
from obsml._reader import StoreReader
from obsml._views import DEPENDENCY_COLUMNS, LOG_COLUMNS, SPAN_COLUMNS
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
    (store / "nothing-here").mkdir()  # a store there, empty (a mistyped one: test_cli)
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


def served(store: Path, *correlation_ids: str) -> dict[str, dict[str, Any]]:
    """One request per correlation id through the middleware under uvicorn: their spans, by id."""
    with running_server(make_app(store=str(store), **OPTIONS)) as url, httpx.Client(base_url=url) as client:
        for correlation_id in correlation_ids:
            client.post("/echo", content=b'{"rows": 3}', headers={"x-correlation-id": correlation_id})
    assert obsml.flush(10)
    return {span["attributes"]["obsml.correlation_id"]: span for span in read_spans(store)}


REFUSED = ConnectionRefusedError(111, "Connection refused")


def test_outbound_calls_are_dependencies_of_their_request_and_spans_stay_one_row_per_request(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests = served(store, "score-1", "score-2")
    before = rows(capsys, store, "select correlation_id, kind from spans order by correlation_id")
    write_calls(store, requests["score-1"], [
        Call(1, 3, "GET", "http://features.local:8081/rows/7", status=200),
        Call(5, 2, "POST", "http://model-b.local:9000/score", status=503),
        Call(8, 1, "POST", "http://model-b.local:9000/score", raised=raised(REFUSED)),
    ])  # fmt: skip
    write_calls(store, requests["score-2"], [Call(1, 2, "GET", "http://features.local:8081/rows/8", status=200)])

    assert before == [{"correlation_id": "score-1", "kind": "SERVER"}, {"correlation_id": "score-2", "kind": "SERVER"}]
    assert rows(capsys, store, "select correlation_id, kind from spans order by correlation_id") == before
    assert len(read_spans(store)) == 6  # the calls are in traces/, beside their requests
    calls = rows(capsys, store, "select * from dependencies order by correlation_id, start_time")
    assert [list(call) for call in calls] == [[name for name, _, _ in DEPENDENCY_COLUMNS]] * 4
    assert [(c["correlation_id"], c["method"], c["url"], c["status_code"], c["error"], c["error_type"],
             c["exception_type"], c["exception_message"]) for c in calls] == [
        ("score-1", "GET", "http://features.local:8081/rows/7", 200, False, None, None, None),
        ("score-1", "POST", "http://model-b.local:9000/score", 503, True, "503", None, None),
        ("score-1", "POST", "http://model-b.local:9000/score", None, True, "ConnectionRefusedError",
         "ConnectionRefusedError", "[Errno 111] Connection refused"),
        ("score-2", "GET", "http://features.local:8081/rows/8", 200, False, None, None, None),
    ]  # fmt: skip
    for call in calls:
        request = requests[call["correlation_id"]]
        assert (call["trace_id"], call["parent_span_id"]) == (request["trace_id"], request["span_id"])
        joined = [call[name] for name in ("service", "model", "version", "route")]
        assert joined == ["credit", "best_model", "10", "/echo"]
        assert call["server_address"] in ("features.local", "model-b.local") and call["server_port"] in (8081, 9000)
        assert call["writer"] and call["attributes"]["url.full"] == call["url"]
    assert [call["duration_ms"] for call in calls] == [3.0, 2.0, 1.0, 2.0]


def test_a_dependency_whose_request_is_outside_the_window_keeps_its_ids_but_not_the_route(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = served(store, "early")["early"]
    write_calls(store, request, [Call(1, 3, "GET", "http://features.local:8081/rows/7", status=200)])
    since = (datetime.fromisoformat(request["start_time"]) + timedelta(microseconds=500)).isoformat()
    [call] = rows(capsys, store, "select * from dependencies", "--since", since)
    assert (call["url"], call["parent_span_id"]) == ("http://features.local:8081/rows/7", request["span_id"])
    assert call["correlation_id"] == "early" and call["route"] is None  # the id is the call's own
    assert [call[name] for name in ("service", "model", "version")] == [
        request["attributes"][name] for name in ("obsml.service", "obsml.model.name", "obsml.model.version")]


def test_log_records_are_the_logs_view_with_their_request(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    request = served(store, "logged")["logged"]
    write_lines(store, request, [
        Line(2, "INFO", "scoring", "scoring 3 rows"),
        Line(4, "INFO", "stdout", {"input": [1, 2, 3], "output": 0.7}),
        Line(9, "ERROR", "scoring", "feature store down", raised=raised(ValueError("no features for 7"))),
    ])  # fmt: skip
    found = rows(capsys, store, "select * from logs order by time")
    assert [list(row) for row in found] == [[name for name, _, _ in LOG_COLUMNS]] * 3
    assert [(r["severity_text"], r["severity_number"], r["logger"], r["body"]) for r in found] == [
        ("INFO", 9, "scoring", "scoring 3 rows"),
        ("INFO", 9, "stdout", {"input": [1, 2, 3], "output": 0.7}),
        ("ERROR", 17, "scoring", "feature store down"),
    ]
    assert found[0]["message"] == "scoring 3 rows" and json.loads(found[1]["message"]) == found[1]["body"]
    error = found[2]
    assert (error["exception_type"], error["exception_message"]) == ("ValueError", "no features for 7")
    assert error["exception_stacktrace"].startswith("Traceback (most recent call last):")
    assert error["exception_stacktrace"].rstrip().endswith("ValueError: no features for 7")
    for row in found:
        assert (row["trace_id"], row["span_id"], row["correlation_id"]) == (request["trace_id"], request["span_id"],
                                                                            "logged")
        assert (row["service"], row["model"], row["version"]) == ("credit", "best_model", "10")
        assert row["writer"] and row["attributes"]["code.function.name"] == "score"
    assert datetime.fromisoformat(found[0]["time"]) - datetime.fromisoformat(request["start_time"]) == timedelta(
        milliseconds=2)
    late = (datetime.fromisoformat(request["start_time"]) + timedelta(milliseconds=3)).isoformat()
    assert [row["logger"] for row in rows(capsys, store, "select logger from logs", "--since", late)] == [
        "stdout", "scoring"]


def test_a_store_without_logs_or_outbound_calls_has_empty_views_not_errors(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    served(store, "alone")
    sql = "select (select count(*) from spans) as requests, (select count(*) from dependencies) as calls, " \
          "(select count(*) from logs) as lines"
    assert rows(capsys, store, sql) == [{"requests": 1, "calls": 0, "lines": 0}]
    code, out, err = query(capsys, store, "select * from logs")
    assert (code, out) == (0, "") and err.startswith("obsml query: no data in this window (from the start): ")
    code, out, _ = query(capsys, store, "select * from dependencies", "--format", "csv")
    assert (code, out) == (0, ",".join(name for name, _, _ in DEPENDENCY_COLUMNS) + "\n")


def test_a_span_line_without_kind_is_a_request_and_other_kinds_are_not(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    at = datetime(2026, 11, 2, 10, 0, tzinfo=timezone.utc)
    without_kind = json.loads(hand_written_span(at, "before-issue-18", 200))
    del without_kind["kind"]
    internal = {**json.loads(hand_written_span(at, "internal", 200)), "kind": "INTERNAL"}
    write_hour(store, at, [json.dumps(without_kind) + "\n", json.dumps(internal) + "\n",
                           hand_written_span(at, "server", 200)])
    found = rows(capsys, store, "select correlation_id, kind from spans order by correlation_id")
    assert found == [{"correlation_id": "before-issue-18", "kind": "SERVER"},
                     {"correlation_id": "server", "kind": "SERVER"}]
