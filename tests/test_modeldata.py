"""obsml.modeldata over part files written by hand, as the collector writes them (issue 13's layout)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fsspec
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from adlfs import AzureBlobFileSystem
from azure.storage.blob import ContainerClient
from azurite import Azurite

import obsml
from obsml import modeldata

NOW = datetime.now(timezone.utc)
Record = dict[str, Any]


def record(at: datetime, correlation_id: str, schema: str = "s1", **features: Any) -> Record:
    """One row as the collector writes it: features by name, then the ids, the time and the schema."""
    return {**features, "correlation_id": correlation_id, "trace_id": "0" * 31 + "1", "span_id": None,
            "collected_at": at, "schema": schema}


def encoded(records: list[Record], suffix: str) -> bytes:
    """A part file's bytes: jsonl and csv with times as ISO strings (microseconds, +00:00)."""
    if suffix == "parquet":
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(records), sink)
        return sink.getvalue()
    texts = [{k: v.isoformat(timespec="microseconds") if isinstance(v, datetime) else v for k, v in r.items()}
             for r in records]
    if suffix == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in texts).encode()
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=list(texts[0]))
    writer.writeheader()
    writer.writerows(texts)
    return out.getvalue().encode()


def part_path(identifier: str, at: datetime, suffix: str, seq: int = 1, *, model: str = "best_model",
              service: str = "credit", version: str = "v1") -> str:
    return f"modeldata/{service}/{model}/{version}/{identifier}/{at:%Y/%m/%d}/4242-0a1b2c3d-{seq:06d}.{suffix}"


def write_part(store: Path, identifier: str, records: list[Record], suffix: str = "jsonl", seq: int = 1,
               **where: str) -> None:
    path = store / part_path(identifier, records[0]["collected_at"], suffix, seq, **where)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encoded(records, suffix))


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "parquet"])
def test_values_and_types_come_back_as_written_in_each_format(tmp_path: Path, suffix: str) -> None:
    seen = datetime(2026, 11, 2, 8, 30, 0, 250000, tzinfo=timezone.utc)
    first, second = NOW - timedelta(minutes=2), NOW - timedelta(minutes=1)
    rows = [
        record(first, "0042", income=52000, p=0.25, approved=True, name="ann", note=None, seen=seen),
        record(second, "LOAN-2231", income=-3, p=1.5, approved=False, name="bo", note="x", seen=seen),
    ]
    write_part(tmp_path, "inputs", rows, suffix)

    frame = modeldata.read(str(tmp_path), "best_model", "inputs")

    assert list(frame.columns) == [
        "income", "p", "approved", "name", "note", "seen", "correlation_id", "trace_id", "span_id", "collected_at",
        "schema", "service", "version",
    ]
    assert frame["income"].tolist() == [52000, -3] and str(frame["income"].dtype) == "int64"
    assert frame["p"].tolist() == [0.25, 1.5] and str(frame["p"].dtype) == "float64"
    assert frame["approved"].tolist() == [True, False] and str(frame["approved"].dtype) == "bool"
    assert frame["name"].tolist() == ["ann", "bo"] and frame["correlation_id"].tolist() == ["0042", "LOAN-2231"]
    assert pd.isna(frame["note"][0]) and frame["note"][1] == "x" and frame["span_id"].isna().all()
    assert frame["trace_id"].tolist() == ["0" * 31 + "1"] * 2
    assert str(frame["seen"].dtype) == str(frame["collected_at"].dtype) == "datetime64[us, UTC]"
    assert frame["seen"].tolist() == [seen, seen]
    assert frame["collected_at"].tolist() == [rows[0]["collected_at"], rows[1]["collected_at"]]
    assert frame[["service", "version", "schema"]].drop_duplicates().values.tolist() == [["credit", "v1", "s1"]]


def test_a_schema_change_across_parts_and_formats_is_unioned_by_name(tmp_path: Path) -> None:
    write_part(tmp_path, "inputs", [record(NOW - timedelta(hours=2), "a", income=1, age=30)], "jsonl", seq=1)
    write_part(tmp_path, "inputs", [record(NOW - timedelta(hours=1), "b", "s2", debt=0.5, income=2, age=40)],
               "parquet", seq=2)
    write_part(tmp_path, "inputs", [record(NOW - timedelta(minutes=1), "c", income=3, age=50)], "csv", seq=3)

    frame = modeldata.read(str(tmp_path), "best_model", "inputs")

    assert frame["correlation_id"].tolist() == ["a", "b", "c"]
    assert frame["income"].tolist() == [1, 2, 3] and frame["age"].tolist() == [30, 40, 50]
    assert frame["debt"].isna().tolist() == [True, False, True] and frame["debt"][1] == 0.5
    assert frame["schema"].tolist() == ["s1", "s2", "s1"]


def test_only_the_days_and_rows_of_the_window_are_read(tmp_path: Path) -> None:
    for days_ago in (10, 3, 0):
        at = NOW - timedelta(days=days_ago)
        write_part(tmp_path, "inputs", [record(at, f"{days_ago}d", x=days_ago)])
    # A file in an old day folder holding a newer row still counts by its folder: outside the window.
    stray = tmp_path / part_path("inputs", NOW - timedelta(days=20), "jsonl", seq=9)
    stray.parent.mkdir(parents=True)
    stray.write_bytes(encoded([record(NOW, "stray", x=-1)], "jsonl"))

    def ids(**window: Any) -> list[str]:
        return modeldata.read(str(tmp_path), "best_model", "inputs", **window)["correlation_id"].tolist()

    assert ids(since="7d") == ["3d", "0d"]
    assert ids(since=NOW - timedelta(days=11), until=NOW - timedelta(days=1)) == ["10d", "3d"]
    assert ids(since=(NOW - timedelta(days=3, minutes=1)).replace(tzinfo=None), until="1h") == ["3d"]
    assert ids(since=(NOW - timedelta(days=3) + timedelta(seconds=1)).isoformat()) == ["0d"]
    assert ids(since="1h") == ["0d"]


def test_an_empty_window_or_store_is_an_empty_frame(tmp_path: Path) -> None:
    write_part(tmp_path, "inputs", [record(NOW - timedelta(days=10), "old", x=1)])

    assert modeldata.read(str(tmp_path), "best_model", "inputs", since="1d").empty
    assert modeldata.read(str(tmp_path), "best_model", "inputs", since="12d", until="11d").empty
    assert modeldata.read(str(tmp_path), "best_model", "inputs", since="10d").empty  # its day, not its row
    assert modeldata.read(str(tmp_path / "nothing"), "best_model", "inputs").empty
    assert modeldata.joined(str(tmp_path), "other_model").empty


def test_versions_and_services_are_all_read_unless_one_is_named(tmp_path: Path) -> None:
    write_part(tmp_path, "inputs", [record(NOW - timedelta(minutes=3), "a", x=1)], version="v1")
    write_part(tmp_path, "inputs", [record(NOW - timedelta(minutes=2), "b", x=2)], version="v2")
    write_part(tmp_path, "inputs", [record(NOW - timedelta(minutes=1), "c", x=3)], service="batch", version="v2")

    every = modeldata.read(str(tmp_path), "best_model", "inputs")
    assert every[["correlation_id", "service", "version"]].values.tolist() == [
        ["a", "credit", "v1"], ["b", "credit", "v2"], ["c", "batch", "v2"]
    ]
    named = modeldata.read(str(tmp_path), "best_model", "inputs", version="v2", service="credit")
    assert named["correlation_id"].tolist() == ["b"]
    assert "version" not in named.columns and "service" not in named.columns


def test_temporaries_and_files_outside_the_date_folders_are_skipped(tmp_path: Path) -> None:
    write_part(tmp_path, "inputs", [record(NOW, "a", x=1)], "parquet")
    folder = (tmp_path / part_path("inputs", NOW, "parquet")).parent
    (folder / ".4242-0a1b2c3d-000002.parquet.host-4242-ab.tmp").write_bytes(b"PAR1 half a fi")
    (folder / ".4242-0a1b2c3d-000003.jsonl").write_bytes(b'{"half a li')
    (folder / "notes.txt").write_bytes(b"not a part")
    (folder.parent.parent.parent / "by-hand.jsonl").write_bytes(b"not in a date folder")

    assert modeldata.read(str(tmp_path), "best_model", "inputs")["correlation_id"].tolist() == ["a"]


def test_a_label_collected_ten_days_after_its_input_still_joins(tmp_path: Path) -> None:
    asked, answered = NOW - timedelta(days=12), NOW - timedelta(days=12) + timedelta(milliseconds=5)
    write_part(tmp_path, "inputs", [record(asked, "LOAN-2231", income=52000), record(asked, "LOAN-2232", income=1)])
    write_part(tmp_path, "predictions", [record(answered, "LOAN-2231", approved=True, p=0.9),
                                         record(answered, "LOAN-2232", approved=False, p=0.1)], "parquet")
    labelled = NOW - timedelta(days=2)
    write_part(tmp_path, "labels", [record(labelled, "LOAN-2231", label=1)], "csv", service="batch", version="v0")

    frame = modeldata.joined(str(tmp_path), "best_model", since="13d")

    assert frame["correlation_id"].tolist() == ["LOAN-2231", "LOAN-2232"]
    assert frame["income"].tolist() == [52000, 1] and frame["approved"].tolist() == [True, False]
    assert frame["label"][0] == 1 and pd.isna(frame["label"][1])
    assert frame["collected_at_inputs"].tolist() == [asked, asked]
    assert frame["collected_at_labels"][0] == labelled and frame["service_labels"][0] == "batch"
    assert {"collected_at_predictions", "schema_inputs", "version_predictions"} <= set(frame.columns)
    assert modeldata.joined(str(tmp_path), "best_model", since="7d").empty  # the inputs' window rules


def test_a_memory_store_is_read_through_duckdbs_registered_filesystem() -> None:
    fs, root = fsspec.filesystem("memory"), f"/modeldata-test-{uuid.uuid4().hex}"
    try:
        fs.pipe(f"{root}/{part_path('inputs', NOW, 'jsonl')}", encoded([record(NOW, "a", x=1)], "jsonl"))
        fs.pipe(f"{root}/{part_path('inputs', NOW, 'parquet', 2)}", encoded([record(NOW, "b", x=2)], "parquet"))
        fs.pipe(f"{root}/{part_path('labels', NOW, 'csv')}", encoded([record(NOW, "b", label=0)], "csv"))

        frame = modeldata.read(f"memory://{root}", "best_model", "inputs", since="1d")
        assert sorted(frame["correlation_id"]) == ["a", "b"] and sorted(frame["x"]) == [1, 2]
        assert modeldata.joined(f"memory://{root}", "best_model").set_index("correlation_id")["label"]["b"] == 0
    finally:
        fs.rm(root, recursive=True)


def test_without_duckdb_reading_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "duckdb", None)
    with pytest.raises(ImportError, match=r"duckdb is missing: pip install 'obsml\[query\]'"):
        modeldata.read(str(tmp_path), "best_model", "inputs")


def test_importing_modeldata_imports_neither_duckdb_nor_pandas() -> None:
    code = "import sys, obsml.modeldata; print(sorted({'duckdb', 'pandas', 'pyarrow'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "[]\n"


def test_an_azure_blob_store_is_read_through_adlfs(
    azurite: Azurite, azure_container: ContainerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    AzureBlobFileSystem.clear_instance_cache()  # fsspec caches by arguments, not by environment
    azure_container.upload_blob(f"obsml/{part_path('inputs', NOW, 'jsonl')}", encoded([record(NOW, "a", x=1)], "jsonl"))
    second = encoded([record(NOW, "b", x=2)], "parquet")
    azure_container.upload_blob(f"obsml/{part_path('inputs', NOW, 'parquet', 2)}", second)
    try:
        frame = modeldata.read(f"abfs://{azure_container.container_name}/obsml", "best_model", "inputs", since="1h")
    finally:
        AzureBlobFileSystem.clear_instance_cache()
    assert frame["correlation_id"].tolist() == ["a", "b"] and frame["x"].tolist() == [1, 2]


def test_rows_a_collector_writes_in_every_format_read_back_and_join(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    where = {"store": store, "service": "credit", "version": "10"}
    for fmt in ("jsonl", "csv", "parquet"):
        inputs = obsml.Collector("best_model", "inputs", ["income", "age"], format=fmt, **where)
        predictions = obsml.Collector("best_model", "predictions", ["p"], format=fmt, **where)
        ctx = inputs.collect([[1000.5, 40]], correlation_id=f"loan-{fmt}")
        predictions.collect([[0.25]], correlation_id=ctx.correlation_id)
    obsml.Collector("best_model", identifier="labels", feature_names=["defaulted"], **where).collect(
        [[True]], correlation_id="loan-csv"
    )
    assert obsml.flush(10)

    frame = modeldata.read(store, "best_model", "inputs")
    assert sorted(frame["correlation_id"]) == ["loan-csv", "loan-jsonl", "loan-parquet"]
    assert frame["income"].tolist() == [1000.5] * 3 and frame["age"].tolist() == [40] * 3
    assert str(frame["collected_at"].dtype) == "datetime64[us, UTC]"
    table = modeldata.joined(store, "best_model").set_index("correlation_id")
    assert table["p"].tolist() == [0.25] * 3
    assert table.loc["loan-csv", "defaulted"] == True  # noqa: E712 (a numpy bool)
    assert table["defaulted"].isna().sum() == 2


def test_the_rows_of_one_collect_join_row_by_row_not_each_to_each(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    inputs = obsml.Collector("best_model", "inputs", ["income"], store=store)
    predictions = obsml.Collector("best_model", "predictions", ["p"], store=store, format="csv")
    labels = obsml.Collector("best_model", "labels", ["defaulted"], store=store, format="parquet")
    ctx = inputs.collect([[10.0], [20.0], [30.0]], correlation_id="loan-3")
    predictions.collect([[0.1], [0.2], [0.3]], correlation_id=ctx.correlation_id)
    labels.collect([[False], [True]], correlation_id=ctx.correlation_id)  # the third not known yet
    inputs.collect([[40.0]], correlation_id="loan-1")
    assert obsml.flush(10)

    table = modeldata.joined(store, "best_model")

    assert table[["correlation_id", "row", "income"]].values.tolist() == [
        ["loan-3", 0, 10.0], ["loan-3", 1, 20.0], ["loan-3", 2, 30.0], ["loan-1", 0, 40.0],
    ]
    by_row = table.set_index(["correlation_id", "row"])
    assert by_row["p"].loc["loan-3"].tolist() == [0.1, 0.2, 0.3] and pd.isna(by_row.loc[("loan-1", 0), "p"])
    assert by_row["defaulted"].loc["loan-3"].tolist()[:2] == [False, True]
    assert pd.isna(by_row.loc[("loan-3", 2), "defaulted"])
    assert len(table) == 4 and "row_predictions" not in table.columns


# Text that looks like something else, read back per format: exact in parquet and (but for dates) in
# jsonl; csv is text, typed by DuckDB's sniffing. The README's "Model data: reading back" says so.
LOOKALIKES = ["0042", "1e3", "true", "2024-05-06"]
READ_BACK = {
    "parquet": ["0042", "1e3", "true", "2024-05-06"],
    "jsonl": ["0042", "1e3", "true", datetime(2024, 5, 6)],
    "csv": ["0042", 1000.0, True, datetime(2024, 5, 6)],
}


@pytest.mark.parametrize("fmt", sorted(READ_BACK))
def test_text_that_looks_like_a_number_a_boolean_or_a_date_reads_back_as_documented(
    tmp_path: Path, fmt: str
) -> None:
    store = str(tmp_path / "store")
    names = ["zip", "code", "flag", "day"]
    collector = obsml.Collector("best_model", "inputs", names, store=store, format=fmt)
    collector.collect([LOOKALIKES, LOOKALIKES])
    assert obsml.flush(10)

    frame = modeldata.read(store, "best_model", "inputs")

    got = [value.to_pydatetime() if isinstance(value, pd.Timestamp) else value for value in frame[names].iloc[0]]
    assert got == READ_BACK[fmt]
