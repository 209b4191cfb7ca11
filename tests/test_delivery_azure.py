"""Delivery to real Azure Blob (Azurite) through the spool: an outage, SIGKILLed servers, and credentials.

No mocks: a real uvicorn, real adlfs, a real Azurite stopped and restarted under load; server
processes killed with SIGKILL at random points and a fresh process adopting what they left.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from adlfs import AzureBlobFileSystem
from apps import make_app
from azure.storage.blob import ContainerClient
from azurite import ACCOUNT_KEY, ACCOUNT_NAME, Azurite, new_container
from conftest import running_gunicorn, running_server
from spool_worker import body_is_whole, self_checking_body

import obsml
from obsml._pipeline import _PIPELINES, _PIPELINES_LOCK
from obsml._spool import Spool

OPTIONS = {"service": "credit", "model": "best_model", "version": "10"}
TRACE_PART = re.compile(r"obsml/traces/\d{4}/\d\d/\d\d/\d\d/[^/.][^/]*\.jsonl")
PAYLOAD = re.compile(r"obsml/payloads/\d{4}/\d\d/\d\d/[0-9a-f]{32}-[0-9a-f]{16}-(request|response)\.[a-z]+")
WORKER = Path(__file__).with_name("spool_worker.py")


pytestmark = pytest.mark.usefixtures("forget_new_pipelines")


@pytest.fixture(autouse=True)
def fresh_filesystems() -> Iterator[None]:
    """fsspec caches filesystems by constructor arguments, not by the environment they read."""
    yield
    AzureBlobFileSystem.clear_instance_cache()


def use_account(monkeypatch: pytest.MonkeyPatch, connection_string: str) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", connection_string)
    AzureBlobFileSystem.clear_instance_cache()  # fsspec caches filesystems by arguments, not environment


def read_container(container: ContainerClient) -> dict[str, bytes]:
    return {blob.name: container.download_blob(blob.name).readall() for blob in container.list_blobs()}


def spans_of(blobs: dict[str, bytes]) -> list[dict[str, Any]]:
    """Every span of every part file; every line must be one whole JSON object."""
    return [
        json.loads(line)
        for name, data in sorted(blobs.items())
        if TRACE_PART.fullmatch(name)
        for line in data.split(b"\n")
        if line
    ]


def check_payloads(spans: list[dict[str, Any]], blobs: dict[str, bytes], container: str) -> tuple[int, list[str]]:
    """Every payload a span names that is in the container matches its sha256; returns (found, absent URIs)."""
    found, absent = 0, []
    for span in spans:
        for direction in ("request", "response"):
            uri = span["attributes"].get(f"obsml.{direction}.body.uri")
            if uri is None:
                continue
            assert uri.startswith(f"abfs://{container}/obsml/payloads/"), uri
            name = uri.removeprefix(f"abfs://{container}/")
            if name not in blobs:
                absent.append(uri)
                continue
            found += 1
            sha = span["attributes"][f"obsml.{direction}.body.sha256"]
            assert hashlib.sha256(blobs[name]).hexdigest() == sha, f"{uri} does not match its span's sha256"
            assert len(blobs[name]) == span["attributes"][f"obsml.{direction}.body.size"], uri
    return found, absent


def files_under(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


# 1. An outage under load --------------------------------------------------------------------------


def test_an_azure_outage_under_load_never_touches_requests_and_everything_lands_once(
    azurite_on_disk: Azurite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    container = new_container(azurite_on_disk, "outage")
    use_account(monkeypatch, azurite_on_disk.connection_string)
    store = f"abfs://{container.container_name}/obsml"
    rng = random.Random(1234)
    sent: dict[str, str] = {}  # correlation id -> sha256 of the body sent (and echoed)
    outcomes: list[tuple[str, float, float, bool, str]] = []  # id, start, seconds, response ok, detail
    errors: list[str] = []
    stop_sending = threading.Event()

    def send(url: str) -> None:
        try:
            with httpx.Client(base_url=url, timeout=30) as client:
                n = 0
                while not stop_sending.is_set():
                    body = self_checking_body(rng, rng.randint(66_000, 200_000)) if n % 3 == 0 else (
                        json.dumps({"row": n, "income": rng.randint(1, 10**6)}).encode())
                    correlation_id = f"outage-{n}"
                    sent[correlation_id] = hashlib.sha256(body).hexdigest()
                    headers = {"x-correlation-id": correlation_id, "content-type": "application/octet-stream"}
                    began = time.monotonic()
                    response = client.post("/echo", content=body, headers=headers)
                    ok = (response.status_code, response.content, response.headers.get("x-correlation-id")) == (
                        200, body, correlation_id)
                    outcomes.append((correlation_id, began, time.monotonic() - began, ok, str(response.status_code)))
                    n += 1
                    time.sleep(0.005)
        except Exception:
            errors.append(traceback.format_exc())

    app = make_app(store=store, spool_dir=str(tmp_path / "spool"), flush_interval=0.2, **OPTIONS)
    with running_server(app) as url:
        sender = threading.Thread(target=send, args=(url,), daemon=True)
        sender.start()
        time.sleep(2)
        down_at = time.monotonic()
        azurite_on_disk.stop()
        time.sleep(10.5)
        azurite_on_disk.start()
        up_at = time.monotonic()
        time.sleep(0.5)
        stop_sending.set()
        sender.join(30)
        flush_began = time.monotonic()
        flushed = obsml.flush(60)
        flush_seconds = time.monotonic() - flush_began
    stats: dict[str, Any] = obsml.stats()

    assert not errors, errors[0]
    during = [o for o in outcomes if down_at <= o[1] and o[1] + o[2] <= up_at]
    assert len(during) >= 50, f"only {len(during)} requests during the outage"
    failed = [o for o in outcomes if not o[3]]
    assert not failed, f"{len(failed)} requests got an abnormal response, e.g. {failed[:3]}"
    slowest = max(o[2] for o in during)
    assert slowest < 5, f"a request took {slowest:.1f} s during the outage"
    assert flushed, f"obsml.flush(60) ran out of time; stats {stats}"

    blobs = read_container(container)
    spans = spans_of(blobs)
    counts = Counter(span["attributes"]["obsml.correlation_id"] for span in spans)
    assert sorted(counts) == sorted(sent), f"missing {sorted(set(sent) - set(counts))[:5]}"
    assert [cid for cid, n in counts.items() if n > 1] == []
    for span in spans:
        attributes = span["attributes"]
        assert attributes["obsml.request.body.sha256"] == sent[attributes["obsml.correlation_id"]]
    found, absent = check_payloads(spans, blobs, container.container_name)
    assert absent == []
    assert found == 2 * sum(1 for n in range(len(sent)) if n % 3 == 0)
    referenced = {span["attributes"][f"obsml.{d}.body.uri"].removeprefix(f"abfs://{container.container_name}/")
                  for span in spans for d in ("request", "response") if f"obsml.{d}.body.uri" in span["attributes"]}
    leftovers = [name for name in blobs if not TRACE_PART.fullmatch(name) and name not in referenced]
    assert leftovers == [], f"temporary or unexpected blobs: {leftovers[:5]}"
    assert [p for p in files_under(tmp_path / "spool") if p.name != "lock"] == []
    assert stats["dropped"] == {}, stats
    print(f"outage: {len(sent)} requests, {len(during)} during the outage, flush took {flush_seconds:.1f} s; {stats}")
    assert stats.get("sink_retries", 0) > 0, f"the sink never failed as far as obsml could see: {stats}"
    assert stats.get("objects_drained", 0) > 0, stats


def test_a_spool_deleted_mid_traffic_is_owned_again_and_later_objects_are_delivered(
    azurite: Azurite, azure_container: ContainerClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_account(monkeypatch, azurite.connection_string)
    container = azure_container.container_name
    spool = tmp_path / "spool"
    rng = random.Random(2)
    app = make_app(store=f"abfs://{container}/obsml", spool_dir=str(spool), flush_interval=0.05, **OPTIONS)

    def delivered() -> set[str]:
        return {span["attributes"]["obsml.correlation_id"] for span in spans_of(read_container(azure_container))}

    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        for label in ("before", "after"):
            for n in range(6):
                body = self_checking_body(rng, 70_000) if n % 2 else json.dumps({"row": n}).encode()
                headers = {"x-correlation-id": f"{label}-{n}", "content-type": "application/octet-stream"}
                assert client.post("/echo", content=body, headers=headers).content == body
            deadline = time.monotonic() + 30
            while not {f"{label}-{n}" for n in range(6)} <= delivered():
                assert time.monotonic() < deadline, f"{label}: not delivered; {obsml.stats()}"
                obsml.flush(1)
            if label == "before":
                shutil.rmtree(spool)  # a cleaner empties the cache the spool lives in
    blobs = read_container(azure_container)
    spans = spans_of(blobs)
    assert sorted(span["attributes"]["obsml.correlation_id"] for span in spans) == sorted(
        f"{label}-{n}" for label in ("before", "after") for n in range(6))
    assert check_payloads(spans, blobs, container) == (12, [])
    assert obsml.stats()["dropped"] == {}


# 2. Servers killed with SIGKILL -------------------------------------------------------------------


def run_worker(mode: str, label: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as stderr:
        return subprocess.Popen([sys.executable, str(WORKER), mode, label], env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=stderr)


def test_servers_killed_at_random_points_leave_only_whole_objects_and_the_next_start_delivers_the_rest(
    azurite_on_disk: Azurite, tmp_path: Path
) -> None:
    seed = int(os.environ.get("OBSML_TEST_SEED") or random.SystemRandom().randrange(2**32))
    rng = random.Random(seed)
    container = new_container(azurite_on_disk, "killed")
    spool = tmp_path / "spool"
    env = {**os.environ, "OBSML_STORE": f"abfs://{container.container_name}/obsml", "OBSML_SPOOL_DIR": str(spool),
           "AZURE_STORAGE_CONNECTION_STRING": azurite_on_disk.connection_string}
    log = tmp_path / "workers.log"
    plan: list[str] = []
    try:
        for round_ in range(3):
            outage = round_ == 2 or rng.random() < 0.5  # the last kill always leaves records in the spool
            worker = run_worker("serve", f"kill{round_}", env, log)
            with worker:
                assert worker.stdout is not None
                assert worker.stdout.readline() == b"ready\n", log.read_text()
                if outage:
                    stop_after = rng.uniform(0.2, 1.5)
                    time.sleep(stop_after)
                    azurite_on_disk.stop()
                    kill_after = rng.uniform(0.3, 2.0)
                    plan.append(f"round {round_}: Azurite stopped after {stop_after:.2f} s, "
                                f"SIGKILL {kill_after:.2f} s later")
                else:
                    kill_after = rng.uniform(0.3, 3.0)
                    plan.append(f"round {round_}: SIGKILL after {kill_after:.2f} s, Azurite up")
                time.sleep(kill_after)
                worker.send_signal(signal.SIGKILL)
                assert worker.wait(10) == -signal.SIGKILL
            azurite_on_disk.start()
        assert list(spool.rglob("*.rec")), "the last killed server left no records to adopt"

        recovering = run_worker("recover", "recover", env, log)
        with recovering:
            output, _ = recovering.communicate(timeout=120)
        assert recovering.returncode == 0, log.read_text()[-4000:]
        result = json.loads(output.decode().strip().splitlines()[-1])
        stats = result["stats"]
        assert result["flushed"], stats
        assert stats.get("spool_records_adopted", 0) > 0, stats

        blobs = read_container(container)
        spans = spans_of(blobs)
        counts = Counter(span["attributes"]["obsml.correlation_id"] for span in spans)
        assert [cid for cid, n in counts.items() if n > 1] == []
        assert {"recover-0", "recover-1"} <= set(counts)
        found, absent = check_payloads(spans, blobs, container.container_name)
        payload_blobs = [name for name in blobs if PAYLOAD.fullmatch(name)]
        torn = [name for name in payload_blobs if not body_is_whole(blobs[name])]
        assert torn == []
        unexpected = [name for name in blobs if not TRACE_PART.fullmatch(name) and not PAYLOAD.fullmatch(name)]
        assert unexpected == []
        left = [p.relative_to(spool) for p in files_under(spool) if p.name.endswith((".tmp", ".rec"))]
        assert left == []
        print(f"seed {seed}: {len(spans)} spans, {found} payloads checked, {len(absent)} absent; recovery {stats}")
    except BaseException:
        print(f"OBSML_TEST_SEED={seed} reproduces this run; " + "; ".join(plan), file=sys.stderr)
        raise


def test_gunicorn_preload_workers_deliver_and_the_master_adopts_a_dead_process_records_before_any_request(
    azurite: Azurite, azure_container: ContainerClient, tmp_path: Path
) -> None:
    container = azure_container.container_name
    spool = tmp_path / "spool"
    env = {"OBSML_STORE": f"abfs://{container}/obsml", "OBSML_SPOOL_DIR": str(spool),
           "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    # A dead process's records, waiting in the spool of the same store.
    key = f"abfs-{hashlib.sha256(env['OBSML_STORE'].encode()).hexdigest()[:16]}"
    dead = Spool(spool / key, 1 << 30)
    for name in ("traces/dead-a.jsonl", "traces/dead-b.jsonl"):
        record = dead.open_record(name)
        record.write(b"{}")
        record.commit()
    dead.after_fork()  # its lock released, as the kernel does when a process dies

    with running_gunicorn("wsgi_apps:plain_app", tmp_path / "unused", "--workers", "2", "--preload",
                          env=env) as server:
        deadline = time.monotonic() + 30
        while {"obsml/traces/dead-a.jsonl", "obsml/traces/dead-b.jsonl"} - set(read_container(azure_container)):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            for n in range(20):
                body = b"w" * (70_000 if n % 4 == 0 else 100)
                assert client.post("/", content=body, headers={"x-correlation-id": f"preload-{n}"}).content == body
        # Delivered by the forked workers while they serve (not only by whoever adopts their spool later).
        expected = {f"preload-{n}" for n in range(20)}
        while {s["attributes"]["obsml.correlation_id"] for s in spans_of(read_container(azure_container))} != expected:
            assert time.monotonic() < deadline + 30, server.log()[-3000:]
            time.sleep(0.05)
        assert server.stop() == 0
    assert "SIGKILL" not in server.log()  # no worker hung at exit on the master's connections
    blobs = read_container(azure_container)
    spans = spans_of(blobs)
    assert check_payloads(spans, blobs, container) == (10, [])


# 3. Credentials never leak ------------------------------------------------------------------------

BAD_KEY = "CANARY" + "k" * 80 + "=="


def needles(connection_string: str, key: str) -> list[str]:
    return [connection_string, key, quote(key, safe=""), key.rstrip("=")[:40]]


def assert_no_secret(what: str, text: str | bytes, secrets: list[str]) -> None:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    for secret in secrets:
        assert secret.encode() not in data, f"a credential appears in {what}"


def obsml_objects(*roots: Any) -> Iterator[Any]:
    """Every obsml object reachable from ``roots`` through obsml objects' attributes."""
    seen: set[int] = set()
    stack = list(roots)
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        yield value
        if type(value).__module__.startswith("obsml"):
            stack.extend(getattr(value, "__dict__", {}).values())


@pytest.mark.parametrize("key", [ACCOUNT_KEY, BAD_KEY], ids=["azurite-key", "bad-key"])
def test_the_account_key_appears_in_no_log_error_repr_pickle_spool_file_or_blob(
    key: str, azurite: Azurite, azure_container: ContainerClient, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    connection_string = (f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={key};"
                         f"BlobEndpoint={azurite.blob_endpoint};")
    secrets = needles(connection_string, key)
    use_account(monkeypatch, connection_string)
    store = f"abfs://{azure_container.container_name}/obsml"
    spool = tmp_path / "spool"
    texts: dict[str, str] = {}
    caplog.set_level(logging.DEBUG)  # every logger: obsml's, adlfs', azure-core's HTTP logging
    big = self_checking_body(random.Random(7), 90_000)
    app = make_app(store=store, spool_dir=str(spool), flush_interval=0.05, flush_timeout=1, **OPTIONS)
    with running_server(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        for n, body in enumerate((big, b'{"row": 1}', big)):
            response = client.post("/echo", content=body, headers={"x-correlation-id": f"canary-{n}"})
            assert (response.status_code, response.content) == (200, body)
        flushed = obsml.flush(10 if key == ACCOUNT_KEY else 3)
        layers, layer = [], app.middleware_stack  # Starlette's stack of middleware, obsml's among them
        while layer is not None:
            layers.append(layer)
            layer = getattr(layer, "app", None)
        texts["reprs"] = "\n".join(repr(obj) for obj in obsml_objects(*_PIPELINES.values(), *layers))
    stats: dict[str, Any] = obsml.stats()
    if key == ACCOUNT_KEY:
        assert flushed, stats
    else:
        assert not flushed and stats.get("sink_retries", 0) > 0, stats
        assert any("the abfs store failed" in r.getMessage() for r in caplog.records), caplog.text

    texts["stats"] = json.dumps(stats)
    texts["log"] = caplog.text
    texts["records"] = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {r.args!r}" for r in caplog.records)
    settings = obsml.Settings.load(store=store, spool_dir=str(spool))
    texts["settings"] = f"{settings!r} {settings!s}"
    with _PIPELINES_LOCK:
        pipeline = next(p for p in _PIPELINES.values()
                        if p.store.delivery is not None and p.store.delivery.spool.root.parent == spool)
    texts["exceptions"] = ""
    for bad in ({"store": f"nosuch://account?sig={key}"}, {"store": f"abfs://c/{key}\x01"},
                {"store": f"abfs://c?AccountKey={key}", "queue_max_items": "many"}):
        with pytest.raises(obsml.ConfigError) as error:
            obsml.ObsmlMiddleware(app, spool_dir=str(spool), **bad)
        texts["exceptions"] += "".join(traceback.format_exception(error.value)) + "\n"

    for name, text in texts.items():
        assert_no_secret(name, text, secrets)
    assert_no_secret("pickled settings", pickle.dumps(settings), secrets)
    assert pipeline.store.delivery is not None
    for obj in (pipeline.store, pipeline.store.delivery._open_sink(), pipeline):
        try:
            pickled = pickle.dumps(obj)
        except (TypeError, pickle.PicklingError, AttributeError) as exc:
            pickled = str(exc).encode()  # refusing to be pickled is fine; saying why must not leak either
        assert_no_secret(f"pickled {type(obj).__name__}", pickled, secrets)
    for path in files_under(spool):
        assert_no_secret(f"spool file {path.relative_to(spool)}", path.read_bytes(), secrets)
    blobs = read_container(azure_container)
    assert bool(spans_of(blobs)) == (key == ACCOUNT_KEY)
    for name, data in blobs.items():
        assert_no_secret(f"blob {name}", data, secrets)

    # The same in a server process of its own, every logger at DEBUG on its stderr.
    env = {**os.environ, "OBSML_STORE": f"abfs://{azure_container.container_name}/sub",
           "OBSML_SPOOL_DIR": str(tmp_path / "sub-spool"), "AZURE_STORAGE_CONNECTION_STRING": connection_string,
           "OBSML_FLUSH_TIMEOUT": "1"}
    process = subprocess.run([sys.executable, str(WORKER), "canary", f"canary-{uuid.uuid4().hex[:8]}"], env=env,
                             capture_output=True, timeout=120)
    assert process.returncode == 0, process.stderr.decode()[-4000:]
    result = json.loads(process.stdout.decode().strip().splitlines()[-1])
    assert result["flushed"] == (key == ACCOUNT_KEY), result["stats"]
    assert b"DEBUG" in process.stderr
    if key == BAD_KEY:
        assert b"obsml WARNING obsml: the abfs store failed" in process.stderr, process.stderr.decode()[-4000:]
    assert_no_secret("the subprocess's stdout (stats, reprs)", process.stdout, secrets)
    assert_no_secret("the subprocess's stderr (every log line)", process.stderr, secrets)
    for path in files_under(tmp_path / "sub-spool"):
        assert_no_secret(f"spool file {path.name}", path.read_bytes(), secrets)
    for name, data in read_container(azure_container).items():
        assert_no_secret(f"blob {name}", data, secrets)
