from __future__ import annotations

import os
import re
import threading
from pathlib import Path

import obsml
from obsml._parts import PartFiles
from obsml._store import Store
from obsml._writer import Writer


def part_files(store: Path) -> list[Path]:
    return sorted(store.rglob("*.jsonl"))


def exported() -> int:
    return int(obsml.stats().get("spans_exported", 0))  # type: ignore[call-overload]


def test_records_are_batched_per_folder_into_part_files_named_by_writer_and_sequence(store: Path) -> None:
    parts = PartFiles(Store(obsml.Settings.load(store=str(store))), kind="span", written="spans_exported")
    before = exported()
    parts.add("modeldata/a", b'{"x":1}\n')
    parts.add("modeldata/b", b'{"x":2}\n')
    parts.add("modeldata/a", b'{"x":3}\n')
    assert part_files(store) == []  # batched until due
    assert exported() == before  # counted only once written
    assert parts.flush()
    written = part_files(store)
    assert [path.parent.name for path in written] == ["a", "b"]
    names = [re.fullmatch(r"(\d+)-[0-9a-f]{8}-(\d{6})\.jsonl", path.name) for path in written]
    assert all(name is not None and int(name[1]) == os.getpid() for name in names)
    assert sorted(int(name[2]) for name in names if name) == [1, 2]
    assert written[0].read_bytes() == b'{"x":1}\n{"x":3}\n'
    assert exported() == before + 3


def test_a_batch_is_written_as_soon_as_it_reaches_its_record_count(store: Path) -> None:
    store_object = Store(obsml.Settings.load(store=str(store)))
    parts = PartFiles(store_object, kind="span", written="spans_exported", max_records=2)
    parts.add("modeldata/a", b"1\n")
    assert part_files(store) == []
    parts.add("modeldata/a", b"2\n")
    assert [path.read_bytes() for path in part_files(store)] == [b"1\n2\n"]


class Nothing:
    nbytes = 0

    def run(self) -> None:
        pass


class Ticks:
    def __init__(self) -> None:
        self.forced = threading.Event()

    def tick(self, force: bool) -> None:
        if force:
            self.forced.set()


def test_a_flush_ticks_every_ticker_of_the_writer() -> None:
    first, second = Ticks(), Ticks()
    writer = Writer(first, second, max_items=10, max_bytes=1000, interval=3600, exit_timeout=1)
    try:
        assert writer.submit(Nothing())  # the writer thread starts with its first job
        assert writer.flush(10)
        assert first.forced.is_set() and second.forced.is_set()
    finally:
        writer.close(10)
