"""Delivery to a remote sink through the disk spool: retried, bounded, checked, never lost silently."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apps import make_app
from conftest import install_plugin, running_server

import obsml
from obsml._objects import StoreWriteError
from obsml._spool import Spool

FLAKY_SINK = """
    from obsml import Sink
    objects = {}  # relative path -> bytes, as the sink holds them
    puts = []  # relative paths in the order they were put
    state = {"up": False}

    class FlakySink(Sink):
        def put(self, relative, data, size):
            if not state["up"]:
                raise ConnectionError("sink unreachable")
            objects[relative] = data.read(size)
            puts.append(relative)

    def make_sink(url, *, settings):
        return FlakySink()
"""


@pytest.fixture
def flaky(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A sink plugin registered for the ``flaky`` scheme, down until the test brings it up."""
    install_plugin(tmp_path, monkeypatch, "flaky", FLAKY_SINK, group="obsml.sinks", factory="make_sink")
    monkeypatch.delitem(sys.modules, "flaky_plugin", raising=False)  # a fresh module, with the sink down
    import flaky_plugin  # type: ignore[import-not-found]

    yield flaky_plugin


pytestmark = pytest.mark.usefixtures("forget_new_pipelines")


def spans_in(objects: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    parts = [data for name, data in objects.items() if re.match(r"traces/\d{4}/", name)]
    lines = [line for data in parts for line in data.split(b"\n") if line]
    spans = [json.loads(line) for line in lines]
    return {span["attributes"]["obsml.correlation_id"]: span for span in spans}


def test_a_sink_that_is_down_is_retried_and_gets_everything_in_order_once_it_is_back(
    flaky: Any, tmp_path: Path
) -> None:
    store = f"flaky://box-{uuid.uuid4().hex}"
    big = bytes(range(256)) * 400  # 100 KiB: offloaded
    with running_server(make_app(store=store, flush_interval=0.05)) as url, httpx.Client(base_url=url) as client:
        for n in range(20):
            body = big if n % 5 == 0 else b'{"row": %d}' % n
            response = client.post("/echo", content=body, headers={"x-correlation-id": f"down-{n}"})
            assert (response.status_code, response.content) == (200, body)  # unaffected by the dead sink
        assert obsml.flush(0.5) is False  # nothing could be delivered
        spooled = obsml.stats()
        assert spooled["sink_retries"] >= 1
        assert spooled.get("trace_files_written", 0) == 0

        flaky.state["up"] = True
        assert obsml.flush(10) is True
    stats = obsml.stats()
    assert stats["objects_drained"] == stats["objects_spooled"] == len(flaky.puts)
    assert stats["dropped"] == {}
    spans = spans_in(flaky.objects)
    assert sorted(spans) == sorted(f"down-{n}" for n in range(20))
    offloaded = spans["down-0"]["attributes"]
    uri = offloaded["obsml.request.body.uri"]
    assert uri.startswith(f"{store}/payloads/")
    relative = uri.removeprefix(f"{store}/")
    assert flaky.objects[relative] == big
    assert offloaded["obsml.request.body.sha256"] == hashlib.sha256(big).hexdigest()
    # In order: part files in sequence, each payload before the part file naming it.
    parts = [name for name in flaky.puts if name.startswith("traces/")]
    assert parts == sorted(parts, key=lambda name: int(name.rsplit("-", 1)[1].split(".")[0]))
    assert flaky.puts.index(relative) < min(
        i for i, name in enumerate(flaky.puts) if name.startswith("traces/") and b"down-0" in flaky.objects[name]
    )
    # This store's spool only (flaky-<hash>/): other tests' stores share the session's spool folder.
    assert not list(Path(obsml.Settings.load().spool_dir).glob("flaky-*/**/*.rec"))


def test_a_full_spool_drops_with_a_reason_and_the_span_says_so(flaky: Any) -> None:
    store = f"flaky://box-{uuid.uuid4().hex}"
    big = b"\x00" * 100_000
    with running_server(make_app(store=store, spool_max_bytes=150_000, flush_interval=0.05)) as url, httpx.Client(
        base_url=url
    ) as client:
        for n in range(3):
            response = client.post("/echo", content=big, headers={"x-correlation-id": f"full-{n}"})
            assert (response.status_code, response.content) == (200, big)
        assert obsml.flush(0.5) is False
        flaky.state["up"] = True
        assert obsml.flush(10) is True
    spans = spans_in(flaky.objects)
    lost = [
        (correlation_id, direction)
        for correlation_id, span in spans.items()
        for direction in ("request", "response")
        if span["attributes"].get(f"obsml.{direction}.body.lost") == "spool_full"
    ]
    assert len(spans) == 3
    assert 4 <= len(lost) <= 5  # the spool holds one 100 KB body; the others are dropped and marked
    assert obsml.stats()["dropped"]["spool_full"]["payload"] == len(lost)


def test_records_of_a_dead_process_are_adopted_and_a_corrupt_one_is_skipped_and_counted(
    flaky: Any, tmp_path: Path
) -> None:
    store = f"flaky://box-{uuid.uuid4().hex}"
    settings = obsml.Settings.load(store=store)
    # A process that spooled three objects and died: its records, one of them damaged on disk.
    from obsml._store import Store

    root = Store(settings).delivery.spool.root  # type: ignore[union-attr]
    dead = Spool(root, 1 << 30)
    for name in ("traces/a.jsonl", "traces/b.jsonl", "traces/c.jsonl"):
        record = dead.open_record(name)
        record.write(f'{{"object": "{name}"}}'.encode())
        record.commit()
    damaged = dead.records[1]
    data = bytearray(damaged.read_bytes())
    data[-40] ^= 0xFF
    damaged.write_bytes(bytes(data))
    torn = dead.open_record("payloads/torn.bin")  # never committed: the process died mid-write
    torn.write(b"partial")
    torn.file.close()
    dead.after_fork()  # drops its lock, as the kernel does when a process dies

    flaky.state["up"] = True
    with running_server(make_app(store=store)) as url:
        httpx.post(f"{url}/echo", content=b"{}", headers={"x-correlation-id": "after-restart"})
        assert obsml.flush(10)
    assert flaky.objects["traces/a.jsonl"] == b'{"object": "traces/a.jsonl"}'
    assert flaky.objects["traces/c.jsonl"] == b'{"object": "traces/c.jsonl"}'
    assert "traces/b.jsonl" not in flaky.objects
    assert flaky.puts[:2] == ["traces/a.jsonl", "traces/c.jsonl"]  # older objects first
    stats = obsml.stats()
    assert stats["spool_records_adopted"] == 3
    assert stats["dropped"]["corrupt"]["record"] == 2  # the damaged record and the torn one
    assert "after-restart" in spans_in(flaky.objects)
    assert not any(path.name != "lock" for path in root.rglob("*") if path.is_file())


def test_a_sink_that_cannot_start_never_breaks_the_app_and_its_objects_wait_in_the_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The factory raises as it would with its service unreachable: a run-time failure, retried.
    # (A plugin that cannot be imported fails start-up instead: tests/test_registry.py.)
    plugin_source = "def make_sink(url, *, settings):\n    raise RuntimeError('cannot start')\n"
    install_plugin(tmp_path, monkeypatch, "brokensink", plugin_source, group="obsml.sinks", factory="make_sink")
    store = f"brokensink://box-{uuid.uuid4().hex}"
    with caplog.at_level(logging.WARNING, logger="obsml"), running_server(
        make_app(store=store, flush_interval=0.05, flush_timeout=0.5)  # the shutdown flush cannot succeed
    ) as url, httpx.Client(base_url=url) as client:
        for n in range(5):
            response = client.post("/echo", content=b"payload", headers={"x-correlation-id": f"broken-{n}"})
            assert (response.status_code, response.content) == (200, b"payload")
        assert obsml.flush(1) is False
    stats = obsml.stats()
    assert stats["sink_retries"] >= 1
    assert stats["objects_spooled"] >= 1
    assert stats.get("trace_files_written", 0) == 0
    failures = [r.getMessage() for r in caplog.records if "the brokensink store failed" in r.getMessage()]
    assert failures, caplog.text
    assert len(failures) <= 2  # reported once (and again at most once a minute), never per item
    settings = obsml.Settings.load()
    assert list(Path(settings.spool_dir).glob("brokensink-*/*/*.rec"))


PICKY_SINK = """
    from obsml import Sink
    objects = {}
    closed = []

    class PickySink(Sink):
        def put(self, relative, data, size):
            content = data.read(size)
            if content.startswith(b"POISON"):
                raise ValueError("this object is refused, every time")
            objects[relative] = content

        def close(self):
            closed.append(True)

    def make_sink(url, *, settings):
        return PickySink()
"""


def test_an_object_the_sink_always_refuses_is_set_aside_and_counted_not_blocking_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "picky", PICKY_SINK, group="obsml.sinks", factory="make_sink")
    import picky_plugin  # type: ignore[import-not-found]

    store = f"picky://box-{uuid.uuid4().hex}"
    poison = b"POISON" + b"x" * 70_000  # offloaded, and refused by the sink
    with running_server(make_app(store=store, flush_interval=0.05)) as url, httpx.Client(base_url=url) as client:
        client.post("/echo", content=poison, headers={"x-correlation-id": "poison", "content-type": "text/plain"})
        for n in range(60):  # traffic goes on; each flush retries at once, whatever the backoff
            client.post("/echo", content=b"fine", headers={"x-correlation-id": f"fine-{n}"})
            if obsml.flush(0.25):
                break
        assert obsml.flush(5)
    stats = obsml.stats()
    assert stats["dropped"]["sink_rejected"]["record"] == 2  # the request and the response body
    assert {"poison", "fine-0", f"fine-{n}"} <= set(spans_in(picky_plugin.objects))
    assert picky_plugin.closed  # a sink that failed is closed before it is opened again


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}: {obsml.stats()}"
        obsml.flush(0.1)
        time.sleep(0.02)


def test_a_spool_deleted_under_a_process_is_owned_again_and_what_it_held_is_counted(flaky: Any, tmp_path: Path) -> None:
    store = f"flaky://box-{uuid.uuid4().hex}"
    spool = tmp_path / "spool"
    app = make_app(store=store, spool_dir=str(spool), flush_interval=0.05, flush_timeout=0.5)
    with running_server(app) as url, httpx.Client(base_url=url) as client:
        for n in range(3):
            client.post("/echo", content=b"x" * 70_000, headers={"x-correlation-id": f"before-{n}"})
        wait_until(lambda: obsml.stats().get("requests_captured") == 3, "the three spans")
        assert obsml.flush(0.5) is False  # the sink is down: everything waits in the spool
        spooled = obsml.stats()["objects_spooled"]
        shutil.rmtree(spool)  # a cache cleaner
        for n in range(3):
            client.post("/echo", content=b"y" * 70_000, headers={"x-correlation-id": f"after-{n}"})
        flaky.state["up"] = True
        wait_until(lambda: {f"after-{n}" for n in range(3)} <= set(spans_in(flaky.objects)), "the later spans")
    stats = obsml.stats()
    assert stats["dropped"] == {"spool_lost": {"record": spooled}}
    assert set(spans_in(flaky.objects)) == {f"after-{n}" for n in range(3)}
    assert sum(name.startswith("payloads/") for name in flaky.objects) == 6
    assert [path.name for path in spool.glob("*/*/*")] == ["lock"]  # one new directory, all delivered


def dead_process_spool(root: Path, names: list[str]) -> None:
    """Records a process committed before it died (the kernel then released its lock)."""
    dead = Spool(root, 1 << 30)
    for name in names:
        record = dead.open_record(name)
        record.write(f'{{"object": "{name}"}}'.encode())
        record.commit()
    dead.after_fork()


def test_an_idle_process_delivers_a_dead_process_records_without_any_request(flaky: Any) -> None:
    store = f"flaky://box-{uuid.uuid4().hex}"
    from obsml._store import Store

    root = Store(obsml.Settings.load(store=store)).delivery.spool.root  # type: ignore[union-attr]
    dead_process_spool(root, ["traces/a.jsonl", "traces/b.jsonl"])
    flaky.state["up"] = True

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("no request in this test")

    obsml.ObsmlMiddleware(app, store=store)  # a restarted server, idle
    deadline = time.monotonic() + 10
    while len(flaky.objects) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert flaky.objects == {"traces/a.jsonl": b'{"object": "traces/a.jsonl"}',
                             "traces/b.jsonl": b'{"object": "traces/b.jsonl"}'}
    assert obsml.stats()["spool_records_adopted"] == 2


def test_a_remote_store_commits_spans_to_the_spool_soon_whatever_the_flush_interval(flaky: Any) -> None:
    # What a SIGKILL can lose is what waits in memory: for a remote store, at most ~0.25 s of spans.
    store = f"flaky://box-{uuid.uuid4().hex}"
    with running_server(make_app(store=store, flush_interval=3600, flush_timeout=0.5)) as url:
        httpx.post(f"{url}/echo", content=b"{}", headers={"x-correlation-id": "soon"})
        deadline = time.monotonic() + 10
        while not obsml.stats().get("objects_spooled") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert obsml.stats().get("objects_spooled") == 1  # the part file, an hour early


@pytest.mark.parametrize(("relative", "fits"), [("modeldata/s/m/0/inputs/a.jsonl", True), ("payloads/a.bin", False)])
def test_model_data_part_files_may_use_the_spool_room_kept_from_bodies(
    tmp_path: Path, relative: str, fits: bool
) -> None:
    spool = Spool(tmp_path / "spool", 10_000)
    record = spool.open_record(relative)
    try:
        record.write(b"x" * 9_000)  # over the bodies' 80%, under the whole bound
        record.commit()
    except StoreWriteError as exc:
        record.abort()
        assert not fits and exc.reason == "spool_full"
    else:
        assert fits
    finally:
        spool.release_directory()
