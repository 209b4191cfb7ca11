"""Runtime switches: ``obsml config`` reaching real uvicorn and gunicorn servers through the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from adlfs import AzureBlobFileSystem
from azure.storage.blob import ContainerClient
from azurite import Azurite
from conftest import read_spans, running_gunicorn
from servers import RunningCommand, free_port, running_command

import obsml
from obsml import Collector
from obsml.cli import main

ROOT = Path(__file__).resolve().parent.parent
SCOPE = {"OBSML_SERVICE": "credit", "OBSML_MODEL": "best", "OBSML_VERSION": "1", "OBSML_STATUS": "true"}
CONTROL = Path("_obsml/control/settings.json")


def obsml_config(store: str, *arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real ``obsml config`` command, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "obsml.cli", "config", *arguments, "--store", store],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )


def config(store: str, *arguments: str, env: dict[str, str] | None = None) -> str:
    result = obsml_config(store, *arguments, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


class Answer:
    def __init__(self, response: httpx.Response) -> None:
        response.raise_for_status()
        self.captured = "x-correlation-id" in response.headers  # echoed only by a middleware switched on
        self.pid, self.rows = response.json()["pid"], response.json()["rows"]


def score(url: str, correlation_id: str) -> Answer:
    headers = {"x-correlation-id": correlation_id, "connection": "close"}
    return Answer(httpx.get(f"{url}/score", headers=headers, timeout=30))


def until(condition: Callable[[], bool], what: str, timeout: float = 90) -> None:
    """Poll ``condition`` (generously: the machine is shared) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.1)


@contextmanager
def running_uvicorn(store: str, log: Path, **env: str) -> Iterator[RunningCommand]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "--factory", "control_apps:asgi_app", "--port", str(port),
               "--log-level", "warning"]
    settings = {"OBSML_STORE": store, "OBSML_FLUSH_INTERVAL": "0.1", **SCOPE, **env}  # as servers.store_env
    with running_command(command, port, log, settings) as server:
        yield server


def correlation_ids(store: Path) -> set[str]:
    return {span["attributes"]["obsml.correlation_id"] for span in read_spans(store)}


def collected_ids(store: Path) -> set[str]:
    return {json.loads(line)["correlation_id"] for path in (store / "modeldata").rglob("*.jsonl")
            for line in path.read_text().splitlines()}


def test_set_reaches_a_running_uvicorn_server_and_unset_restores_its_settings(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with running_uvicorn(str(store), tmp_path / "uvicorn.log") as server:
        assert vars(score(server.url, "before")) | {"pid": 0} == {"captured": True, "rows": 1, "pid": 0}

        config(str(store), "set", "sample_rate=0", "--service", "credit")
        until(lambda: score(server.url, "switching").rows == 0, "sample_rate=0 applied")
        sampled = [score(server.url, f"sampled-{n}") for n in range(5)]
        assert all(a.captured and a.rows == 0 for a in sampled)  # the id is still echoed; nothing is kept

        def reported(name: str, values: dict[str, Any]) -> Callable[[], bool]:
            def check() -> bool:  # the writer's status says what it runs with, and config show prints it
                shown = json.loads(config(str(store), "show", "--service", "credit", "--format", "json"))
                return {p["part"]: p.get(name) for w in shown["writers"] for p in w["applied"]} == values

            return check

        until(reported("sample_rate", {"middleware": 0.0, "collector": 0.0}), "the writer reporting sample_rate=0")

        config(str(store), "set", "enabled=false")  # all services
        until(lambda: not score(server.url, "switching").captured, "enabled=false applied")
        assert not any(score(server.url, f"off-{n}").captured for n in range(5))

        config(str(store), "unset", "enabled")
        config(str(store), "unset", "sample_rate", "--service", "credit")
        until(lambda: (a := score(server.url, "switching")).captured and a.rows == 1, "the settings restored")
        assert all(score(server.url, f"back-{n}").rows == 1 for n in range(5))

        config(str(store), "set", "capture_bodies=none", "--service", "credit", "--model", "best", "--version", "1")
        until(reported("capture_bodies", {"middleware": "none", "collector": None}), "reporting capture_bodies=none")
        assert all(score(server.url, f"bodyless-{n}").captured for n in range(3))
    spans = {span["attributes"]["obsml.correlation_id"]: span["attributes"] for span in read_spans(store)}
    assert "obsml.response.body" in spans["back-0"] and "obsml.response.body" not in spans["bodyless-0"]
    kept = correlation_ids(store)
    assert {"before", "back-0", "back-4"} <= kept
    assert not kept & {f"{phase}-{n}" for phase in ("sampled", "off") for n in range(5)}
    assert not collected_ids(store) & {f"sampled-{n}" for n in range(5)}


def test_two_gunicorn_workers_turn_the_collector_off_while_spans_go_on_then_capture_off(tmp_path: Path) -> None:
    store = tmp_path / "store"
    # --preload: the middleware is made in the master; each forked worker re-reads on its own writer.
    with running_gunicorn("control_apps:wsgi_app()", store, "--workers", "2", "--preload", env=SCOPE) as server:

        def both_workers(condition: Callable[[Answer], bool]) -> Callable[[], bool]:
            holds: dict[int, bool] = {}

            def check() -> bool:
                with ThreadPoolExecutor(8) as pool:
                    for answer in pool.map(lambda n: score(server.url, f"probe-{n}"), range(16)):
                        holds[answer.pid] = condition(answer)
                return len(holds) == 2 and all(holds.values())

            return check

        until(both_workers(lambda a: a.rows == 1), "both workers serving and collecting")
        config(str(store), "set", "collect_enabled=false", "--service", "credit", "--model", "best")
        until(both_workers(lambda a: a.rows == 0), "collect_enabled=false in both workers")
        during = [score(server.url, f"during-{n}") for n in range(10)]
        assert all(a.captured and a.rows == 0 for a in during)

        config(str(store), "set", "enabled=false", "--service", "credit", "--model", "best", "--version", "1")
        until(both_workers(lambda a: not a.captured), "enabled=false in both workers")
        assert server.stop() == 0
    ids = {f"during-{n}" for n in range(10)}
    assert ids <= correlation_ids(store)  # spans went on
    assert not ids & collected_ids(store)  # the collector was off


def test_a_broken_control_object_is_ignored_with_one_warning_and_the_last_good_one_stays(tmp_path: Path) -> None:
    store = tmp_path / "store"
    log = tmp_path / "uvicorn.log"
    with running_uvicorn(str(store), log) as server:
        config(str(store), "set", "sample_rate=0")
        until(lambda: score(server.url, "switching").rows == 0, "sample_rate=0 applied")
        broken = json.dumps({"format": 1, "scopes": {"*": {"sample_rate": 7}}})  # a hand edit out of range
        (store / CONTROL).write_text(broken)

        def warned() -> int:
            return server.log().count("control object _obsml/control/settings.json is malformed")

        until(lambda: warned() == 1, "a warning about the broken control object")
        for _ in range(3):  # the same content again (a new mtime): read again, not warned again
            (store / CONTROL).write_text(broken)
            time.sleep(0.5)
        assert all(score(server.url, f"broken-{n}").rows == 0 for n in range(5))  # the last good one holds

        result = obsml_config(str(store), "set", "sample_rate=1")
        assert result.returncode == 0 and "replacing a malformed control object" in result.stderr
        until(lambda: score(server.url, "switching").rows == 1, "the repaired control object applied")
    assert warned() == 1, server.log()


def test_show_names_each_source_and_every_change_is_recorded_with_who_and_old_and_new(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    config(store, "set", "sample_rate=0.5", "enabled=false", "--service", "credit")
    config(store, "set", "sample_rate=0.25", "--service", "credit", "--model", "best")  # more specific
    config(store, "unset", "enabled", "--service", "credit")
    env = {"OBSML_CAPTURE_BODIES": "errors"}
    shown = json.loads(config(store, "show", "--service", "credit", "--model", "best", "--format", "json", env=env))
    assert shown["settings"] == {
        "enabled": {"value": True, "source": "default", "where": None},
        "sample_rate": {"value": 0.25, "source": "control", "where": "credit/best"},
        "collect_enabled": {"value": True, "source": "default", "where": None},
        "capture_bodies": {"value": "errors", "source": "environment", "where": "OBSML_CAPTURE_BODIES"},
    }
    text = config(store, "show", "--service", "credit", "--model", "other", env=env)
    assert "sample_rate      0.5    control (credit)" in text

    history = sorted((tmp_path / "store" / "_obsml" / "control-history").rglob("*.json"))
    records = [json.loads(path.read_text()) for path in history]
    assert [(r["command"], r["scope"], r["changes"]) for r in records] == [
        ("set", "credit", [{"setting": "enabled", "old": None, "new": False},
                           {"setting": "sample_rate", "old": None, "new": 0.5}]),
        ("set", "credit/best", [{"setting": "sample_rate", "old": None, "new": 0.25}]),
        ("unset", "credit", [{"setting": "enabled", "old": False, "new": None}]),
    ]
    assert all(r["by"]["host"] and r["by"]["user"] and r["at"] for r in records)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(["sample_rate=2"], "sample_rate='2' is not valid: expected a number from 0 to 1", id="range"),
        pytest.param(["enabled=maybe"], "enabled='maybe' is not valid", id="boolean"),
        pytest.param(["redact_fields=ssn"], "redact_fields cannot be switched at runtime", id="not-a-switch"),
        pytest.param(["enabled"], "'enabled' is not NAME=VALUE", id="no-value"),
        pytest.param(["enabled=false", "--model", "best"], "a scope is", id="model-without-service"),
        pytest.param(["enabled=false", "--service", "../x"], "--service='../x' is not valid", id="bad-name"),
    ],
)
def test_a_bad_value_or_scope_is_one_line_exit_2_and_nothing_is_written(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    result = obsml_config(str(tmp_path / "store"), "set", *arguments)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1 and message in result.stderr
    assert not (tmp_path / "store").exists()


@pytest.fixture
def fresh_filesystems() -> Iterator[None]:
    """fsspec caches filesystems by constructor arguments, not by the environment they read."""
    AzureBlobFileSystem.clear_instance_cache()
    yield
    AzureBlobFileSystem.clear_instance_cache()


@pytest.mark.usefixtures("fresh_filesystems")
def test_on_azure_blob_set_and_show_work_and_a_server_picks_the_switch_up(
    azure_container: ContainerClient, azurite: Azurite, tmp_path: Path
) -> None:
    azure = {"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    store = f"abfs://{azure_container.container_name}/obsml"
    env = {**azure, "OBSML_CONTROL_INTERVAL": "0.5", "OBSML_SPOOL_DIR": str(tmp_path / "spool")}
    with running_uvicorn(store, tmp_path / "uvicorn.log", **env) as server:
        assert score(server.url, "before").captured
        assert config(store, "set", "enabled=false", "--service", "credit", env=azure) == \
            "credit: enabled (unset) -> false\n"
        until(lambda: not score(server.url, "switching").captured, "enabled=false read from the blob")
        shown = json.loads(config(store, "show", "--service", "credit", "--format", "json", env=azure))
        assert shown["settings"]["enabled"] == {"value": False, "source": "control", "where": "credit"}
        config(store, "unset", "enabled", "--service", "credit", env=azure)
        until(lambda: score(server.url, "switching").captured, "the switch removed")
    blobs = [blob.name for blob in azure_container.list_blobs(name_starts_with="obsml/_obsml/control-history/")]
    assert len(blobs) == 2


def run_without_azure_settings(action: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    without_azure = {name: value for name, value in os.environ.items() if not name.startswith("AZURE_")}
    return subprocess.run(
        [sys.executable, "-m", "obsml.cli", "config", *action, "--store", "abfs://nowhere/obsml"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**without_azure, **env},
    )


def assert_one_line_exit_2(result: subprocess.CompletedProcess[str]) -> None:
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("obsml config: "), result.stderr


@pytest.mark.parametrize("action", [["set", "enabled=false"], ["unset", "enabled"], ["show"]])
def test_a_missing_credential_is_one_line_and_exit_2(action: list[str]) -> None:
    result = run_without_azure_settings(action)
    assert_one_line_exit_2(result)
    assert "Must provide either a connection_string or account_name with credentials" in result.stderr


def test_an_unreachable_store_is_one_line_and_exit_2_without_the_key() -> None:
    # The Azure SDK retries a refused connection for about a minute and a half before it gives up.
    key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
    closed = f"http://127.0.0.1:{free_port()}/devstoreaccount1"
    connection = f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={key};BlobEndpoint={closed};"
    result = run_without_azure_settings(["set", "enabled=false"], AZURE_STORAGE_CONNECTION_STRING=connection)
    assert_one_line_exit_2(result)
    assert "cannot read abfs://nowhere/obsml: ServiceRequestError" in result.stderr and key not in result.stderr


@pytest.mark.usefixtures("forget_new_pipelines")
def test_a_batch_job_collector_follows_the_switches_from_its_first_rows(store: Path) -> None:
    switch = ["config", "set", "collect_enabled=false", "--service", "jobs", "--model", "m", "--store", str(store)]
    assert main(switch) == 0
    switched_off = Collector("m", "labels", store=str(store), service="jobs")
    other_model = Collector("other", "labels", store=str(store), service="jobs")
    assert (switched_off.collect([[1]]).rows, other_model.collect([[1]]).rows) == (0, 1)
    assert obsml.flush(10)
    assert {path.relative_to(store).parts[2] for path in (store / "modeldata").rglob("*.jsonl")} == {"other"}
