"""``obsml compact`` (issue 20, item 4): closed partitions into Parquet, read back unchanged, under queries.

Stores are written by the real middleware and Collector (a uvicorn subprocess serving
``dependency_apps``, and ``report_apps``' scoring app) or, for many hours of spans, by hand in the
jsonl exporter's format. Compaction runs as a user runs it (``obsml.cli.main``) or, to put a store
at a later hour, through ``run_compact(now=...)``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fsspec
import httpx
import pandas as pd
import pytest
from adlfs import AzureBlobFileSystem
from azure.storage.blob import ContainerClient
from azurite import Azurite
from conftest import drawn_on_a_terminal
from report_apps import write_store
from test_dependencies import running_stub, running_uvicorn, targets

from obsml import Collector, _compact, flush
from obsml._compact import run_compact
from obsml._reader import StoreReader
from obsml._views import StoreViews
from obsml.cli import main
from obsml.modeldata import read

pytestmark = pytest.mark.usefixtures("forget_new_pipelines")

VIEWS = ("spans", "dependencies", "logs", "inputs", "predictions", "labels", "modeldata", "joined")
COUNT = "select count(*), count(distinct span_id), count(distinct writer) from spans"
DAY = datetime(2026, 11, 2, tzinfo=timezone.utc)
HOURS, WRITERS, PARTS, SPANS_A_PART = 6, 2, 3, 7  # spans in HOURS hours of DAY, each in WRITERS x PARTS parts
LATER = timedelta(days=2)  # a store's hour and day are closed this long after now
LOCAL = fsspec.filesystem("file", auto_mkdir=True)


def span_line(at: datetime, number: int) -> str:
    """A SERVER span as the jsonl exporter writes it, its ids from ``number``."""
    return json.dumps({
        "name": "POST /score", "trace_id": f"{number:032x}", "span_id": f"{number:016x}", "parent_span_id": None,
        "kind": "SERVER", "start_time": at.isoformat(timespec="microseconds"),
        "end_time": (at + timedelta(milliseconds=5)).isoformat(timespec="microseconds"), "duration_ms": 5.0,
        "status": {"code": "UNSET", "description": None},
        "attributes": {"obsml.correlation_id": f"c-{number}", "http.response.status_code": 200 + number % 3,
                       "http.route": "/score", "obsml.service": "credit"},
        "events": [], "resource": {"service.name": "credit"}, "dropped_attributes": 0,
    }) + "\n"  # fmt: skip


def write_hours(fs: Any, root: str, hours: int = HOURS, first_number: int = 0) -> int:
    """Spans in ``hours`` hours of DAY through ``fs`` under ``root``; returns how many."""
    number = first_number
    for hour in range(hours):
        at = DAY + timedelta(hours=hour)
        for writer in range(WRITERS):
            for part in range(1, PARTS + 1):
                lines = []
                for n in range(SPANS_A_PART):
                    lines.append(span_line(at + timedelta(seconds=n), number))
                    number += 1
                fs.pipe_file(f"{root}/traces/{at:%Y/%m/%d/%H}/{4000 + writer}-{writer:08x}-{part:06d}.jsonl",
                             "".join(lines).encode())
    return number - first_number


def counted(store: str) -> tuple[int, int, int]:
    with StoreViews.open(store) as views:
        views.reader.fs.invalidate_cache()  # adlfs caches listings; a query run as a command starts without
        views.define(["spans"])
        [found] = views.connection.execute(COUNT).fetchall()
        return tuple(found)  # type: ignore[return-value]


def every_view(store: Path) -> dict[str, list[str]]:
    """Each view's rows, as sorted texts (rows in any order, each value exact)."""
    with StoreViews.open(str(store)) as views:
        views.define(VIEWS)
        return {name: sorted(map(repr, views.connection.sql(f"select * from {name}").fetchall())) for name in VIEWS}


def files(store: Path, top: str = "") -> list[str]:
    return sorted(path.relative_to(store).as_posix() for path in (store / top).rglob("*") if path.is_file())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of every kind of record: requests with outbound calls and log records (uvicorn), model data."""
    store = tmp_path_factory.mktemp("compact") / "store"
    with running_stub() as stub, running_uvicorn(store, targets(stub)) as url:
        for _ in range(3):
            assert httpx.get(f"{url}/call", timeout=30).status_code == 200
        assert httpx.get(f"{url}/plain", timeout=30).status_code == 200
    write_store(store)  # inputs, predictions, labels through the Collector, requests through the middleware
    return store


def printed_by_logs(store: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """``obsml logs`` of every request, and of one with its log records and outbound calls."""
    with StoreViews.open(str(store)) as views:
        views.define(["dependencies"])
        first_call = "select correlation_id from dependencies order by start_time, span_id limit 1"
        [(called,)] = views.connection.execute(first_call).fetchall()
    capsys.readouterr()  # what came before (compact's summary)
    printed = []
    for options in ([], ["--correlation-id", called]):
        assert main(["logs", "--store", str(store), "--format", "json", "--limit", "1000", *options]) == 0
        printed.append(capsys.readouterr().out)
    assert '"log"' in printed[1] and '"dependency"' in printed[1]
    return printed


def test_every_view_reads_the_same_rows_before_and_after_compaction_and_deletion(
    served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    LOCAL.copy(str(served), str(store), recursive=True)
    before = every_view(store)
    assert all(before[name] for name in VIEWS), {name: len(rows) for name, rows in before.items()}
    spans_before = StoreReader.open(str(store)).spans()
    logs_before = printed_by_logs(store, capsys)

    later = datetime.now(timezone.utc) + LATER
    assert run_compact(str(store), older_than=timedelta(hours=2), grace=timedelta(hours=1), now=later) == 0
    parts = [path for path in files(store) if path.endswith(".jsonl") and "/compacted-" not in path]
    assert parts, "the replaced part files stay until the grace period is over"
    assert every_view(store) == before

    assert run_compact(str(store), older_than=timedelta(hours=2), grace=timedelta(hours=1),
                       now=later + timedelta(hours=2)) == 0
    left = [path for path in files(store) if not path.startswith("_obsml/") and not path.startswith("payloads/")]
    assert left and all(path.rpartition("/")[2].startswith("compacted-") for path in left), left
    assert every_view(store) == before
    assert StoreReader.open(str(store)).spans() == spans_before
    assert printed_by_logs(store, capsys) == logs_before


def test_a_manifest_names_the_parts_it_replaced_and_its_parquet(tmp_path: Path) -> None:
    fs = LOCAL
    write_hours(fs, str(tmp_path), hours=1)
    folder = tmp_path / "traces" / f"{DAY:%Y/%m/%d/%H}"
    parts = {path.name: path.stat().st_size for path in folder.iterdir()}

    assert main(["compact", "--store", str(tmp_path)]) == 0

    [manifest] = folder.glob("compacted-*.manifest.json")
    document = json.loads(manifest.read_text())
    parquet = folder / document["parquet"]["name"]
    assert parquet.name == manifest.name.replace(".manifest.json", ".parquet")
    assert {source["name"]: source["size"] for source in document["sources"]} == parts
    assert document["parquet"]["size"] == parquet.stat().st_size
    assert document["parquet"]["rows"] == WRITERS * PARTS * SPANS_A_PART
    assert len(document["parquet"]["sha256"]) == 64


@pytest.fixture
def blob_store(azurite: Azurite, azure_container: ContainerClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    AzureBlobFileSystem.clear_instance_cache()  # fsspec caches filesystems by arguments, not by environment
    yield f"abfs://{azure_container.container_name}/obsml"
    AzureBlobFileSystem.clear_instance_cache()


@pytest.fixture(params=["local", "azurite"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "store")
    return str(request.getfixturevalue("blob_store"))


def test_queries_during_compaction_count_every_span_once_at_every_step(
    any_store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fs, root = fsspec.core.url_to_fs(any_store) if "://" in any_store else (LOCAL, any_store)
    expected = (written := write_hours(fs, root), written, WRITERS)
    assert counted(any_store) == expected

    # A query at every step: after each object compaction puts (a parquet alone, then its manifest)...
    seen: list[tuple[int, int, int]] = []
    put = _compact._put

    def put_then_query(*args: Any, **kwargs: Any) -> None:
        put(*args, **kwargs)
        seen.append(counted(any_store))

    monkeypatch.setattr(_compact, "_put", put_then_query)
    # ...and queries in a loop on another thread meanwhile, each listing the store afresh.
    racing: list[tuple[int, int, int]] = []
    done = threading.Event()

    def query_loop() -> None:
        while not done.is_set():
            racing.append(counted(any_store))

    thread = threading.Thread(target=query_loop)
    thread.start()
    try:
        assert main(["compact", "--store", any_store]) == 0
    finally:
        done.set()
        thread.join()
    assert seen == [expected] * (2 * HOURS)
    assert racing and set(racing) == {expected}

    # The replaced parts deleted (a query that listed them before the manifests has had its grace).
    assert main(["compact", "--store", any_store, "--grace", "0s"]) == 0
    fs.invalidate_cache()
    assert not [path for path in fs.find(f"{root}/traces") if path.endswith(".jsonl")]
    assert counted(any_store) == expected


def test_late_parts_get_a_compacted_file_of_their_own_and_count_once(tmp_path: Path) -> None:
    store, fs = str(tmp_path), LOCAL
    written = write_hours(fs, store)
    assert main(["compact", "--store", store]) == 0
    late = DAY + timedelta(hours=1)
    fs.pipe_file(f"{store}/traces/{late:%Y/%m/%d/%H}/4999-0000ffff-000001.jsonl",
                 span_line(late + timedelta(minutes=59), 10**6).encode())
    assert counted(store) == (written + 1, written + 1, WRITERS + 1)

    assert main(["compact", "--store", store]) == 0

    folder = tmp_path / "traces" / f"{late:%Y/%m/%d/%H}"
    manifests = [json.loads(path.read_text()) for path in sorted(folder.glob("compacted-*.manifest.json"))]
    assert [[source["name"] for source in manifest["sources"]] for manifest in manifests][1:] == [
        ["4999-0000ffff-000001.jsonl"]
    ]  # the second, in id order
    assert counted(store) == (written + 1, written + 1, WRITERS + 1)
    assert main(["compact", "--store", store, "--grace", "0s"]) == 0
    assert sorted(path.name.split(".")[-1] for path in folder.iterdir()) == ["json", "json", "parquet", "parquet"]
    assert counted(store) == (written + 1, written + 1, WRITERS + 1)


def test_replaced_parts_are_deleted_only_once_the_grace_period_is_over(tmp_path: Path) -> None:
    store = str(tmp_path)
    written = write_hours(LOCAL, store, hours=1)
    now = datetime.now(timezone.utc)
    assert run_compact(store, older_than=timedelta(hours=2), grace=timedelta(minutes=10), now=now) == 0
    parts = [path for path in files(tmp_path) if path.endswith(".jsonl")]
    assert len(parts) == WRITERS * PARTS

    assert run_compact(store, older_than=timedelta(hours=2), grace=timedelta(minutes=10),
                       now=now + timedelta(minutes=9)) == 0
    assert [path for path in files(tmp_path) if path.endswith(".jsonl")] == parts
    assert run_compact(store, older_than=timedelta(hours=2), grace=timedelta(minutes=10),
                       now=now + timedelta(minutes=11)) == 0
    assert [path for path in files(tmp_path) if path.endswith(".jsonl")] == []
    assert counted(store) == (written, written, WRITERS)


def test_the_current_hour_and_day_are_never_compacted(served: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    LOCAL.copy(str(served), str(store), recursive=True)
    write_hours(LOCAL, str(store), hours=1)  # and an old hour, which is compacted
    fresh = files(store)

    assert main(["compact", "--store", str(store), "--older-than", "0s"]) == 0

    compacted = [path for path in files(store) if path not in fresh]
    assert compacted and all(path.startswith(f"traces/{DAY:%Y/%m/%d/%H}/compacted-") for path in compacted)
    now = datetime.now(timezone.utc)
    assert not [path for path in compacted if f"/{now:%Y/%m/%d}/" in path]


def test_two_runs_at_once_count_their_parts_once_and_the_later_manifest_goes(tmp_path: Path) -> None:
    store = str(tmp_path)
    written = write_hours(LOCAL, store, hours=1)
    reader = StoreReader.open(store)
    [partition] = _compact.partitions(reader, datetime.now(timezone.utc))
    pending = [path for path in partition.listed if path.endswith(".jsonl")]
    with StoreViews.open(store) as views:  # two runs that listed the same parts, each writing its file
        _compact._write(reader, views.connection, partition, pending, _compact.Totals())
        _compact._write(reader, views.connection, partition, pending, _compact.Totals())
    folder = tmp_path / "traces" / f"{DAY:%Y/%m/%d/%H}"
    assert len(list(folder.glob("compacted-*.manifest.json"))) == 2
    assert counted(store) == (written, written, WRITERS)

    assert main(["compact", "--store", store, "--grace", "0s"]) == 0
    assert len(list(folder.glob("compacted-*"))) == 2  # one parquet and its manifest
    assert counted(store) == (written, written, WRITERS)


def test_a_run_that_dies_before_its_manifest_leaves_a_parquet_nobody_reads_then_swept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = str(tmp_path)
    written = write_hours(LOCAL, store, hours=1)
    put = _compact._put

    def no_manifest(reader: StoreReader, relative: str, **kwargs: Any) -> None:
        if relative.endswith(".manifest.json"):
            raise OSError(28, "No space left on device")
        put(reader, relative, **kwargs)

    monkeypatch.setattr(_compact, "_put", no_manifest)
    assert main(["compact", "--store", store]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"obsml compact: cannot compact traces/{DAY:%Y/%m/%d/%H}: OSError") and err.count("\n") == 1
    folder = tmp_path / "traces" / f"{DAY:%Y/%m/%d/%H}"
    [orphan] = folder.glob("compacted-*.parquet")
    assert counted(store) == (written, written, WRITERS)

    monkeypatch.setattr(_compact, "_put", put)
    assert main(["compact", "--store", store, "--grace", "0s"]) == 0
    assert not orphan.exists()
    assert counted(store) == (written, written, WRITERS)


def test_a_store_that_cannot_be_read_is_one_line_and_exit_2(
    azurite: Azurite, azure_container: ContainerClient, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    url = f"abfs://{azure_container.container_name}/obsml"
    wrong_key = azurite.connection_string.replace("AccountKey=Eby8", "AccountKey=AAAA")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", wrong_key)
    AzureBlobFileSystem.clear_instance_cache()
    try:
        assert main(["compact", "--store", url]) == 2
    finally:
        AzureBlobFileSystem.clear_instance_cache()
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"obsml compact: cannot read {url}: ") and err.count("\n") == 1
    assert "AccountKey" not in err

    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT_NAME", raising=False)
    try:
        assert main(["compact", "--store", url]) == 2
    finally:
        AzureBlobFileSystem.clear_instance_cache()
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("obsml compact: ") and err.count("\n") == 1

    assert main(["compact", "--store", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"obsml compact: cannot read {tmp_path / 'nowhere'}: no store there\n"


def test_the_compact_scale_benchmark_finds_the_same_answers_and_leaves_nothing_behind(tmp_path: Path) -> None:
    # A smoke run on 7,000 spans over a week: both stores answer the same; nothing asserted on time.
    benchmark = Path(__file__).resolve().parent.parent / "benchmarks" / "compact_scale.py"
    result = subprocess.run([sys.executable, str(benchmark), "--quick"], capture_output=True, text=True,
                            timeout=600, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "168 partitions compacted: 672 part files, 7000 rows" in result.stdout
    assert result.stdout.count("part files / compacted:") == 6
    assert list(tmp_path.iterdir()) == []


def test_a_progress_bar_is_drawn_on_a_terminal_and_nothing_otherwise(tmp_path: Path) -> None:
    write_hours(LOCAL, str(tmp_path / "piped"), hours=2)
    write_hours(LOCAL, str(tmp_path / "terminal"), hours=2)
    command = [sys.executable, "-m", "obsml.cli", "compact", "--store"]
    piped = subprocess.run([*command, str(tmp_path / "piped")], capture_output=True, text=True, timeout=120, check=True)
    drawn = drawn_on_a_terminal([*command, str(tmp_path / "terminal")])

    assert piped.stderr == "" and piped.stdout.startswith("obsml compact: 2 partitions compacted: ")
    assert "obsml compact: [" in drawn and f"2/2 traces/{DAY:%Y/%m/%d}/01" in drawn


def test_a_model_data_day_of_jsonl_csv_and_parquet_parts_reads_the_same_once_compacted(tmp_path: Path) -> None:
    store = str(tmp_path)
    for format in ("jsonl", "csv", "parquet"):
        inputs = Collector("credit", "inputs", ["income", "region"], store=store, service="scoring", format=format)
        for n in range(3):
            inputs.collect([[1000.5 + n, "north"], [-7, "0042"]], correlation_id=f"{format}-{n:04d}")
    assert flush(10)
    suffixes = {path.rpartition(".")[2] for path in files(tmp_path, "modeldata")}
    assert suffixes == {"jsonl", "csv", "parquet"}
    rows = read(store, "credit", "inputs").sort_values(["correlation_id", "row"]).reset_index(drop=True)
    viewed = every_view(tmp_path)

    later = datetime.now(timezone.utc) + LATER
    assert run_compact(store, older_than=timedelta(hours=2), grace=timedelta(0), now=later) == 0
    assert run_compact(store, older_than=timedelta(hours=2), grace=timedelta(0), now=later + timedelta(hours=1)) == 0

    assert all(path.rpartition("/")[2].startswith("compacted-") for path in files(tmp_path, "modeldata"))
    after = read(store, "credit", "inputs").sort_values(["correlation_id", "row"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(after, rows)
    assert every_view(tmp_path) == viewed


def test_a_manifest_whose_parquet_is_gone_is_ignored_and_its_parts_compacted_again(tmp_path: Path) -> None:
    store = str(tmp_path)
    written = write_hours(LOCAL, store, hours=1)
    assert main(["compact", "--store", store]) == 0
    folder = tmp_path / "traces" / f"{DAY:%Y/%m/%d/%H}"
    [parquet] = folder.glob("compacted-*.parquet")
    parquet.unlink()  # as a run with --grace 0s would, deleting another run's parquet before its manifest came
    assert counted(store) == (written, written, WRITERS)

    assert main(["compact", "--store", store, "--grace", "0s"]) == 0
    [manifest] = folder.glob("compacted-*.manifest.json")
    assert (folder / json.loads(manifest.read_text())["parquet"]["name"]).exists()
    assert counted(store) == (written, written, WRITERS)
