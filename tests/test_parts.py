from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import obsml
from obsml._parts import CHUNK_BYTES, PartFiles
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


def test_lines_past_a_chunk_wait_in_a_hidden_file_and_appear_whole_once_the_part_is_written(store: Path) -> None:
    parts = PartFiles(Store(obsml.Settings.load(store=str(store))), kind="span", written="spans_exported")
    lines = [b'{"n":%d,"pad":"%s"}\n' % (n, b"x" * 1000) for n in range(3 * CHUNK_BYTES // 1000)]
    before = exported()
    for line in lines:
        parts.add("traces/2026/12/01/04", line)
    folder = store / "traces/2026/12/01/04"
    assert part_files(store) == []  # nothing a reader would take for a part file yet
    assert [path.name.endswith(".tmp") and path.name.startswith(".") for path in folder.iterdir()] == [True]
    assert exported() == before
    assert parts.flush()
    [written] = part_files(store)
    assert written.read_bytes() == b"".join(lines)
    assert list(folder.iterdir()) == [written]  # no temporary left
    assert exported() == before + len(lines)


def test_a_part_whose_folder_vanished_before_it_was_written_is_counted_as_dropped_whole(store: Path) -> None:
    parts = PartFiles(Store(obsml.Settings.load(store=str(store))), kind="span", written="spans_exported")
    lines = [b"%d %s\n" % (n, b"y" * 2000) for n in range(2 * CHUNK_BYTES // 2000)]
    for line in lines:
        parts.add("traces/2026/12/01/05", line)
    shutil.rmtree(store / "traces")  # a cleaner took the folder with the part's temporary file in it
    assert not parts.flush()
    assert obsml.stats()["dropped"] == {"store_error": {"span": len(lines)}}
    parts.add("traces/2026/12/01/05", b"next\n")  # the next part starts afresh
    assert parts.flush()
    assert [path.read_bytes() for path in part_files(store)] == [b"next\n"]


# Run in a process of its own: forking pytest's process, with threads in it, warns on Python 3.12.
_FORK_SCRIPT = """
import os, sys
import obsml
from obsml._parts import CHUNK_BYTES, PartFiles
from obsml._store import Store

parts = PartFiles(Store(obsml.Settings.load(store=sys.argv[1])), kind="span", written="spans_exported")
for n in range(2 * CHUNK_BYTES // 1000):
    parts.add("traces/2026/12/01/06", b"parent %d %s\\n" % (n, b"p" * 1000))  # its temporary is open now
pid = os.fork()
if pid == 0:  # the child adds to the same folder and writes its own part, then leaves at once
    parts.add("traces/2026/12/01/06", b"child\\n")
    os._exit(0 if parts.flush() else 1)
_, status = os.waitpid(pid, 0)
parts.add("traces/2026/12/01/06", b"parent last\\n")
print(os.getpid(), pid, os.waitstatus_to_exitcode(status), parts.flush())
"""


def test_a_forked_child_leaves_its_parents_part_file_alone_and_writes_its_own(store: Path) -> None:
    run = subprocess.run([sys.executable, "-c", _FORK_SCRIPT, str(store)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    parent, child, child_exit, flushed = run.stdout.split()
    assert (child_exit, flushed) == ("0", "True")
    by_pid = {path.name.split("-")[0]: path.read_bytes() for path in part_files(store)}
    parent_lines = b"".join(b"parent %d %s\n" % (n, b"p" * 1000) for n in range(2 * CHUNK_BYTES // 1000))
    assert by_pid == {parent: parent_lines + b"parent last\n", child: b"child\n"}



# The parent's writer is encoding a batch (a Parquet file of rows takes a while) when the fork comes:
# the part files' lock is held, and in the child no thread will release it.
_FORK_MID_WRITE_SCRIPT = """
import os, signal, sys, threading
import obsml
from obsml._parts import PartFiles
from obsml._store import Store

parent, encoding, forked = os.getpid(), threading.Event(), threading.Event()

def encode(records):
    if os.getpid() == parent:
        encoding.set()
        forked.wait()
    return [b"".join(records)]

parts = PartFiles(Store(obsml.Settings.load(store=sys.argv[1])), kind="row", written="rows_collected", encode=encode)
parts.add("modeldata/m/2026/12/01/06", b"parent\\n", size=7)
writer = threading.Thread(target=parts.flush)
writer.start()
encoding.wait()
pid = os.fork()
if pid == 0:
    signal.alarm(10)  # a child stuck on the lock dies of it
    parts.add("modeldata/m/2026/12/01/06", b"child\\n", size=6)
    os._exit(0 if parts.flush() else 1)
forked.set()
writer.join()
_, status = os.waitpid(pid, 0)
print(os.getpid(), pid, os.waitstatus_to_exitcode(status))
"""


def test_a_child_forked_while_its_parent_writes_a_part_file_writes_its_own(store: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", _FORK_MID_WRITE_SCRIPT, str(store)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    parent, child, child_exit = run.stdout.split()
    assert child_exit == "0", "the child never got the part files' lock"
    by_pid = {path.name.split("-")[0]: path.read_bytes() for path in part_files(store)}
    assert by_pid == {parent: b"parent\n", child: b"child\n"}


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
