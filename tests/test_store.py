"""The local store under faults: folders moved away, a full disk, a crash's temporary files, drop reports."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apps import make_app
from conftest import read_spans, running_server, span_by_correlation_id

import obsml
from obsml._objects import utc_folders
from obsml._stats import STATS
from obsml._store import _HOST, Store

OPTIONS = {"service": "credit", "model": "best_model", "version": "10", "flush_interval": 0.05}
BIG = bytes(range(256)) * 300  # 75 KiB: offloaded to payloads/


def post_all(url: str, ids: list[str], body: bytes) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        for correlation_id in ids:
            response = client.post("/echo", content=body, headers={"x-correlation-id": correlation_id})
            assert (response.status_code, response.content) == (200, body)


def uris(span: dict[str, Any]) -> list[str]:
    return [span["attributes"][f"obsml.{d}.body.uri"] for d in ("request", "response")
            if f"obsml.{d}.body.uri" in span["attributes"]]


def test_store_folders_moved_away_mid_traffic_are_made_again_and_later_spans_and_payloads_land(
    store: Path, tmp_path: Path
) -> None:
    with running_server(make_app(store=str(store), **OPTIONS)) as url:
        post_all(url, [f"before-{n}" for n in range(3)], BIG)
        span_by_correlation_id(store, "before-2")  # the last one is written too
        for folder in ("traces", "payloads"):  # a log shipper takes them away
            (store / folder).rename(tmp_path / f"shipped-{folder}")
        post_all(url, [f"after-{n}" for n in range(3)], BIG)
        span_by_correlation_id(store, "after-2")
    spans = {span["attributes"]["obsml.correlation_id"]: span for span in read_spans(store)}
    assert sorted(spans) == [f"after-{n}" for n in range(3)]
    for span in spans.values():
        assert [Path(uri.removeprefix("file://")).read_bytes() for uri in uris(span)] == [BIG, BIG]
    assert obsml.stats()["dropped"] == {}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs, filled by the test (needs root and a sandbox that allows mounts)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_full_disk_keeps_no_payload_without_the_span_that_names_it(small_disk: Path) -> None:
    store = small_disk / "store"
    body = b"f" * 30_000
    sent: list[str] = []
    with running_server(make_app(store=str(store), inline_limit=1000, **OPTIONS)) as url:
        refused_at = None
        for n in range(200):  # 60 KB of bodies a request: the 2 MiB disk fills within ~35
            sent.append(f"full-{n}")
            post_all(url, sent[-1:], body)
            dropped: dict[str, dict[str, int]] = obsml.stats()["dropped"]  # type: ignore[assignment]
            if refused_at is None and any(kinds.get("payload") for kinds in dropped.values()):
                refused_at = n
            if refused_at is not None and n >= refused_at + 10:
                break
        assert refused_at is not None, "the disk never filled"
        span_by_correlation_id(store, sent[-1])  # the last one reached the writer, and was written
    spans = read_spans(store)
    assert sorted(span["attributes"]["obsml.correlation_id"] for span in spans) == sorted(sent)
    named = {uri.removeprefix("file://") for span in spans for uri in uris(span)}
    on_disk = {str(path) for path in store.glob("payloads/*/*/*/*")}
    assert on_disk == named  # no payload without its span, no span naming a missing payload
    lost = Counter(span["attributes"].get(f"obsml.{d}.body.lost") for span in spans for d in ("request", "response"))
    stats = obsml.stats()
    assert set(stats["dropped"]) == {"disk_full"}
    assert lost["disk_full"] == stats["dropped"]["disk_full"]["payload"] >= 2
    assert stats["spans_exported"] == len(sent)


def dead_pid() -> int:
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    return int(process.stdout)


def test_temporary_files_of_dead_processes_are_swept_at_start_and_a_live_ones_kept(store: Path) -> None:
    payloads = store / "payloads" / utc_folders(time.time_ns())
    traces = store / "traces" / utc_folders(time.time_ns() - 3600 * 10**9, hourly=True)
    payloads.mkdir(parents=True)
    traces.mkdir(parents=True)
    dead = dead_pid()
    crashed = [payloads / f".{'a' * 32}-{'b' * 16}-request.bin.{_HOST}-{dead}-0badf00d.tmp",
               traces / f".{dead}-1234abcd-000007.jsonl.{_HOST}-{dead}-12345678.tmp"]
    kept = [payloads / f".{'c' * 32}-{'d' * 16}-request.bin.{_HOST}-{os.getpid()}-0badf00d.tmp",  # alive
            payloads / f".{'e' * 32}-{'f' * 16}-request.bin.0123abcd-{dead}-0badf00d.tmp",  # another host's
            payloads / f"{'a' * 32}-{'b' * 16}-request.bin"]  # a whole object
    for path in (*crashed, *kept):
        path.write_bytes(b"x" * 1000)

    Store(obsml.Settings.load(store=str(store)))

    assert [path.exists() for path in crashed] == [False, False]
    assert [path.exists() for path in kept] == [True, True, True]
    assert obsml.stats()["temp_files_removed"] == 2


def test_drop_lines_give_the_counts_by_kind_since_the_last_line_and_the_os_error(
    store: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(STATS.log_throttle, "interval", 0.2)  # the rest of the minute, shortened
    store.mkdir(parents=True)
    (store / "traces").write_text("a file where a folder should be")
    (store / "payloads").write_text("the same for payloads")
    with caplog.at_level(logging.WARNING, logger="obsml"), running_server(
        make_app(store=str(store), **OPTIONS)
    ) as url:
        post_all(url, [f"refused-{n}" for n in range(4)], BIG)
        deadline = time.monotonic() + 10  # until the last span reached the writer and the lines are out
        while True:
            obsml.flush(10)
            lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("obsml dropped")]
            logged = Counter[str]()
            for line in lines:
                for n, kind in re.findall(r"(\d+) (\w+)\(s\)", line.partition(":")[0]):
                    logged[kind] += int(n)
            if logged == Counter({"payload": 8, "span": 4}) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    stats = obsml.stats()
    assert stats["dropped"] == {"store_error": {"payload": 8, "span": 4}}
    assert stats.get("spans_exported", 0) == 0  # accepted by the exporter, never written
    assert logged == Counter({"payload": 8, "span": 4}), lines
    assert all(line.partition(": ")[2].startswith("store_error (first error: ") for line in lines), lines
    assert re.search(r"\[Errno \d+\] .*traces|\[Errno \d+\] .*payloads", lines[0]), lines[0]


def modes_under(root: Path) -> Counter[tuple[str, str]]:
    """(kind, octal mode) of ``root`` and everything under it."""
    entries = [root, *root.rglob("*")]
    return Counter(("dir" if p.is_dir() else "file", oct(p.stat().st_mode & 0o777)) for p in entries)


def test_a_local_store_and_a_spool_hold_private_files_in_private_folders_under_the_usual_umask(tmp_path: Path) -> None:
    store, spool = tmp_path / "deep" / "store", tmp_path / "spool"
    umask = os.umask(0o022)  # the usual default: files 0644, folders 0755 unless obsml says otherwise
    try:
        app = make_app(store=str(store), flush_interval=0.1)
        with running_server(app) as url:
            httpx.post(f"{url}/echo", content=b"x" * 100_000, headers={"x-correlation-id": "private"})
        span_by_correlation_id(store, "private")
        remote = Store(obsml.Settings.load(store="memory://private-spool", spool_dir=str(spool)))
        assert remote.delivery is not None
        record = remote.delivery.spool.open_record("payloads/x.bin")
        record.write(b"body")
        spooled = modes_under(spool)  # with a record being written
        record.abort()
        remote.delivery.spool.release_directory()
    finally:
        os.umask(umask)
    local = modes_under(tmp_path / "deep")
    assert set(local) == {("dir", "0o700"), ("file", "0o600")}
    assert local["file", "0o600"] >= 3  # a span part file and two offloaded bodies
    assert set(spooled) - {("dir", oct(spool.stat().st_mode & 0o777))} == {
        ("dir", "0o700"), ("file", "0o600"),
    }


@pytest.mark.parametrize(
    "relative",
    ["../escape.json", "payloads/../../escape.json", "payloads/2026/./x", "/etc/escape", "a//b", "", "a/", "sp ace"],
)
def test_no_object_is_opened_outside_the_store_whatever_its_path_says(tmp_path: Path, relative: str) -> None:
    store = Store(obsml.Settings.load(store=str(tmp_path / "store")))
    with pytest.raises(ValueError, match="is not an object path in the store"):
        store.open_atomic(relative)
    with pytest.raises(ValueError, match="is not an object path in the store"):
        store.offload("plugin", relative, b"x", time_ns=time.time_ns())
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == []
