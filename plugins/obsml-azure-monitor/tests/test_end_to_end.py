"""A real uvicorn app with ObsmlMiddleware and OBSML_EXPORTERS=jsonl,azure_monitor; the real Azure Monitor
exporter posting to the local ingestion stand-in; what arrives is what Application Insights would store."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import obsml
import pytest
import uvicorn
from ingestion import INSTRUMENTATION_KEY, Ingestion
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from obsml_azure_monitor import CUT_ATTRIBUTE, live_exporters

scoring_log = logging.getLogger("credit")
# The app's own logging set-up: obsml records what the app's loggers let through, and never changes
# their levels (the root logger stays at WARNING here).
scoring_log.setLevel(logging.INFO)


async def score(request: Request) -> Response:
    body = await request.body()
    scoring_log.info("scored %s bytes", len(body), extra={"input": body[:40].decode("latin-1")})
    logging.getLogger("azure.core.example").warning("never captured: the Azure SDK's loggers are ignored")
    logging.getLogger("obsml.example").warning("never captured: obsml's loggers are ignored")
    return JSONResponse({"size": len(body)})


async def echo(request: Request) -> Response:
    body = await request.body()
    return Response(body, media_type=request.headers.get("content-type", "application/octet-stream"))


async def fail(request: Request) -> Response:
    await request.body()
    length = int(request.query_params.get("length", "0"))
    raise ValueError("bad row" + "!" * length)


async def shout(request: Request) -> Response:
    scoring_log.warning("z" * 40_000)
    return JSONResponse({"ok": True})


async def recover(request: Request) -> Response:
    try:
        {}["missing"]
    except KeyError:
        scoring_log.exception("scoring fell back to the default")
    return JSONResponse({"score": 0})


ROUTES = [
    Route("/recover", recover, methods=["POST"]),
    Route("/score", score, methods=["POST"]),
    Route("/echo", echo, methods=["POST"]),
    Route("/fail", fail, methods=["POST"]),
    Route("/shout", shout, methods=["POST"]),
]


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 in a thread (as in obsml's tests/conftest.py)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            thread.join(0.01)
        host, port = sock.getsockname()
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


class Served:
    def __init__(self, url: str, store: Path, ingestion: Ingestion) -> None:
        self.url = url
        self.store = store
        self.ingestion = ingestion

    def span(self, correlation_id: str, flush: bool = True) -> dict[str, Any]:
        """The request's span as obsml's jsonl exporter wrote it."""
        deadline = time.monotonic() + 30
        while True:
            if flush:
                assert obsml.flush(30)
            spans = [
                json.loads(line)
                for part in sorted(self.store.glob("traces/*/*/*/*/*.jsonl"))
                for line in part.read_bytes().split(b"\n")
                if line
            ]
            found = [s for s in spans if s["attributes"]["obsml.correlation_id"] == correlation_id]
            if found or time.monotonic() > deadline:
                assert len(found) == 1
                return found[0]
            time.sleep(0.02)

    def items(self, base_type: str, correlation_id: str, count: int = 1) -> list[dict[str, Any]]:
        """The envelopes of one request of one type, once ``count`` of them arrived."""
        def found() -> list[dict[str, Any]]:
            return [e for e in self.ingestion.of_type(base_type)
                    if properties(e).get("obsml.correlation_id") == correlation_id]
        obsml.flush(30)
        items = self.ingestion.wait_for(lambda: len(found()) >= count and found())
        assert len(items) == count, f"{len(items)} {base_type} for {correlation_id}"
        return items  # type: ignore[no-any-return]

    def items_now(self, base_type: str, correlation_id: str) -> list[dict[str, Any]]:
        return [e for e in self.ingestion.of_type(base_type)
                if properties(e).get("obsml.correlation_id") == correlation_id]


def properties(envelope: dict[str, Any]) -> dict[str, str]:
    return envelope["data"]["baseData"].get("properties") or {}


def seconds(duration: str) -> float:
    """Application Insights' ``D.HH:MM:SS.fff``."""
    days, _, clock = duration.partition(".")
    hours, minutes, rest = clock.split(":")
    return int(days) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(rest)


def read_or_empty(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:  # renamed under us (the exporter's storage leases a blob by renaming it)
        return b""


def read_uri(uri: str) -> bytes:
    assert uri.startswith("file://"), uri
    return Path(uri.removeprefix("file://")).read_bytes()


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ingestion: Ingestion) -> Iterator[Served]:
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", ingestion.connection_string)
    monkeypatch.setenv("OBSML_AZURE_MONITOR_STORAGE_DIR", str(tmp_path / "offline"))
    store = tmp_path / "store"  # a fresh store: obsml builds a pipeline (and this exporter) per store
    app = obsml.ObsmlMiddleware(
        Starlette(routes=ROUTES), service="credit", model="best_model", version="10", store=str(store),
        exporters="jsonl,azure_monitor", flush_interval=0.1,
    )
    (exporter,) = live_exporters()
    try:
        with running_server(app) as url:
            yield Served(url, store, ingestion)
    finally:
        obsml.flush(30)
        exporter.shutdown()
    assert not live_exporters()


def test_a_request_arrives_as_a_request_item_with_its_trace_item(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    response = httpx.post(f"{served.url}/score", content=b'{"income": 5200}',
                          headers={"x-correlation-id": "req-1", "content-type": "application/json"})
    assert response.status_code == 200
    span = served.span("req-1")
    (request,) = served.items("RequestData", "req-1")

    assert request["name"] == "Microsoft.ApplicationInsights.Request"
    assert request["iKey"] == INSTRUMENTATION_KEY
    data = request["data"]["baseData"]
    assert data["name"] == "POST /score"
    assert data["url"] == f"{served.url}/score"
    assert data["responseCode"] == "200"
    assert data["success"] is True
    assert data["id"] == span["span_id"]
    assert abs(seconds(data["duration"]) - span["duration_ms"] / 1000) < 0.0011
    tags = request["tags"]
    assert tags["ai.operation.id"] == span["trace_id"]
    assert tags["ai.operation.name"] == "POST /score"
    assert tags["ai.cloud.role"] == "credit"
    dims = properties(request)
    assert dims["obsml.model.name"] == "best_model"
    assert dims["obsml.model.version"] == "10"
    assert dims["obsml.service"] == "credit"
    assert dims["obsml.correlation_id"] == "req-1"
    assert dims["obsml.request.body"] == '{"income": 5200}'
    assert dims["obsml.response.body"] == '{"size":16}'
    assert CUT_ATTRIBUTE not in dims
    assert not [k for k in dims if k.startswith(("http.", "url."))]  # fields, not custom dimensions

    (trace,) = served.items("MessageData", "req-1")
    assert trace["name"] == "Microsoft.ApplicationInsights.Message"
    assert trace["data"]["baseData"]["message"] == "scored 16 bytes"
    assert trace["data"]["baseData"]["severityLevel"] == 1  # Information
    assert trace["tags"]["ai.operation.id"] == span["trace_id"]
    assert trace["tags"]["ai.operation.parentId"] == span["span_id"]
    assert trace["tags"]["ai.cloud.role"] == "credit"
    trace_dims = properties(trace)
    assert trace_dims["logger_name"] == "credit"
    assert trace_dims["input"] == '{"income": 5200}'  # `extra=` fields: `customDimensions contains "input"`
    assert trace_dims["obsml.model.version"] == "10"
    # Only the scoring code's record: not obsml's, not the Azure SDK's, and nothing outside a request.
    scoring_log.info("outside any request")
    obsml.flush(30)
    messages = [e["data"]["baseData"]["message"] for e in served.ingestion.of_type("MessageData")]
    assert messages == ["scored 16 bytes"]
    assert not [r for r in caplog.records if "Failed to derive Resource" in r.getMessage()]
    assert {e["tags"]["ai.cloud.role"] for e in served.ingestion.envelopes} == {"credit"}


def test_a_failing_request_arrives_failed_with_its_exception(served: Served) -> None:
    response = httpx.post(f"{served.url}/fail", content=b"x", headers={"x-correlation-id": "req-fail"})
    assert response.status_code == 500
    span = served.span("req-fail")
    (request,) = served.items("RequestData", "req-fail")
    assert request["data"]["baseData"]["success"] is False
    assert request["data"]["baseData"]["responseCode"] == "500"

    (exception,) = served.items("ExceptionData", "req-fail")
    assert exception["name"] == "Microsoft.ApplicationInsights.Exception"
    assert exception["tags"]["ai.operation.id"] == span["trace_id"] == request["tags"]["ai.operation.id"]
    assert exception["tags"]["ai.operation.parentId"] == span["span_id"]
    (details,) = exception["data"]["baseData"]["exceptions"]
    assert details["typeName"] == "ValueError"
    assert details["message"] == "bad row"
    assert "raise ValueError" in details["stack"]
    assert properties(exception)["obsml.model.version"] == "10"


def test_a_logged_exception_arrives_as_an_exception_item_of_its_request(served: Served) -> None:
    httpx.post(f"{served.url}/recover", content=b"{}", headers={"x-correlation-id": "logged"})
    span = served.span("logged")
    (exception,) = served.items("ExceptionData", "logged")
    (details,) = exception["data"]["baseData"]["exceptions"]
    assert details["typeName"] == "KeyError"
    assert details["message"] == "scoring fell back to the default"
    assert exception["tags"]["ai.operation.id"] == span["trace_id"]
    assert exception["tags"]["ai.operation.parentId"] == span["span_id"]
    (request,) = served.items("RequestData", "logged")
    assert request["data"]["baseData"]["success"] is True


def test_bodies_of_60_and_100_kb_are_recovered_whole(served: Served) -> None:
    text_60k = b"".join(b"row %06d, income 5200, debt 1200\n" % i for i in range(1800))[:60_000]
    text_100k = text_60k + text_60k[:40_000]
    binary_60k = bytes(range(256)) * 234  # not UTF-8: inline as base64 (80 000 characters)
    sent = {"t60": text_60k, "t100": text_100k, "b60": binary_60k}
    for name, body in sent.items():
        response = httpx.post(f"{served.url}/echo", content=body, headers={
            "x-correlation-id": f"body-{name}",
            "content-type": "application/octet-stream" if name == "b60" else "text/plain"})
        assert response.content == body

    for name, body in sent.items():
        (request,) = served.items("RequestData", f"body-{name}")
        dims = properties(request)
        for direction in ("request", "response"):
            key = f"obsml.{direction}.body"
            assert all(len(value) <= 8192 for value in dims.values())
            whole = read_uri(dims[f"{key}.uri"])  # from what arrived, and the store
            assert hashlib.sha256(whole).hexdigest() == dims[f"{key}.sha256"] == hashlib.sha256(body).hexdigest()
            assert whole == body
            assert int(dims[f"{key}.size"]) == len(body)
            if len(body) > 65536:  # offloaded by obsml itself: no body in the span, nothing cut
                assert key not in dims
                assert "/payloads/" in dims[f"{key}.uri"]
            else:  # inline in the span, over 8192 characters: written by the plugin, the head kept
                assert "/azure_monitor/" in dims[f"{key}.uri"]
                assert key in json.loads(dims[CUT_ATTRIBUTE])
                assert dims[key].endswith(f"whole body is at {key}.uri]")
                assert len(dims[key]) <= 8192
        if name == "t60":
            assert dims["obsml.request.body"].startswith(text_60k[:7000].decode())


def test_an_exception_message_and_a_log_message_over_32768_characters_are_recovered(served: Served) -> None:
    httpx.post(f"{served.url}/fail?length=40000", content=b"x", headers={"x-correlation-id": "long-fail"})
    (exception,) = served.items("ExceptionData", "long-fail")
    dims = properties(exception)
    (details,) = exception["data"]["baseData"]["exceptions"]
    assert len(details["message"]) <= 32768
    assert details["message"].endswith("whole message is at obsml.exception.message.uri]")
    whole = read_uri(dims["obsml.exception.message.uri"])
    assert whole == ("bad row" + "!" * 40_000).encode()
    assert hashlib.sha256(whole).hexdigest() == dims["obsml.exception.message.sha256"]
    assert read_uri(dims["obsml.exception.stacktrace.uri"]).decode().endswith("!" * 40_000 + "\n")
    assert set(json.loads(dims[CUT_ATTRIBUTE])) == {"exception.message", "exception.stacktrace"}

    httpx.post(f"{served.url}/shout", content=b"x", headers={"x-correlation-id": "long-log"})
    (trace,) = served.items("MessageData", "long-log")
    message = trace["data"]["baseData"]["message"]
    assert len(message) <= 32768
    assert message.startswith("z" * 32_000)
    assert read_uri(properties(trace)["obsml.message.uri"]) == b"z" * 40_000
    assert trace["data"]["baseData"]["severityLevel"] == 2  # Warning


def test_items_arrive_after_ingestion_answered_503_twice(served: Served) -> None:
    served.ingestion.fail_next = [503, 503]
    started = time.monotonic()
    response = httpx.post(f"{served.url}/score", content=b"{}", headers={"x-correlation-id": "after-503"})
    assert response.status_code == 200
    assert time.monotonic() - started < 1  # the request never waits for Application Insights
    (request,) = served.items("RequestData", "after-503")
    assert request["data"]["baseData"]["responseCode"] == "200"
    served.items("MessageData", "after-503")
    statuses = len(served.ingestion.posts)
    assert statuses >= 3 and not served.ingestion.fail_next  # two refused posts, then the one that went through


def test_an_outage_fills_the_offline_storage_and_never_holds_the_store_up(served: Served, tmp_path: Path) -> None:
    # Every attempt of the HTTP pipeline (1 + 3 retries) refused, for the spans' post and the log records'.
    served.ingestion.fail_next = [503] * 8
    started = time.monotonic()
    response = httpx.post(f"{served.url}/score", content=b"{}", headers={"x-correlation-id": "outage"})
    assert response.status_code == 200
    served.span("outage", flush=False)  # the store's part file, at obsml's flush interval (0.1 s)
    assert time.monotonic() - started < 2
    offline = tmp_path / "offline"

    def kept(kind: bytes) -> list[Path]:
        return [b for b in offline.rglob("*.blob*") if b"outage" in (data := read_or_empty(b)) and kind in data]

    # Kept by the exporter in OBSML_AZURE_MONITOR_STORAGE_DIR, sent again after its lease (60 s).
    assert served.ingestion.wait_for(lambda: kept(b"Microsoft.ApplicationInsights.Request"))
    assert served.ingestion.wait_for(lambda: kept(b"Microsoft.ApplicationInsights.Message"))
    assert not served.items_now("RequestData", "outage")


CANARY = "0badc0de-5ec2-4e7a-9b1d-c4a2a27ca1e5"


@pytest.mark.parametrize(("connection_string", "expected"), [
    (None, "APPLICATIONINSIGHTS_CONNECTION_STRING is not set"),
    ("", "APPLICATIONINSIGHTS_CONNECTION_STRING is not set"),
    (CANARY, "part 1 is not Name=Value"),
    (f"InstrumentationKey={CANARY}x", "InstrumentationKey is not a GUID"),
    (f"InstrumentationKey={CANARY.upper()}-CANARY", "InstrumentationKey is not a GUID"),
    (f"IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/;Foo={CANARY}", "no InstrumentationKey"),
    (f"InstrumentationKey={CANARY};IngestionEndpoint=ftp://{CANARY}/", "IngestionEndpoint is not an http(s) URL"),
    (f"InstrumentationKey={CANARY};Authorization={CANARY}", "Authorization must be 'ikey'"),
    (f"InstrumentationKey={CANARY}=={CANARY}", "contains '='"),
])
def test_a_missing_or_malformed_connection_string_fails_start_up_without_showing_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, connection_string: str | None, expected: str
) -> None:
    if connection_string is None:
        monkeypatch.delenv("APPLICATIONINSIGHTS_CONNECTION_STRING", raising=False)
    else:
        monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", connection_string)
    with pytest.raises(obsml.PluginError) as caught:
        obsml.ObsmlMiddleware(Starlette(routes=ROUTES), store=str(tmp_path / "store"), exporters="jsonl,azure_monitor")
    message = str(caught.value)
    assert message.startswith("exporter 'azure_monitor' failed to start: ConfigError: ")
    assert expected in message
    shown = "".join(traceback.format_exception(caught.value))
    assert CANARY not in shown and CANARY.upper() not in shown
    assert not live_exporters()


def test_under_uvicorn_the_start_up_fails_with_that_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", f"InstrumentationKey={CANARY}-oops")
    app = Starlette(routes=ROUTES, middleware=[Middleware(
        obsml.ObsmlMiddleware, store=str(tmp_path / "store"), exporters="jsonl,azure_monitor")])
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    outcome: list[BaseException] = []

    def run() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            try:
                server.run(sockets=[sock])
            except BaseException as exc:  # uvicorn exits (SystemExit) when the lifespan start-up fails
                outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(30)
    assert not server.started
    assert [type(exc) for exc in outcome] == [SystemExit]
    err = capfd.readouterr().err
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING is malformed: its InstrumentationKey is not a GUID" in err
    assert CANARY not in err


def test_the_apps_logging_configuration_is_left_as_it_was(served: Served) -> None:
    root = logging.getLogger()
    assert len([h for h in root.handlers if type(h).__name__ == "RequestLogHandler"]) == 1  # obsml's, one per process
    assert root.level == logging.WARNING
    assert logging.getLogger("azure").level == logging.NOTSET
    for exporter in live_exporters():
        assert exporter.obsml_log_exporter is not None  # what obsml feeds the request logs to
        exporter.shutdown()
    assert root.level == logging.WARNING
    assert os.environ["APPLICATIONINSIGHTS_CONNECTION_STRING"]
