"""Collector rows to real Azure Blob (Azurite) through adlfs and the spool: an outage loses no row."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from adlfs import AzureBlobFileSystem
from azurite import Azurite, new_container

import obsml
from obsml import Collector, modeldata

pytestmark = pytest.mark.usefixtures("forget_new_pipelines")


@pytest.fixture(autouse=True)
def fresh_filesystems() -> Iterator[None]:
    """fsspec caches filesystems by constructor arguments, not by the environment they read."""
    AzureBlobFileSystem.clear_instance_cache()
    yield
    AzureBlobFileSystem.clear_instance_cache()


def wait_for(condition: str, timeout: float = 60) -> None:
    """Until ``obsml.stats()[condition]`` is positive: the writer saw what the test waits for."""
    deadline = time.monotonic() + timeout
    while not obsml.stats().get(condition) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert obsml.stats().get(condition), f"no {condition} within {timeout} s: {obsml.stats()}"


def test_an_azurite_outage_while_rows_are_collected_loses_none_and_writes_none_twice(
    azurite_on_disk: Azurite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    container = new_container(azurite_on_disk, "rows")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite_on_disk.connection_string)
    monkeypatch.setenv("OBSML_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("OBSML_FLUSH_INTERVAL", "0.1")
    store = f"abfs://{container.container_name}/obsml"
    inputs = Collector("best_model", "inputs", ["n", "note"], store=store, service="credit", version="10")
    sent: list[str] = []

    def collect(phase: str, count: int) -> None:
        for n in range(count):
            sent.append(inputs.collect([[n, f"{phase} {n}"]], correlation_id=f"{phase}-{n}").correlation_id)

    collect("before", 50)
    assert obsml.flush(30)
    azurite_on_disk.stop()
    collect("down", 100)
    wait_for("sink_retries")  # the sink has failed on rows collected during the outage
    collect("still-down", 100)
    azurite_on_disk.start()
    collect("after", 50)
    assert obsml.flush(60), obsml.stats()
    stats = obsml.stats()

    frame = modeldata.read(store, "best_model", "inputs")
    assert Counter(frame["correlation_id"]) == Counter(sent) and len(sent) == len(set(sent)) == 300
    assert all(note == f"{cid.rsplit('-', 1)[0]} {n}" for cid, n, note in frame[["correlation_id", "n", "note"]].values)
    assert stats["rows_collected"] == 300 and stats["dropped"] == {}, stats
    assert stats.get("objects_drained", 0) > 0, stats  # the spool held part files until Azurite was back
    assert [p for p in (tmp_path / "spool").rglob("*") if p.is_file() and p.name != "lock"] == []
