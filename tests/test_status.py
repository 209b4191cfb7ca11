"""Each writer's status in the store, and ``obsml status`` reading it: liveness, counters, the exit code."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

import fsspec
import httpx
import pytest
from adlfs import AzureBlobFileSystem
from apps import make_app
from azure.storage.blob import ContainerClient
from azurite import Azurite
from conftest import load_every_worker, running_gunicorn, running_server
from fsspec.implementations.memory import MemoryFileSystem
from servers import free_port, running_command
from test_writer import stalled_writer, wait_for_a_drop

import obsml
from obsml._pipeline import pipeline_for
from obsml._reader import StoreReader
from obsml._status import MIN_EVERY_S, StatusReport
from obsml._store import Store
from obsml.cli import main

ROOT = Path(__file__).resolve().parent.parent
STATUS_ON = {"OBSML_STATUS": "true"}
REQUESTS = 40


def obsml_status(store: str, *options: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real ``obsml status`` command, as a cron job runs it."""
    return subprocess.run(
        [sys.executable, "-m", "obsml.cli", "status", "--store", store, *options],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def status_json(store: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    result = obsml_status(store, "--format", "json", env=env)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def test_clean_traffic_on_two_gunicorn_workers_exits_0_and_lists_both(tmp_path: Path) -> None:
    store = tmp_path / "store"
    before = datetime.now(timezone.utc)
    with running_gunicorn("wsgi_apps:flask_app", store, "--workers", "2", env=STATUS_ON) as server:
        pids, sent = load_every_worker(server.url, REQUESTS)
        assert server.stop() == 0
    assert len(pids) == 2, "the load should have reached both workers"

    code, report = status_json(str(store))
    assert code == 0
    assert {writer["pid"] for writer in report["writers"]} == pids
    assert all(writer["exited"] and not writer["stale"] for writer in report["writers"])
    assert (report["writers_alive"], report["writers_stale"], report["writers_exited"]) == (0, 0, 2)
    # The same counter names as obsml.stats(), in the totals and for each writer.
    assert set(report["totals"]) == set(obsml.stats())
    assert all(set(writer["stats"]) == set(obsml.stats()) for writer in report["writers"])
    assert report["totals"]["requests_captured"] == sent
    assert report["totals"]["spans_exported"] == sent
    assert report["totals"]["payloads_written"] == 0  # status files are not data
    assert report["totals"]["dropped"] == {}

    text = obsml_status(str(store))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    header = next(line for line in lines if line.startswith("WRITER"))
    rows = [line for line in lines if line.split()[:1] in ([writer["writer"]] for writer in report["writers"])]
    assert len(rows) == 2 and all(" exited " in row for row in rows)
    total = next(line for line in lines if line.startswith("TOTAL"))
    # Aligned: each number ends under the end of its heading.
    assert total.index(f"{sent}") + len(f"{sent}") == header.index("CAPTURED") + len("CAPTURED")
    assert lines[-1] == "nothing dropped"

    # A window that ends before the servers started has none of their statuses.
    earlier = obsml_status(str(store), "--since", "7d", "--until", (before.replace(year=before.year - 1)).isoformat())
    assert (earlier.returncode, len(earlier.stdout.splitlines())) == (0, 1)
    assert earlier.stdout.startswith("obsml status: nothing found")


def test_a_store_without_status_files_says_so_in_one_line_and_exits_0(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = obsml_status(str(tmp_path / "empty"))
    assert result.returncode == 0
    [line] = result.stdout.splitlines()
    assert line.startswith("obsml status: nothing found: no writer reported to ")
    code, report = status_json(str(tmp_path / "empty"))
    assert (code, report["writers"], report["totals"]["dropped"]) == (0, [], {})


def test_a_full_queue_makes_status_exit_1_with_the_drop_by_reason_and_kind(store: Path) -> None:
    options = {"store": str(store), "queue_max_bytes": 1000, "status": True}
    with running_server(make_app(**options)) as url, stalled_writer(**options):
        httpx.post(f"{url}/echo", content=b"b" * 5000)  # held inline: over the 1 KB queue bound
        wait_for_a_drop()
    pipeline_for(obsml.Settings.load(**options)).writer.close(10)  # as at exit: the last status

    code, report = status_json(str(store))
    assert code == 1
    assert report["totals"]["dropped"] == {"queue_full": {"span": 1}}
    [writer] = report["writers"]
    assert (writer["pid"], writer["exited"]) == (os.getpid(), True)
    text = obsml_status(str(store))
    assert text.returncode == 1
    assert text.stdout.splitlines()[-2:] == ["dropped, by reason and kind:", "  queue_full  span  1"]


def test_a_status_that_cannot_be_written_is_counted_and_a_failure_alone_is_no_reason_to_retry(store: Path) -> None:
    store.mkdir(parents=True)
    (store / "_obsml").write_text("a file where the status folder should be")
    settings = obsml.Settings.load(store=str(store), status=True)  # every 2 s, heartbeat 10 s
    report = StatusReport(settings, Store(settings), closed=lambda: False)
    report.tick(force=False)
    assert obsml.stats()["dropped"] == {"store_error": {"status": 1}}
    time.sleep(MIN_EVERY_S + 0.1)  # past the rate limit: only a change (or the heartbeat) writes again
    report.tick(force=True)
    assert obsml.stats()["dropped"] == {"store_error": {"status": 1}}


def test_a_worker_killed_with_sigkill_is_reported_stale_and_the_other_alive(tmp_path: Path) -> None:
    store = tmp_path / "store"
    # A flush interval of 0.1 s: a status at least every 2 s (its heartbeat), stale after 6 s without one.
    with running_gunicorn("wsgi_apps:flask_app", store, "--workers", "2", env=STATUS_ON) as server:
        pids, _ = load_every_worker(server.url, REQUESTS)
        assert len(pids) == 2, "the load should have reached both workers"
        deadline = time.monotonic() + 60
        while {writer["pid"] for writer in status_json(str(store))[1]["writers"]} != pids:
            assert time.monotonic() < deadline, "both workers should have written a status"
            time.sleep(0.2)
        killed, survivor = sorted(pids)
        os.kill(killed, signal.SIGKILL)
        while True:
            code, report = status_json(str(store))
            states = {writer["pid"]: writer for writer in report["writers"]}
            if states[killed]["stale"]:
                break
            assert time.monotonic() < deadline + 60, f"the killed worker is still not stale: {states[killed]}"
            time.sleep(0.5)
        assert (states[survivor]["stale"], states[survivor]["exited"]) == (False, False)
        assert (report["writers_alive"], report["writers_stale"]) == (1, 1)
        assert code == 0  # stale, but nothing dropped
        text = obsml_status(str(store)).stdout
        assert any(line.split()[:1] == [states[killed]["writer"]] and " stale " in line for line in text.splitlines())


class OutageFileSystem(MemoryFileSystem):
    """``outage://``: memory, with an outage switch; a refused put quotes every credential it has,
    as an SDK's error may."""

    protocol = "outage"
    store: ClassVar[dict[str, Any]] = {}
    pseudo_dirs: ClassVar[list[str]] = [""]
    down = True

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        return super()._strip_protocol(str(path).removeprefix("outage://"))

    def pipe_file(self, path: str, value: bytes, *args: Any, **kwargs: Any) -> None:
        if OutageFileSystem.down:
            raise ConnectionError(f"cannot put {path} with {os.environ['AZURE_STORAGE_CONNECTION_STRING']}")
        super().pipe_file(path, value, *args, **kwargs)


@pytest.mark.usefixtures("forget_new_pipelines")
def test_no_credential_of_the_store_url_or_of_a_sink_error_reaches_a_status_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sas, key = "sv=2024-05-04&ss=b&sig=Zm9vYmFyU0FTc2lnbmF0dXJl", "c2VjcmV0LWFjY291bnQta2V5LTEyMzQ1Njc4OQ=="
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", f"AccountName=box;AccountKey={key}")
    fsspec.register_implementation("outage", OutageFileSystem, clobber=True)
    monkeypatch.setattr(OutageFileSystem, "down", True)
    url = f"outage://box-{uuid.uuid4().hex}?{sas}"
    options = {"store": url, "flush_interval": 0.05, "status": True}
    pipeline = pipeline_for(obsml.Settings.load(**options))
    delivery = pipeline.store.delivery
    assert delivery is not None
    with running_server(make_app(**options)) as server:
        httpx.post(f"{server}/echo", content=b"{}")
        deadline = time.monotonic() + 30
        while delivery.last_error is None:  # the sink refused what was spooled: its error is the sink's last
            assert time.monotonic() < deadline, "the sink was never tried"
            time.sleep(0.01)
        monkeypatch.setattr(OutageFileSystem, "down", False)
        pipeline.writer.close(10)  # as at exit: the last status, with the sink's last error
        assert delivery.wait_empty(10)

    reader = StoreReader.open(url)
    statuses = [reader.fs.cat_file(f"{reader.root}/{name}") for name in reader.files("_obsml/status")]
    assert len(statuses) == 1  # the first status and the last, at one path
    assert b"Zm9vYmFyU0FTc2lnbmF0dXJl" not in statuses[0] and key.encode() not in statuses[0]
    status = json.loads(statuses[0])
    assert status["exited"] and status["store"] == status["sink"]["scheme"] == "outage"
    assert status["sink"]["last_error"].startswith("ConnectionError: cannot put ")
    assert "sig=[REDACTED]" in status["sink"]["last_error"] and "with [REDACTED]" in status["sink"]["last_error"]

    capsys.readouterr()
    assert main(["status", "--store", url, "--format", "json"]) == 0
    shown = capsys.readouterr().out
    assert json.loads(shown)["writers"][0]["writer"] == status["writer"]
    assert "Zm9vYmFyU0FTc2lnbmF0dXJl" not in shown and key not in shown


@pytest.fixture
def azure_store(azurite: Azurite, azure_container: ContainerClient) -> Iterator[tuple[str, dict[str, str]]]:
    env = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    yield f"abfs://{azure_container.container_name}/obsml", env
    AzureBlobFileSystem.clear_instance_cache()


def test_a_full_spool_on_an_azure_store_makes_status_exit_1_from_the_status_files_in_azure(
    tmp_path: Path, azure_store: tuple[str, dict[str, str]], azure_container: ContainerClient
) -> None:
    store, env = azure_store
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "apps:app", "--port", str(port), "--log-level", "warning"]
    # Bodies may fill 80% of the spool: a 100 KB body cannot go into a 50 KB spool.
    server_env = {**env, **STATUS_ON, "OBSML_STORE": store, "OBSML_SPOOL_MAX_BYTES": "50000"}
    with running_command(command, port, tmp_path / "uvicorn.log", server_env) as server:
        body = b"x" * 100_000
        assert httpx.post(f"{server.url}/echo", content=body, timeout=30).content == body
        server.stop()  # uvicorn ends with the SIGTERM it caught, once it has shut down

    names = [blob.name for blob in azure_container.list_blobs(name_starts_with="obsml/_obsml/status/")]
    assert len({name.rsplit("/", 1)[1] for name in names}) == 1  # one writer, its file overwritten in place
    code, report = status_json(store, env=env)
    assert code == 1
    assert report["totals"]["dropped"] == {"spool_full": {"payload": 2}}
    assert report["totals"]["requests_captured"] == 1 and report["totals"]["objects_spooled"] >= 1
    [writer] = report["writers"]
    assert writer["exited"] and writer["sink"]["scheme"] == "abfs"


def test_a_refused_credential_is_one_line_without_the_key(azure_store: tuple[str, dict[str, str]]) -> None:
    # The Azure SDK's refusal spans several lines (request id, time, error code): said on one.
    store, env = azure_store
    key = "Zm9yZ2VkIGtleSBvZiBub2JvZHkgYXQgYWxsIQ=="
    wrong = re.sub(r"AccountKey=[^;]+", f"AccountKey={key}", env["AZURE_STORAGE_CONNECTION_STRING"])
    result = obsml_status(store, env={"AZURE_STORAGE_CONNECTION_STRING": wrong})
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "obsml status: cannot read abfs://" in result.stderr and key not in result.stderr
