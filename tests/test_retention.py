"""``obsml retention`` over stores written by a real uvicorn server and a real Collector (local and
Azurite), with old partitions made by copying their real objects into older date folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from adlfs import AzureBlobFileSystem
from azure.storage.blob import ContainerClient
from azurite import Azurite
from conftest import drawn_on_a_terminal
from servers import RunningCommand, free_port, running_command, store_env

from obsml.cli import main

ROOT = Path(__file__).resolve().parent.parent
# Folders between a top folder and its date partition, and whether its partitions are hours.
LAYOUT = {"traces": (0, True), "logs": (0, True), "payloads": (0, False), "modeldata": (4, False),
          "modeldata-media": (4, False), "_obsml/status": (0, False)}
STATUS_ON = {"OBSML_STATUS": "true"}  # off for the tests (conftest); retention reads the writers' statuses
COLLECT = """
import sys, obsml
obsml.Collector("best_model", "inputs", ["id", "scan"], store=sys.argv[1], service="credit", version="10",
                media="offload").collect([[1, b"\\x89PNG scan"]])
obsml.flush(30)
"""


@contextmanager
def serving(store: str, tmp_path: Path, env: dict[str, str] | None = None) -> Iterator[RunningCommand]:
    """The test app under a real uvicorn, its bodies over 64 bytes offloaded to ``payloads/``."""
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "apps:app", "--port", str(port), "--log-level", "warning"]
    server_env = {**store_env(Path(store)), **STATUS_ON, "OBSML_STORE": store, "OBSML_INLINE_LIMIT": "64",
                  **(env or {})}
    with running_command(command, port, tmp_path / f"uvicorn-{port}.log", server_env) as server:
        yield server


def write_store(store: str, tmp_path: Path, env: dict[str, str] | None = None) -> None:
    """Spans, a body and a status from a server that then exits; model data rows and media from a Collector."""
    with serving(store, tmp_path, env) as server:
        assert httpx.post(f"{server.url}/echo", content=b"x" * 1000, timeout=30).status_code == 200
        server.stop()
    subprocess.run([sys.executable, "-c", COLLECT, store], check=True, timeout=120,
                   env={**os.environ, **STATUS_ON, **(env or {})})


def top_of(relative: str) -> str:
    return "_obsml/status" if relative.startswith("_obsml/status/") else relative.split("/")[0]


def partition_of(relative: str) -> str:
    """The date folder an object is in."""
    top = top_of(relative)
    depth, hourly = LAYOUT[top]
    return "/".join(relative.split("/")[: top.count("/") + 1 + depth + (4 if hourly else 3)])


def span_of(partition: str) -> timedelta:
    return timedelta(hours=1) if LAYOUT[top_of(partition)][1] else timedelta(days=1)


def end_of(partition: str) -> datetime:
    """When a partition ends, by its folder name."""
    hourly = span_of(partition) == timedelta(hours=1)
    date = partition[-13:] if hourly else partition[-10:]
    start = datetime.strptime(date, "%Y/%m/%d/%H" if hourly else "%Y/%m/%d").replace(tzinfo=timezone.utc)
    return start + span_of(partition)


def moved(relative: str, age: timedelta, top: str | None = None) -> str:
    """Where a copy of ``relative`` goes in the partition ``age`` earlier (under ``top``, when given)."""
    partition = partition_of(relative)
    hourly = span_of(partition) == timedelta(hours=1)
    earlier = (end_of(partition) - span_of(partition) - age).strftime("%Y/%m/%d/%H" if hourly else "%Y/%m/%d")
    base = partition[: len(partition) - len(earlier)]
    if top is not None:
        base = top + base[len(top_of(relative)):]
    return f"{base}{earlier}{relative[len(partition):]}"


def local_files(store: Path) -> dict[str, int]:
    return {str(path.relative_to(store)): path.stat().st_size for path in store.rglob("*") if path.is_file()}


def copy_local(store: Path, relative: str, target: str) -> None:
    (store / target).parent.mkdir(parents=True, exist_ok=True)
    (store / target).write_bytes((store / relative).read_bytes())


def retention(capsys: pytest.CaptureFixture[str], store: str, *options: str) -> tuple[int, str, str]:
    code = main(["retention", "--store", store, *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def listed(out: str) -> dict[str, tuple[int, int]]:
    """The dry run's table: partition → (objects, bytes)."""
    lines = out.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("PARTITION"))) + 1
    rows = [line.split() for line in lines[start:lines.index("", start)]]
    return {row[0]: (int(row[1].replace(",", "")), int(row[2].replace(",", ""))) for row in rows}


def old_copies(files: dict[str, int]) -> dict[str, str]:
    """Copies of each real object 40 days back (old for 30d) and 29 days back (not old), plus logs/."""
    copies = {moved(name, timedelta(days=age)): name for name in files for age in (40, 29)}
    spans = next(name for name in files if name.startswith("traces/"))
    copies[moved(spans, timedelta(days=40), top="logs")] = spans
    compacted = moved(spans, timedelta(days=40)).rsplit("/", 1)[0]
    copies[f"{compacted}/compacted-0a1b.parquet"] = spans  # as obsml compact leaves a closed hour
    copies[f"{compacted}/compacted-0a1b.manifest.json"] = spans
    return copies


def test_the_dry_run_lists_exactly_the_old_partitions_and_yes_deletes_exactly_those(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    write_store(str(store), tmp_path)
    real = local_files(store)
    assert {name.split("/")[0] for name in real} == {"traces", "payloads", "modeldata", "modeldata-media", "_obsml"}
    for target, source in old_copies(real).items():
        copy_local(store, source, target)
    before = local_files(store)
    cutoff = datetime.now(timezone.utc) - timedelta(days=30)
    old = {partition_of(name) for name in before if end_of(partition_of(name)) <= cutoff}
    assert len(old) == 6  # traces, logs, payloads, modeldata, modeldata-media, status: each 40 days back

    code, out, err = retention(capsys, str(store), "--older-than", "30d")
    assert (code, err) == (0, "")
    table = listed(out)
    assert set(table) == old
    assert local_files(store) == before  # a dry run deletes nothing
    for partition, (objects, size) in table.items():
        inside = [n for name, n in before.items() if name.startswith(f"{partition}/")]
        assert (objects, size) == (len(inside), sum(inside))
    total = sum(size for _, size in table.values())
    assert out.splitlines()[-1].startswith(f"would delete 6 partitions: {sum(o for o, _ in table.values())} "
                                           f"objects, {total:,} bytes")

    code, out, err = retention(capsys, str(store), "--older-than", "30d", "--yes")
    assert (code, err) == (0, "")
    assert set(listed(out)) == old and out.splitlines()[-1].startswith("deleted 6 partitions: ")
    assert local_files(store) == {name: n for name, n in before.items() if partition_of(name) not in old}
    tops = {store / top for top in LAYOUT} | {store / "_obsml"}
    assert not [path for path in store.rglob("*") if path.is_dir() and path not in tops and not any(path.iterdir())]

    code, out, _ = retention(capsys, str(store), "--older-than", "30d", "--yes")
    assert (code, out.splitlines()[-1]) == (0, "nothing to delete")


def test_a_zero_limit_never_deletes_the_current_partition_and_include_picks_folders(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    write_store(str(store), tmp_path)
    real = local_files(store)
    for name in real:
        copy_local(store, name, moved(name, timedelta(hours=1) if name.startswith("traces/") else timedelta(days=1)))
    before = local_files(store)

    code, out, _ = retention(capsys, str(store), "--older-than", "0s", "--include", "payloads", "--yes")
    assert code == 0 and all(partition.startswith("payloads/") for partition in listed(out))
    now = datetime.now(timezone.utc)
    assert {partition_of(name) for name in local_files(store)} == {
        partition_of(name) for name in before if not name.startswith("payloads/") or end_of(partition_of(name)) > now
    }

    code, out, _ = retention(capsys, str(store), "--older-than", "0s", "--yes")
    now = datetime.now(timezone.utc)
    assert code == 0
    assert {partition_of(name) for name in local_files(store)} == {
        partition_of(name) for name in before if end_of(partition_of(name)) > now
    } != set()  # the current partitions stay, whatever the limit


def wait_for_live_status(store: Path) -> dict[str, object]:
    deadline = time.monotonic() + 60
    while True:
        statuses = [json.loads(path.read_text()) for path in (store / "_obsml" / "status").rglob("*.json")]
        if statuses and not statuses[0]["exited"]:
            return statuses[0]
        assert time.monotonic() < deadline, "the server's writer should have written its status"
        time.sleep(0.1)


def test_a_live_writers_partitions_are_kept_saying_why_and_go_once_it_has_exited(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    # The partitions are named by hour: the test must not run across an hour boundary.
    now = datetime.now(timezone.utc)
    if now.minute == 59 and now.second >= 15:
        time.sleep(61 - now.second)
    with serving(str(store), tmp_path) as server:
        assert httpx.post(f"{server.url}/echo", content=b"{}", timeout=30).status_code == 200
        status = wait_for_live_status(store)
        [spans] = [name for name in local_files(store) if name.startswith("traces/")]
        previous, older = moved(spans, timedelta(hours=1)), moved(spans, timedelta(hours=3))
        copy_local(store, spans, previous)
        copy_local(store, spans, older)

        code, out, _ = retention(capsys, str(store), "--older-than", "0s", "--include", "traces", "--yes")
        assert code == 0 and set(listed(out)) == {partition_of(older)}
        assert f"  {partition_of(previous)}  writer {status['writer']} ({status['host']}, pid {status['pid']}) " \
               "is alive and may still write it" in out.splitlines()
        assert {spans, previous} <= set(local_files(store)) and older not in local_files(store)
        server.stop()

    code, out, _ = retention(capsys, str(store), "--older-than", "0s", "--include", "traces", "--yes")
    assert code == 0 and partition_of(previous) in listed(out) and "kept" not in out
    assert previous not in local_files(store)


def test_a_progress_bar_is_drawn_on_a_terminal_and_nothing_otherwise(tmp_path: Path) -> None:
    store = tmp_path / "store"
    for age in (2, 3):
        (store / f"payloads/2020/01/0{age}").mkdir(parents=True)
        (store / f"payloads/2020/01/0{age}/a.json").write_bytes(b"{}")
    command = [sys.executable, "-m", "obsml.cli", "retention", "--store", str(store), "--older-than", "1d", "--yes"]
    piped = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    (store / "payloads/2020/01/04").mkdir(parents=True)
    (store / "payloads/2020/01/04/a.json").write_bytes(b"{}")
    drawn = drawn_on_a_terminal(command)
    assert piped.stderr == "" and piped.stdout.splitlines()[-1] == "deleted 2 partitions: 2 objects, 4 bytes"
    assert "obsml retention: [" in drawn and "1/1 payloads/2020/01/04" in drawn


def test_a_partition_that_cannot_be_deleted_is_named_exit_1_and_the_next_run_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    for day in ("02", "03", "04"):
        (store / f"payloads/2020/01/{day}").mkdir(parents=True)
        (store / f"payloads/2020/01/{day}/a.json").write_bytes(b"{}")
    stuck = store / "payloads/2020/01/03/a.json"
    # Immutable: not even root may delete it (the tests may run as root, whom permissions do not stop).
    if subprocess.run(["chattr", "+i", str(stuck)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        code, _, err = retention(capsys, str(store), "--older-than", "1d", "--yes")
        assert code == 1 and err.count("\n") == 1
        assert err.startswith(f"obsml retention: cannot delete payloads/2020/01/03 of {store}: ")
        assert err.endswith("; 1 of 3 partitions deleted, run it again to finish\n")
        assert sorted(local_files(store)) == ["payloads/2020/01/03/a.json", "payloads/2020/01/04/a.json"]
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=True)
    code, out, _ = retention(capsys, str(store), "--older-than", "1d", "--yes")
    assert (code, out.splitlines()[-1], local_files(store)) == (0, "deleted 2 partitions: 2 objects, 4 bytes", {})


@pytest.fixture
def blob_store(azurite: Azurite, azure_container: ContainerClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    AzureBlobFileSystem.clear_instance_cache()  # fsspec caches filesystems by arguments, not by environment
    yield f"abfs://{azure_container.container_name}/obsml"
    AzureBlobFileSystem.clear_instance_cache()


def test_an_azure_store_keeps_its_current_partitions_and_loses_exactly_the_old_ones(
    blob_store: str, azurite: Azurite, azure_container: ContainerClient, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_store(blob_store, tmp_path, {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})

    def blobs() -> dict[str, int]:
        return {blob.name.removeprefix("obsml/"): int(blob.size) for blob in azure_container.list_blobs("obsml/")}

    real = blobs()
    assert {name.split("/")[0] for name in real} == {"traces", "payloads", "modeldata", "modeldata-media", "_obsml"}
    for target, source in old_copies(real).items():
        azure_container.upload_blob(f"obsml/{target}", azure_container.download_blob(f"obsml/{source}").readall())
    before = blobs()
    cutoff = datetime.now(timezone.utc) - timedelta(days=30)
    old = {partition_of(name) for name in before if end_of(partition_of(name)) <= cutoff}

    code, out, err = retention(capsys, blob_store, "--older-than", "30d")
    assert (code, err, set(listed(out))) == (0, "", old)
    assert blobs() == before
    code, out, err = retention(capsys, blob_store, "--older-than", "30d", "--yes")
    assert (code, err) == (0, "") and out.splitlines()[-1].startswith(f"deleted {len(old)} partitions: ")
    assert blobs() == {name: n for name, n in before.items() if partition_of(name) not in old}


@pytest.mark.parametrize("credential", [pytest.param("wrong", id="a wrong key"), pytest.param("", id="none")])
def test_an_unreachable_store_or_a_missing_credential_is_one_line_and_exit_2(
    credential: str, azurite: Azurite, azure_container: ContainerClient, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if credential:
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                           azurite.connection_string.replace("AccountKey=Eby8", "AccountKey=AAAA"))
    else:
        for name in [name for name in os.environ if name.startswith("AZURE_STORAGE_")]:
            monkeypatch.delenv(name)
    AzureBlobFileSystem.clear_instance_cache()
    try:
        code, out, err = retention(capsys, f"abfs://{azure_container.container_name}/obsml", "--older-than", "1d")
    finally:
        AzureBlobFileSystem.clear_instance_cache()
    assert (code, out) == (2, "")
    assert err.startswith("obsml retention: ") and err.count("\n") == 1 and "AccountKey" not in err
