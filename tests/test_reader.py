from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import fsspec
import pytest
from conftest import install_plugin

from obsml import ConfigError
from obsml._query import log_files, span_files
from obsml._reader import StoreReader


def span(name: str, start: str, **attributes: str) -> bytes:
    line = json.dumps({"name": name, "start_time": start, "attributes": attributes}, ensure_ascii=False)
    return line.encode() + b"\n"


def test_spans_come_back_from_every_part_file_in_start_order_whole_across_line_separators(tmp_path: Path) -> None:
    hour = tmp_path / "traces" / "2026" / "11" / "30" / "18"
    hour.mkdir(parents=True)
    first, late = span("first", "2026-11-30T18:00:01"), span("late", "2026-11-30T18:00:03")
    (hour / "11-aa-000001.jsonl").write_bytes(late + first)
    middle = span("middle", "2026-11-30T18:00:02", note="a\u2028b\u0085c")
    (hour / "12-bb-000001.jsonl").write_bytes(middle)
    (hour / ".12-bb-000002.jsonl.host-12-ab.tmp").write_bytes(b"half a li")  # a writer's temporary
    (tmp_path / "payloads" / "2026").mkdir(parents=True)
    (tmp_path / "payloads" / "2026" / "body.bin").write_bytes(b"body")

    reader = StoreReader.open(str(tmp_path))
    assert reader.part_files() == ["traces/2026/11/30/18/11-aa-000001.jsonl", "traces/2026/11/30/18/12-bb-000001.jsonl"]
    assert reader.files("payloads") == ["payloads/2026/body.bin"]
    spans = reader.spans()
    assert [s["name"] for s in spans] == ["first", "middle", "late"]
    assert spans[1]["attributes"]["note"] == "a\u2028b\u0085c"
    assert reader.shown("traces") == f"{tmp_path}/traces"


def test_a_remote_fsspec_store_is_read_the_same_way() -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/reader-test/traces/2026/11/30/18/1-a-000001.jsonl", span("remote", "2026-11-30T18:00:00"))
    reader = StoreReader.open("memory://reader-test")
    assert [s["name"] for s in reader.spans()] == ["remote"]
    assert reader.shown("traces") == "memory:///reader-test/traces"  # as fsspec spells a memory:// URL
    assert StoreReader.open("memory://reader-empty").spans() == []


def test_a_sink_plugin_store_cannot_be_read_back_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch, "box", "def make_sink(url, *, settings): ...\n", group="obsml.sinks",
                   factory="make_sink")
    with pytest.raises(ConfigError, match=r"the box:// store is a sink plugin's, which obsml cannot read back "
                       r"\(only fsspec stores"):
        StoreReader.open("box://somewhere")


def test_log_part_files_of_a_window_are_listed_by_hour_folder_like_spans(tmp_path: Path) -> None:
    for hour in ("09", "10", "11"):
        folder = tmp_path / "logs" / "2026" / "11" / "30" / hour
        folder.mkdir(parents=True)
        (folder / "11-aa-000001.jsonl").write_bytes(b"")
        (folder / ".11-aa-000002.jsonl.host-11-ab.tmp").write_bytes(b"half")  # a writer's temporary
    reader = StoreReader.open(str(tmp_path))
    ten = datetime(2026, 11, 30, 10, 30, tzinfo=timezone.utc)
    assert log_files(reader, ten, ten + timedelta(hours=1)) == [
        f"{tmp_path}/logs/2026/11/30/10/11-aa-000001.jsonl", f"{tmp_path}/logs/2026/11/30/11/11-aa-000001.jsonl",
    ]
    assert len(log_files(reader, None, None)) == 3
    assert span_files(reader, None, None) == []
    assert log_files(StoreReader.open(str(tmp_path / "none")), None, None) == []
