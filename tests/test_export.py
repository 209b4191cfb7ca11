"""``obsml export`` of stores written by the real middleware and collector (uvicorn, gunicorn), to a local
directory and to Azurite and back, and of stores laid out by hand where a test needs many objects
or date folders of other days."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from hashlib import sha256
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import httpx
import pytest
from adlfs import AzureBlobFileSystem
from apps import make_app
from azure.storage.blob import ContainerClient
from azurite import Azurite, new_container
from conftest import drawn_on_a_terminal, running_gunicorn, running_server
from fsspec.implementations.memory import MemoryFileSystem

import obsml
from obsml.cli import main

OPTIONS = {"service": "credit", "model": "best_model", "version": "10", "inline_limit": 64}
BIG = b'{"rows": [' + b", ".join(b'{"income": %d}' % n for n in range(40)) + b"]}"  # over the inline limit
SPANS = "select correlation_id, status_code, request_body, request_body_uri, writer from spans order by correlation_id"
MODEL_DATA = "select correlation_id, income, age from inputs order by correlation_id"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store written by uvicorn (spans, offloaded bodies, model data) and a gunicorn worker (spans)."""
    store = tmp_path_factory.mktemp("served") / "store"
    with running_server(make_app(store=str(store), **OPTIONS)) as url, httpx.Client(base_url=url) as client:
        for n in range(3):
            client.post("/echo", content=BIG, headers={"x-correlation-id": f"big-{n}"})
        client.get("/fail/before", headers={"x-correlation-id": "failed-1"})
    from collector_apps import asgi_app

    with running_server(asgi_app(str(store))) as url, httpx.Client(base_url=url) as client:
        for n in range(3):
            client.get("/score", headers={"x-correlation-id": f"loan-{n}"})
    assert obsml.flush(10)
    with running_gunicorn("wsgi_apps:flask_app", store, "--workers", "1") as server:
        with httpx.Client(base_url=server.url) as client:
            for n in range(3):
                client.post("/echo", content=b"row %d" % n, headers={"x-correlation-id": f"row-{n}"})
        assert server.stop() == 0
    return store


def export(capsys: pytest.CaptureFixture[str], source: str | Path, destination: str | Path,
           *options: str) -> tuple[int, str, str]:
    code = main(["export", str(destination), "--store", str(source), *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def rows(capsys: pytest.CaptureFixture[str], store: str | Path, sql: str) -> list[dict[str, Any]]:
    code = main(["query", sql, "--store", str(store), "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return list(json.loads(captured.out))


def data_files(root: Path) -> dict[str, bytes]:
    """Every object of a local store but obsml's own, by path under the root."""
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(root.rglob("*"))
            if path.is_file() and path.relative_to(root).parts[0] != "_obsml"}


def stamps(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of each data object: both change when an object is written again."""
    return {name: ((root / name).stat().st_ino, (root / name).stat().st_mtime_ns) for name in data_files(root)}


def test_a_served_store_is_copied_whole_and_reads_the_same_through_query(
    served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    code, out, err = export(capsys, served, copy)

    source = data_files(served)
    assert (code, err) == (0, "")
    assert data_files(copy) == source
    assert {name.split("/")[0] for name in source} == {"traces", "payloads", "modeldata"}
    assert out == f"obsml export: copied {len(source)} objects ({_size(source)}) to {copy}, 0 up to date\n"
    assert rows(capsys, copy, SPANS) == rows(capsys, served, SPANS)
    assert len(rows(capsys, copy, SPANS)) == 10
    assert rows(capsys, copy, MODEL_DATA) == rows(capsys, served, MODEL_DATA) != []
    assert {oct(path.stat().st_mode & 0o777) for path in copy.rglob("*") if path.is_file()} == {"0o600"}


def test_a_second_export_copies_nothing_and_writes_no_object_again(
    served: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "copy"
    assert export(capsys, served, copy)[0] == 0
    before = stamps(copy)

    again = export(capsys, served, copy)

    assert again == (0, f"obsml export: copied 0 objects (0 bytes) to {copy}, {len(before)} up to date\n", "")
    assert stamps(copy) == before


def test_only_objects_new_at_the_source_are_copied_next_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, copy = tmp_path / "source", tmp_path / "copy"
    with running_server(make_app(store=str(source), **OPTIONS)) as url:
        httpx.post(f"{url}/echo", content=BIG, headers={"x-correlation-id": "first"})
        assert obsml.flush(10)
        assert export(capsys, source, copy)[0] == 0
        before = stamps(copy)
        httpx.post(f"{url}/echo", content=BIG, headers={"x-correlation-id": "second"})
        assert obsml.flush(10)

    code, out, _ = export(capsys, source, copy)

    new = set(data_files(source)) - set(before)
    assert {name.split("/")[0] for name in new} == {"traces", "payloads"}
    copied = f"obsml export: copied {len(new)} objects ({_size(data_files(source), new)})"
    assert (code, out.split(" to ")[0]) == (0, copied)
    assert {name: stamp for name, stamp in stamps(copy).items() if name in before} == before
    assert data_files(copy) == data_files(source)


def test_objects_still_being_written_are_never_copied(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "source"
    hour = source / "traces/2026/11/30/12"
    hour.mkdir(parents=True)
    (hour / "7-1a2b3c4d-1.jsonl").write_bytes(b'{"name": "whole"}\n')
    (hour / ".7-1a2b3c4d-2.jsonl.0badc0de-7-5e6f7a8b.tmp").write_bytes(b'{"name": "half')

    assert export(capsys, source, tmp_path / "copy")[0] == 0

    assert list(data_files(tmp_path / "copy")) == ["traces/2026/11/30/12/7-1a2b3c4d-1.jsonl"]


def layout(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(name.encode())


DATED = [
    "traces/2026/11/29/23/1-a-1.jsonl", "traces/2026/11/30/11/1-a-2.jsonl", "traces/2026/11/30/12/1-a-3.jsonl",
    "logs/2026/11/30/11/1-a-1.jsonl", "logs/2026/11/30/13/1-a-2.jsonl",
    "payloads/2026/11/29/ab-cd-request.json", "payloads/2026/11/30/ef-01-response.bin",
    "modeldata/credit/best_model/10/inputs/2026/11/29/1-a-1.jsonl",
    "modeldata/credit/best_model/10/inputs/2026/11/30/1-a-2.jsonl",
    "modeldata-media/credit/best_model/10/inputs/2026/10/01/ff-1.png",
    "modeldata-media/credit/best_model/10/inputs/2026/12/01/ff-2.png",
]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        pytest.param((), DATED, id="everything"),
        pytest.param(("--since", "2026-11-30T12:30"), [
            "logs/2026/11/30/13/1-a-2.jsonl", "modeldata-media/credit/best_model/10/inputs/2026/12/01/ff-2.png",
            "modeldata/credit/best_model/10/inputs/2026/11/30/1-a-2.jsonl", "payloads/2026/11/30/ef-01-response.bin",
            "traces/2026/11/30/12/1-a-3.jsonl",
        ], id="since-hours-of-spans-and-logs-days-of-the-rest"),
        pytest.param(("--include", "payloads"), [name for name in DATED if name.startswith("payloads/")],
                     id="payloads-only"),
        pytest.param(("--include", "traces,modeldata", "--since", "2026-11-30"), [
            "logs/2026/11/30/11/1-a-1.jsonl", "logs/2026/11/30/13/1-a-2.jsonl",
            "modeldata-media/credit/best_model/10/inputs/2026/12/01/ff-2.png",
            "modeldata/credit/best_model/10/inputs/2026/11/30/1-a-2.jsonl",
            "traces/2026/11/30/11/1-a-2.jsonl", "traces/2026/11/30/12/1-a-3.jsonl",
        ], id="traces-bring-logs-modeldata-brings-media"),
    ],
)
def test_since_and_include_choose_the_partitions_and_kinds_copied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: tuple[str, ...], expected: list[str]
) -> None:
    layout(tmp_path / "source", [*DATED, "_obsml/status/2026/11/30/1-a.json", "_obsml/control/current.json"])

    assert export(capsys, tmp_path / "source", tmp_path / "copy", *options)[0] == 0

    assert sorted(data_files(tmp_path / "copy")) == sorted(expected)
    assert not (tmp_path / "copy/_obsml/status").exists() and not (tmp_path / "copy/_obsml/control").exists()


def test_a_compaction_manifest_is_copied_after_the_parquet_it_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hour = "traces/2026/11/30/12"
    # Names that sort the manifest first: the export must still copy the Parquet file before it.
    layout(tmp_path / "source", [f"{hour}/compacted-0.manifest.json", f"{hour}/compacted-0.parquet"])

    assert export(capsys, tmp_path / "source", tmp_path / "copy")[0] == 0

    copied = tmp_path / "copy" / hour
    manifest, parquet = copied / "compacted-0.manifest.json", copied / "compacted-0.parquet"
    assert parquet.stat().st_mtime_ns <= manifest.stat().st_mtime_ns


def test_an_object_of_the_same_size_but_other_bytes_at_the_destination_is_written_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = "payloads/2026/11/30/ab-cd-request.bin"
    layout(tmp_path / "source", [name])
    layout(tmp_path / "copy", [name])
    (tmp_path / "copy" / name).write_bytes(b"X" * len(name))  # left by someone else, not recorded

    code, out, _ = export(capsys, tmp_path / "source", tmp_path / "copy")

    assert (code, out.split(" (")[0]) == (0, "obsml export: copied 1 objects")
    assert (tmp_path / "copy" / name).read_bytes() == name.encode()


def test_an_object_that_cannot_be_written_is_named_not_recorded_and_copied_once_it_can(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hour = "traces/2026/11/30/12"
    layout(tmp_path / "source", [*DATED, f"{hour}/compacted-0.parquet", f"{hour}/compacted-0.manifest.json"])
    (tmp_path / "copy" / hour / "compacted-0.parquet").mkdir(parents=True)  # in the way of the Parquet file

    code, out, err = export(capsys, tmp_path / "source", tmp_path / "copy")

    first, second = err.splitlines()
    assert code == 1
    assert first.startswith(f"obsml export: {hour}/compacted-0.parquet: IsADirectoryError: [Errno 21] Is a directory")
    assert second == f"obsml export: {hour}/compacted-0.manifest.json: not copied: an object of its folder failed"
    size = _size_of(sum(len(name) for name in DATED))
    assert out == f"obsml export: copied {len(DATED)} objects ({size}) to {tmp_path / 'copy'}, 0 up to date, 2 failed\n"
    assert sorted(data_files(tmp_path / "copy")) == sorted(DATED)
    (tmp_path / "copy" / hour / "compacted-0.parquet").rmdir()
    code, out, _ = export(capsys, tmp_path / "source", tmp_path / "copy")
    assert (code, out.split(" (")[0]) == (0, "obsml export: copied 2 objects")
    assert data_files(tmp_path / "copy") == data_files(tmp_path / "source")


class CorruptingFileSystem(MemoryFileSystem):
    """A destination that flips a byte of every body it is given: what a faulty store or link would do."""

    protocol = ("corrupting",)
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return str(super()._strip_protocol(path.removeprefix("corrupting://")))

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        if "/payloads/" in path:
            value = bytes([value[0] ^ 1]) + value[1:]
        super().pipe_file(path, value, mode, **kwargs)


def test_a_body_that_differs_once_written_is_an_error_naming_it_and_is_not_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fsspec.register_implementation("corrupting", CorruptingFileSystem, clobber=True)
    body, part = "payloads/2026/11/30/ab-cd-request.bin", "traces/2026/11/30/12/1-a-1.jsonl"
    layout(tmp_path / "source", [body, part])
    fs = CorruptingFileSystem()

    code, out, err = export(capsys, tmp_path / "source", "corrupting://copy")

    copied = sha256(body.encode()).hexdigest()
    assert (code, err.split(" at the destination, ")[1]) == (1, f"{copied} copied\n")
    assert err.startswith(f"obsml export: {body}: sha256 ") and err.count("\n") == 1
    assert out == f"obsml export: copied 1 objects ({len(part)} bytes) to corrupting:///copy, 0 up to date, 1 failed\n"
    assert not fs.exists(f"copy/{body}") and fs.cat_file(f"copy/{part}") == part.encode()
    recorded = [json.loads(line)["path"] for segment in fs.find("copy/_obsml/export/manifest")
                for line in fs.cat_file(segment).splitlines()]
    assert recorded == [part]


def test_an_export_killed_in_the_middle_resumes_and_copies_nothing_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, copy = tmp_path / "source", tmp_path / "copy"
    names = [f"payloads/2026/11/30/{n:032x}-{n:016x}-request.bin" for n in range(4000)]
    for name in names:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(os.urandom(4096))
    command = [sys.executable, "-m", "obsml.cli", "export", str(copy), "--store", str(source)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    manifest = copy / "_obsml/export/manifest"
    deadline = time.monotonic() + 60
    while not any(manifest.rglob("*.jsonl")) and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    recorded = {json.loads(line)["path"] for segment in manifest.rglob("*.jsonl")
                for line in segment.read_text().splitlines()}
    assert 0 < len(recorded) < len(names)  # killed after its first batch of records, before the last
    written = set(data_files(copy))  # whole (renamed into place), recorded or not yet
    before = stamps(copy)

    code, out, err = export(capsys, source, copy)

    copied, found = len(names) - len(written), len(written - recorded)
    expected = f"obsml export: copied {copied} objects ({_size_of(copied * 4096)}) to {copy}, "
    expected += f"{len(recorded)} up to date"
    assert (code, out, err) == (0, expected + (f", {found} already there recorded" if found else "") + "\n", "")
    assert data_files(copy) == data_files(source)
    assert {name: stamp for name, stamp in stamps(copy).items() if name in written} == before  # none written twice
    assert list((copy / "_obsml/export/staging").iterdir()) == []  # the killed run's unfinished object is gone
    assert export(capsys, source, copy)[1].startswith("obsml export: copied 0 objects")


def test_the_segments_of_many_runs_are_merged_and_every_object_stays_known(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    day = tmp_path / "copy/_obsml/export/manifest/payloads/2026/11/30"
    for n in range(34):  # a cron job: one new body between runs, one segment each
        layout(tmp_path / "source", [f"payloads/2026/11/30/{n:032x}-{n:016x}-request.bin"])
        assert export(capsys, tmp_path / "source", tmp_path / "copy")[1].startswith("obsml export: copied 1 objects")
        assert len(list(day.iterdir())) == (n + 1 if n < 33 else 2)  # the 34th merged 33 into one, then added one

    assert export(capsys, tmp_path / "source", tmp_path / "copy")[1].startswith("obsml export: copied 0 objects")
    assert sum(len(segment.read_text().splitlines()) for segment in day.iterdir()) == 34


def test_a_second_export_to_the_same_destination_waits_for_none_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout(tmp_path / "source", DATED)
    lock = tmp_path / "copy/_obsml/export/lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running export holds it
        busy = export(capsys, tmp_path / "source", tmp_path / "copy")
    assert busy == (1, "", f"obsml export: another export to {tmp_path / 'copy'} is running; nothing done\n")
    assert data_files(tmp_path / "copy") == {}
    assert export(capsys, tmp_path / "source", tmp_path / "copy")[0] == 0


def test_a_destination_that_cannot_be_made_is_one_line_and_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    layout(tmp_path / "source", DATED)
    (tmp_path / "file").write_text("in the way")

    code, out, err = export(capsys, tmp_path / "source", tmp_path / "file" / "copy")

    assert (code, out) == (2, "")
    assert err.startswith(f"obsml export: cannot use the destination {tmp_path / 'file' / 'copy'}: ")
    assert err.count("\n") == 1


def test_a_progress_bar_is_drawn_on_a_terminal_and_nothing_otherwise(tmp_path: Path) -> None:
    layout(tmp_path / "source", DATED)
    command = [sys.executable, "-m", "obsml.cli", "export", "--store", str(tmp_path / "source")]
    piped = subprocess.run([*command, str(tmp_path / "piped")], capture_output=True, text=True, timeout=60, check=True)
    drawn = drawn_on_a_terminal([*command, str(tmp_path / "drawn")], timeout=60)

    assert piped.stderr == "" and piped.stdout.startswith(f"obsml export: copied {len(DATED)} objects")
    assert "obsml export: [" in drawn and f"{len(DATED)}/{len(DATED)} " in drawn and " bytes of " in drawn


@pytest.fixture
def azure_env(azurite: Azurite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Azurite]:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # a remote destination's lock file goes there
    AzureBlobFileSystem.clear_instance_cache()  # fsspec caches filesystems by arguments, not by environment
    yield azurite
    AzureBlobFileSystem.clear_instance_cache()


def etags(container: ContainerClient) -> dict[str, str]:
    return {blob.name: str(blob.etag) for blob in container.list_blobs() if "/_obsml/" not in blob.name}


def test_local_to_azurite_and_back_reads_the_same_and_a_second_run_puts_nothing(
    served: Path, tmp_path: Path, azure_env: Azurite, azure_container: ContainerClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    blob = f"abfs://{azure_container.container_name}/archive"
    other = new_container(azure_env)
    try:
        assert export(capsys, served, blob)[:2] == (0, f"obsml export: copied {len(data_files(served))} objects "
                                                       f"({_size(data_files(served))}) to {blob}, 0 up to date\n")
        before = etags(azure_container)
        assert export(capsys, served, blob)[1].startswith("obsml export: copied 0 objects (0 bytes)")
        assert etags(azure_container) == before and len(before) == len(data_files(served))

        back = tmp_path / "back"
        assert export(capsys, blob, back, "--since", "1d")[0] == 0  # Azurite to local (its day folders listed)
        to_blob = f"abfs://{other.container_name}/again"
        assert export(capsys, blob, to_blob)[0] == 0  # Azurite to Azurite
    finally:
        other_rows = rows(capsys, f"abfs://{other.container_name}/again", SPANS)
        other.delete_container()
    assert data_files(back) == data_files(served)
    assert rows(capsys, blob, SPANS) == rows(capsys, back, SPANS) == rows(capsys, served, SPANS) == other_rows
    assert rows(capsys, blob, MODEL_DATA) == rows(capsys, served, MODEL_DATA)


def test_a_destination_without_credentials_or_refusing_them_is_one_line_and_exit_status_2(
    azurite: Azurite, azure_container: ContainerClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    layout(tmp_path / "source", DATED)
    blob = f"abfs://{azure_container.container_name}/archive"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for name in list(os.environ):
        if name.startswith(("AZURE_", "FSSPEC_ABFS")):
            monkeypatch.delenv(name)
    AzureBlobFileSystem.clear_instance_cache()
    missing = export(capsys, tmp_path / "source", blob)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING",
                       azurite.connection_string.replace("AccountKey=Eby8", "AccountKey=AAAA"))
    AzureBlobFileSystem.clear_instance_cache()
    try:
        refused = export(capsys, tmp_path / "source", blob)
        from_refused = export(capsys, blob, tmp_path / "copy")
    finally:
        AzureBlobFileSystem.clear_instance_cache()

    assert missing[:2] == (2, "") and missing[2].count("\n") == 1
    assert "Must provide either a connection_string or account_name with credentials" in missing[2]
    assert refused[:2] == (2, "") and refused[2].count("\n") == 1
    assert refused[2].startswith(f"obsml export: cannot use the destination {blob}: ")
    assert from_refused[:2] == (2, "") and from_refused[2].count("\n") == 1
    assert from_refused[2].startswith(f"obsml export: cannot read {blob}: ")
    assert all("AccountKey" not in err for _, _, err in (missing, refused, from_refused))
    assert list(azure_container.list_blob_names()) == []


def _size(files: dict[str, bytes], names: set[str] | None = None) -> str:
    return _size_of(sum(len(data) for name, data in files.items() if names is None or name in names))


def _size_of(size: int) -> str:
    from obsml._export import _bytes

    return _bytes(size)
