from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from collector_apps import asgi_app
from conftest import running_gunicorn, running_server, span_by_correlation_id
from PIL import Image

import obsml
from obsml import Collector, ConfigError
from obsml._ids import correlation_keep, sampling_threshold

WHEN = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=timezone.utc)
NAMES = ["count", "score", "approved", "label", "note", "seen"]
ROWS = [[1, 2.5, True, "x", None, WHEN], [2, -0.5, False, "y", "z", WHEN]]
ID_FIELDS = ["correlation_id", "row", "trace_id", "span_id", "collected_at", "schema"]


def part_files(store: Path, suffix: str = "") -> list[Path]:
    return sorted(p for p in (store / "modeldata").rglob(f"*{suffix}") if p.is_file())


def read_records(store: Path) -> list[dict[str, Any]]:
    """Every record of every part file, read with json, csv or pyarrow as a user would."""
    records: list[dict[str, Any]] = []
    for path in part_files(store):
        if path.suffix == ".jsonl":
            records += [json.loads(line) for line in path.read_text().splitlines()]
        elif path.suffix == ".csv":
            with path.open(newline="") as file:
                records += list(csv.DictReader(file))
        else:
            records += pq.read_table(path).to_pylist()
    return records


def as_written(value: Any, format: str) -> Any:
    if format == "parquet":
        return value
    if isinstance(value, datetime):
        return value.isoformat(timespec="microseconds")
    if format == "jsonl":
        return value
    if value is None:
        return ""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


INPUTS = {
    "rows": lambda: (ROWS, NAMES),
    "dicts": lambda: ([dict(zip(NAMES, row, strict=True)) for row in ROWS], None),
    "dataframe": lambda: (pd.DataFrame(ROWS, columns=NAMES), None),
}


@pytest.mark.parametrize("format", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_each_input_type_round_trips_with_its_column_names_values_and_types(
    store: Path, format: str, kind: str
) -> None:
    data, names = INPUTS[kind]()
    Collector("m", "inputs", names, store=str(store), format=format).collect(data, correlation_id="rt-1")
    assert obsml.flush(10)
    records = read_records(store)
    assert [list(r)[: len(NAMES)] for r in records] == [NAMES, NAMES]
    assert [[r[n] for n in NAMES] for r in records] == [[as_written(v, format) for v in row] for row in ROWS]
    assert all(r["correlation_id"] == "rt-1" for r in records)
    assert obsml.stats()["rows_collected"] == 2
    if format == "parquet":
        schema = pq.read_schema(part_files(store)[0])
        assert [schema.field(n).type for n in NAMES] == [
            pa.int64(),
            pa.float64(),
            pa.bool_(),
            pa.string(),
            pa.string(),
            pa.timestamp("us", tz="UTC"),
        ]
        assert schema.field("collected_at").type == pa.timestamp("us", tz="UTC")


@pytest.mark.parametrize("format", ["jsonl", "csv", "parquet"])
def test_numpy_arrays_and_scalars_round_trip_with_default_column_names(store: Path, format: str) -> None:
    collector = Collector("m", "arrays", store=str(store), format=format)
    collector.collect(np.array([[1, 2], [3, 4]], dtype=np.int64))
    collector.collect(np.array([0.25, 0.5]))
    collector.collect(7)
    assert obsml.flush(10)
    got = [{k: v for k, v in r.items() if k not in ID_FIELDS and v not in (None, "")} for r in read_records(store)]
    expected = [{"f0": 1, "f1": 2}, {"f0": 3, "f1": 4}, {"f0": 0.25}, {"f0": 0.5}, {"f0": 7}]
    assert got == [{k: as_written(v, format) for k, v in row.items()} for row in expected]


def test_part_files_follow_the_modeldata_layout_and_records_carry_ids_time_and_a_schema_fingerprint(
    store: Path,
) -> None:
    collector = Collector("credit", "inputs", ["a"], service="scoring", version="v3", store=str(store))
    collector.collect([[1]])
    assert obsml.flush(10)
    Collector("credit", "inputs", ["a", "b"], service="scoring", version="v3", store=str(store)).collect([[1, 2]])
    assert obsml.flush(10)
    paths = [p.relative_to(store).as_posix() for p in part_files(store)]
    day = datetime.now(timezone.utc).strftime("%Y/%m/%d")
    pattern = rf"modeldata/scoring/credit/v3/inputs/{day}/\d+-[0-9a-f]{{8}}-\d{{6}}\.jsonl"
    assert len(paths) == 2 and all(re.fullmatch(pattern, p) for p in paths), paths
    first, second = read_records(store)
    assert list(first) == ["a", *ID_FIELDS]
    assert first["trace_id"] is None and first["span_id"] is None  # outside a request
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00", first["collected_at"])
    assert re.fullmatch(r"[0-9a-f]{16}", first["schema"]) and first["schema"] != second["schema"]
    assert obsml.stats()["modeldata_files_written"] == 2


def test_inside_a_request_under_uvicorn_rows_take_the_requests_ids_and_the_middlewares_store(store: Path) -> None:
    with running_server(asgi_app(str(store))) as url:
        answer = httpx.get(f"{url}/score", headers={"x-correlation-id": "loan-17"}).json()
    assert obsml.flush(10)
    span = span_by_correlation_id(store, "loan-17")
    assert answer == {"correlation_id": "loan-17", "trace_id": span["trace_id"], "span_id": span["span_id"], "rows": 1}
    records = read_records(store)
    assert sorted(p.relative_to(store).parts[:5] for p in part_files(store)) == [
        ("modeldata", "scoring", "credit", "7", "inputs"),
        ("modeldata", "scoring", "credit", "7", "predictions"),
    ]
    assert [(r["correlation_id"], r["trace_id"], r["span_id"]) for r in records] == 2 * [
        ("loan-17", span["trace_id"], span["span_id"])
    ]


def test_inside_a_request_under_gunicorn_rows_take_the_requests_correlation_id(store: Path) -> None:
    with running_gunicorn("collector_apps:wsgi_app", store, "--workers", "1") as server:
        answer = httpx.get(f"{server.url}/score", headers={"x-correlation-id": "loan-18"}, timeout=30).json()
        assert server.stop() == 0  # the worker flushes its part files as it exits
    records = read_records(store)
    assert answer["correlation_id"] == "loan-18"
    assert {(r["correlation_id"], r["trace_id"]) for r in records} == {("loan-18", answer["trace_id"])}
    assert {r.get("income", r.get("approved")) for r in records} == {1000.5, True}


def test_two_gunicorn_workers_writing_the_same_identifier_never_clash(store: Path, tmp_path: Path) -> None:
    meeting = tmp_path / "meeting"
    meeting.mkdir()
    ids = [f"loan-{i}" for i in range(42)]
    with running_gunicorn("collector_apps:wsgi_app", store, "--workers", "2") as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:

            def score(correlation_id: str, **params: str) -> None:
                headers = {"x-correlation-id": correlation_id, "connection": "close"}
                assert client.get("/score", params=params, headers=headers).status_code == 200

            # Two requests that each wait for the other: one per worker, collecting at the same time.
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda i: score(ids[i], meet=str(meeting)), range(2)))
            for correlation_id in ids[2:]:
                score(correlation_id)
        assert server.stop() == 0
    assert len(list(meeting.iterdir())) == 2  # two worker pids met
    inputs = [p for p in part_files(store) if p.relative_to(store).parts[4] == "inputs"]
    writers = {p.name.rsplit("-", 1)[0] for p in inputs}  # <pid>-<random>-<seq>.jsonl
    assert len(writers) == 2, writers
    assert len({p.name for p in inputs}) == len(inputs)  # every part file its own writer id and sequence
    # Every row once: a part file overwritten by the other worker would have lost its rows.
    assert sorted(r["correlation_id"] for r in read_records(store) if "income" in r) == sorted(ids)


def test_a_collector_outside_any_request_writes_to_obsml_store_and_flushes_at_exit(store: Path) -> None:
    script = textwrap.dedent("""
        from obsml import Collector
        Collector("credit", "labels").collect([[1]], correlation_id="LOAN-2231")
    """)
    env = {
        "OBSML_STORE": str(store),
        "OBSML_FLUSH_INTERVAL": "3600",
        "PYTHONPATH": str(Path(obsml.__file__).parents[1]),
    }
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    [path] = part_files(store)
    assert path.relative_to(store).parts[:5] == ("modeldata", "default", "credit", "0", "labels")
    assert [(r["f0"], r["correlation_id"]) for r in read_records(store)] == [(1, "LOAN-2231")]


MISUSE = {
    "width": ([[1, 2, 3]], "3 value(s)"),
    "unsupported type": ([[1, {"nested": 1}]], "column 'b': unsupported value type dict"),
    "media": ([[1, b"\x89PNG"]], "column 'b' holds media (bytes)"),
    "media array": ([[1, np.zeros((2, 2, 3))]], "column 'b' holds media (ndarray)"),
    "PIL image": ([[1, Image.new("RGB", (2, 2))]], "column 'b' holds media (Image)"),
    "reserved column": (pd.DataFrame({"a": [1], "row": [2]}), "column(s) row: names obsml gives its own columns"),
}


@pytest.mark.parametrize("case", sorted(MISUSE))
def test_misuse_raises_under_strict_mode(store: Path, case: str) -> None:
    data, message = MISUSE[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        Collector("m", "inputs", ["a", "b"], store=str(store)).collect(data)


@pytest.mark.parametrize("case", sorted(MISUSE))
def test_misuse_is_counted_and_logged_once_outside_strict_mode(
    store: Path, case: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data, message = MISUSE[case]
    collector = Collector("m", "inputs", ["a", "b"], store=str(store))
    monkeypatch.setattr("obsml._stats._strict", False)  # after the collector, which turns OBSML_STRICT on
    assert [collector.collect(data).rows for _ in range(3)] == [0, 0, 0]
    assert obsml.stats()["dropped"] == {"invalid": {"row": 3}}
    assert sum("refused rows" in r.getMessage() and message in r.getMessage() for r in caplog.records) == 1
    assert obsml.flush(10) and not (store / "modeldata").exists()


def test_refused_rows_are_counted_one_by_one_whatever_held_them(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    collector = Collector("m", "inputs", store=str(store))
    monkeypatch.setattr("obsml._stats._strict", False)
    collector.collect(pd.DataFrame({"a": range(4), "row": range(4)}))  # a reserved column
    collector.collect(np.array([[1, 2], [3, 4], [5, 6]], dtype=object))  # an object array
    collector.collect([[1], [2, 3]])  # widths differ
    collector.collect({"a": 1})  # one value of an unsupported type
    assert obsml.stats()["dropped"] == {"invalid": {"row": 4 + 3 + 2 + 1}}


def test_media_values_are_offloaded_when_asked_and_the_row_holds_their_uri_size_and_sha256(store: Path) -> None:
    array = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    image = Image.frombytes("RGB", (2, 2), bytes(range(12)))
    Collector("m", "inputs", ["id", "audio", "array", "image"], store=str(store), media="offload").collect(
        [[1, b"RIFF....WAVE", array, image]]
    )
    assert obsml.flush(10)
    [record] = read_records(store)
    assert record["id"] == 1 and record["audio_size"] == 12
    stored = {}
    for column in ("audio", "array", "image"):
        path = Path(record[f"{column}_uri"].removeprefix("file://"))
        assert path.is_relative_to(store / "modeldata-media" / "default" / "m" / "0" / "inputs")
        stored[column] = data = path.read_bytes()
        assert record[f"{column}_size"] == len(data)
        assert record[f"{column}_sha256"] == hashlib.sha256(data).hexdigest()
        assert path.suffix == {"audio": ".bin", "array": ".npy", "image": ".png"}[column]
    assert stored["audio"] == b"RIFF....WAVE"
    assert np.load(io.BytesIO(stored["array"])).tolist() == array.tolist()
    png = io.BytesIO()
    image.save(png, format="PNG")
    assert stored["image"] == png.getvalue()  # the PNG PIL encodes, which decodes to the same pixels
    assert Image.open(io.BytesIO(stored["image"])).tobytes() == image.tobytes()


def test_collecting_plain_values_never_imports_pil_numpy_or_pandas(store: Path) -> None:
    script = f"""
import sys, obsml
obsml.Collector("m", "inputs", store={str(store)!r}).collect([[1, "x", None]])
assert obsml.flush(10)
print(sorted({{"PIL", "numpy", "pandas"}} & set(sys.modules)))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout == "[]\n"


def test_sampling_keeps_or_skips_every_identifier_of_one_correlation_id_together(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBSML_SAMPLE_RATE", "0.5")
    monkeypatch.setenv("OBSML_STORE", str(store))
    ids = [f"loan-{i}" for i in range(40)]
    for identifier in ("inputs", "predictions", "labels"):
        collector = Collector("m", identifier)
        for correlation_id in ids:
            collector.collect([[1]], correlation_id=correlation_id)
    assert obsml.flush(10)
    kept = {identifier: set() for identifier in ("inputs", "predictions", "labels")}
    for path in part_files(store):
        kept[path.relative_to(store).parts[4]] |= {
            json.loads(line)["correlation_id"] for line in path.read_text().splitlines()
        }
    expected = {i for i in ids if correlation_keep(i, sampling_threshold(0.5))}
    assert 0 < len(expected) < len(ids)
    assert kept == {"inputs": expected, "predictions": expected, "labels": expected}


def test_a_collector_turned_off_writes_nothing(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBSML_COLLECT_ENABLED", "false")
    Collector("m", "inputs", store=str(store)).collect([[1]])
    Collector("m", "outputs", store=str(store), enabled=False).collect([[1]])
    assert obsml.flush(10) and not (store / "modeldata").exists()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"model": "../x", "identifier": "inputs"}, "model="),
        ({"model": "m", "identifier": "in/puts"}, "service="),
        ({"model": "m", "identifier": "inputs", "format": "xml"}, "format="),
        ({"model": "m", "identifier": "inputs", "media": "inline"}, "media="),
        ({"model": "m", "identifier": "inputs", "feature_names": ["p", "row"]}, "feature_names row: "),
    ],
)
def test_a_bad_name_or_option_is_a_config_error_at_construction(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Collector(**arguments)


def test_parquet_without_pyarrow_is_a_config_error_naming_the_extra(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ConfigError, match=re.escape("pip install 'obsml[parquet]'")):
        Collector("m", "inputs", store=str(store), format="parquet")
