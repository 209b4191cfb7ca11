"""Outbound calls made while a request is served become CLIENT child spans of its span (issue 18)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import urllib3
from azure.storage.blob import ContainerClient
from azurite import Azurite
from conftest import read_spans, running_gunicorn, running_server
from dependency_apps import SECRET
from otlp_receiver import OtlpReceiver, running_receiver
from servers import free_port, running_command, store_env
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from test_store_azure import read_blob_spans

import obsml
import obsml.cli
from obsml import ConfigError, ObsmlMiddleware

pytestmark = pytest.mark.usefixtures("forget_new_pipelines")


class Stub:
    """A service the scoring code depends on: /ok answers 200, /unavailable 503."""

    def __init__(self) -> None:
        self.url = ""
        self.traceparents: list[str | None] = []


@contextmanager
def running_stub() -> Iterator[Stub]:
    stub = Stub()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            stub.traceparents.append(self.headers.get("traceparent"))
            status = 503 if self.path.startswith("/unavailable") else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def stub() -> Iterator[Stub]:
    with running_stub() as stub:
        yield stub


def targets(stub: Stub) -> dict[str, str]:
    return {"DEPENDENCY_STUB": stub.url, "DEPENDENCY_CLOSED": f"http://127.0.0.1:{free_port()}"}


@contextmanager
def running_uvicorn(store: Path, env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "dependency_apps:asgi_app", "--port", str(port), "--log-level", "error"]
    with running_command(command, port, store.parent / f"uvicorn-{port}.log", store_env(store, **env)) as server:
        yield server.url
        # uvicorn re-raises the signal once it has shut down gracefully (lifespan, exit flush done).
        assert server.stop() in (0, -signal.SIGTERM), server.log()


@contextmanager
def serving(server: str, store: Path, env: dict[str, str]) -> Iterator[str]:
    """``dependency_apps`` under a real server subprocess; on leaving, stopped (its exit flush done)."""
    if server == "uvicorn":
        with running_uvicorn(store, env) as url:
            yield url
    else:
        with running_gunicorn("dependency_apps:wsgi_app", store, "--workers", "1", env=env) as running:
            yield running.url
            assert running.stop() == 0, running.log()


def the_call(url: str) -> str:
    """GET /call; the request's correlation id."""
    response = httpx.get(f"{url}/call", timeout=30)
    assert response.json() == {"ok": 200, "unavailable": 503, "refused": "ConnectionError"}
    return response.headers["x-correlation-id"]


def request_and_dependencies(spans: list[dict[str, Any]], correlation_id: str) -> tuple[dict[str, Any], list[Any]]:
    request = [s for s in spans if s["kind"] == "SERVER" and s["attributes"]["obsml.correlation_id"] == correlation_id]
    assert len(request) == 1
    children = [s for s in spans if s["kind"] == "CLIENT"]
    return request[0], sorted(children, key=lambda s: s["start_time"])


def check_dependencies(request: dict[str, Any], calls: list[dict[str, Any]], stub: Stub, closed_port: int) -> None:
    """The three calls of /call, as a user reads them in the store."""
    assert [call["parent_span_id"] for call in calls] == [request["span_id"]] * 3
    assert {call["trace_id"] for call in calls} == {request["trace_id"]}
    ok, unavailable, refused = (call["attributes"] for call in calls)
    stub_port = int(stub.url.rsplit(":", 1)[1])
    assert ok["http.request.method"] == "GET"
    assert ok["url.full"] == f"{stub.url}/ok?sig=[REDACTED]&model=7"
    assert (ok["server.address"], ok["server.port"], ok["http.response.status_code"]) == ("127.0.0.1", stub_port, 200)
    assert "error.type" not in ok
    assert (unavailable["http.response.status_code"], unavailable["error.type"]) == (503, "503")
    assert refused["url.full"] == f"http://127.0.0.1:{closed_port}/refused?token=[REDACTED]"
    assert refused["server.port"] == closed_port
    assert refused["error.type"] == "requests.exceptions.ConnectionError"
    assert "http.response.status_code" not in refused
    assert [call["status"]["code"] for call in calls] == ["UNSET", "ERROR", "ERROR"]
    (refusal,) = calls[2]["events"]
    assert refusal["name"] == "exception"
    assert refusal["attributes"]["exception.type"] == "requests.exceptions.ConnectionError"
    assert "/refused?token=[REDACTED]" in refusal["attributes"]["exception.message"]  # SECRET: below
    for call in calls:
        assert not {"http.method", "http.url", "http.status_code", "net.peer.name"} & set(call["attributes"])
        assert call["attributes"]["obsml.correlation_id"] == request["attributes"]["obsml.correlation_id"]
        assert call["resource"] == request["resource"]
        assert SECRET not in json.dumps(call)
    # The call carried the trace on: the stub saw the request's trace id, the CLIENT span as parent.
    assert stub.traceparents[:2] == [
        f"00-{request['trace_id']}-{calls[0]['span_id']}-01", f"00-{request['trace_id']}-{calls[1]['span_id']}-01"
    ]


@pytest.mark.parametrize(
    ("server", "semconv"),
    [
        pytest.param("uvicorn", "", id="uvicorn"),
        pytest.param("gunicorn", "", id="gunicorn"),
        # The app's choice of HTTP attribute names (old and stable) changes nothing in obsml's records.
        pytest.param("uvicorn", "http/dup", id="uvicorn-semconv-dup"),
    ],
)
def test_the_views_outbound_calls_are_client_spans_of_the_request_in_the_store_and_at_the_collector(
    server: str, semconv: str, stub: Stub, store: Path
) -> None:
    with running_receiver() as receiver:
        env = {**targets(stub), "OBSML_EXPORTERS": "jsonl,otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
               "OTEL_SEMCONV_STABILITY_OPT_IN": semconv}
        closed_port = int(env["DEPENDENCY_CLOSED"].rsplit(":", 1)[1])
        with serving(server, store, env) as url:
            correlation_id = the_call(url)
        spans = read_spans(store)
        # Only the request and its three calls: nothing of obsml's own export to the collector.
        assert len(spans) == 4
        request, calls = request_and_dependencies(spans, correlation_id)
        check_dependencies(request, calls, stub, closed_port)
        received = same_at_the_collector(receiver, spans)
    assert {span["scope"] for span in received if span["kind"] == "SPAN_KIND_CLIENT"} == {
        "opentelemetry.instrumentation.httpx", "opentelemetry.instrumentation.requests"
    }


def test_obsml_logs_shows_a_served_request_with_its_log_lines_and_calls_in_time_order(
    stub: Stub, store: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    with running_uvicorn(store, targets(stub)) as url:
        correlation_id = the_call(url)
    assert obsml.cli.main(["logs", "--store", str(store), "--correlation-id", correlation_id, "--format", "json"]) == 0
    request, *entries = (json.loads(line) for line in capsysbinary.readouterr().out.splitlines())
    assert (request["record"], request["correlation_id"], request["route"]) == ("request", correlation_id, "/call")
    assert [(e["record"], e.get("message") or e["status_code"]) for e in entries] == [
        ("dependency", 200),
        ("log", "features fetched: 200"),
        ("dependency", 503),
        ("dependency", None),
        ("log", "model B unavailable (503), then ConnectionError"),
    ]
    assert {e["trace_id"] for e in entries} == {request["trace_id"]}
    assert entries[3]["error_type"] == "requests.exceptions.ConnectionError"
    assert entries[4]["severity_text"] == "WARN"


def same_at_the_collector(receiver: OtlpReceiver, stored: list[dict[str, Any]]) -> list[dict[str, Any]]:
    received = receiver.wait_for_spans(len(stored))
    assert len(received) == len(stored)
    for span in stored:
        got = receiver.span_by_id(span["span_id"])
        assert (got["trace_id"], got["parent_span_id"], got["kind"]) == (
            span["trace_id"], span["parent_span_id"], f"SPAN_KIND_{span['kind']}"
        )
        assert got["attributes"] == span["attributes"]
    return received


def test_obsml_writing_to_azure_blob_and_exporting_over_otlp_records_only_the_apps_calls(
    stub: Stub, store: Path, azurite: Azurite, azure_container: ContainerClient
) -> None:
    # adlfs talks to Azure Blob with aiohttp, the OTLP exporter with requests: both instrumented here.
    with running_receiver() as receiver:
        env = {
            **targets(stub), "OBSML_STORE": f"abfs://{azure_container.container_name}/obsml",
            "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string,
            "OBSML_EXPORTERS": "jsonl,otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        }
        with serving("uvicorn", store, env) as url:
            correlation_id = the_call(url)
            blob_spans(azure_container, 4)
        spans = read_blob_spans(azure_container)  # all, after the exit flush: Azure Blob's calls are not among them
        assert [span["kind"] for span in spans] == ["SERVER", "CLIENT", "CLIENT", "CLIENT"]
        _, calls = request_and_dependencies(spans, correlation_id)
        assert {call["attributes"]["server.port"] for call in calls} == {
            int(stub.url.rsplit(":", 1)[1]), int(env["DEPENDENCY_CLOSED"].rsplit(":", 1)[1])
        }
        same_at_the_collector(receiver, spans)


def blob_spans(container: ContainerClient, n: int) -> list[dict[str, Any]]:
    """The spans in the container, once there are ``n`` (delivery to a remote store takes its time)."""
    deadline = time.monotonic() + 30
    while len(spans := read_blob_spans(container)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return spans


def test_each_call_is_counted_and_timed_per_target_and_outcome_in_the_apps_metrics(stub: Stub, store: Path) -> None:
    env = {**targets(stub), "APP_METRICS": "1"}
    closed_port = int(env["DEPENDENCY_CLOSED"].rsplit(":", 1)[1])
    stub_port = int(stub.url.rsplit(":", 1)[1])
    with serving("uvicorn", store, env) as url:
        the_call(url)
        points = httpx.get(f"{url}/metrics", timeout=30).json()
    durations = [(p["attributes"], p["count"]) for p in points if p["name"] == "http.client.request.duration"]
    target = {"http.request.method": "GET", "server.address": "127.0.0.1", "server.port": stub_port}
    assert sorted(durations, key=json.dumps) == sorted([
        ({**target, "http.response.status_code": 200}, 1),
        ({**target, "http.response.status_code": 503, "error.type": "503"}, 1),
        ({**target, "server.port": closed_port, "error.type": "requests.exceptions.ConnectionError"}, 1),
    ], key=json.dumps)
    assert [p["value"] for p in points if p["name"] == "obsml.dependencies.captured"] == [3]


def test_dependencies_none_records_no_call(stub: Stub, store: Path) -> None:
    with serving("uvicorn", store, {**targets(stub), "OBSML_DEPENDENCIES": "none"}) as url:
        the_call(url)
    assert [span["kind"] for span in read_spans(store)] == ["SERVER"]
    assert stub.traceparents == [None, None]  # and no trace context was sent on


def test_an_app_that_instrumented_httpx_itself_keeps_its_spans_and_obsml_does_not_instrument_it_again(
    stub: Stub, store: Path, tmp_path: Path
) -> None:
    span_log = tmp_path / "app-spans"
    with serving("uvicorn", store, {**targets(stub), "APP_SPAN_LOG": str(span_log)}) as url:
        correlation_id = the_call(url)
    request, calls = request_and_dependencies(read_spans(store), correlation_id)
    # The httpx call once, in the app's provider; requests' calls in obsml's store.
    (log,) = tmp_path.glob("app-spans-*")
    app_spans = [json.loads(line) for line in log.read_text().splitlines()]
    assert [span for span in app_spans if span["kind"] == "CLIENT"] == [
        {"kind": "CLIENT", "trace_id": request["trace_id"]}
    ]
    assert [call["attributes"]["server.address"] for call in calls] == ["127.0.0.1", "127.0.0.1"]
    assert [call["attributes"].get("http.response.status_code") for call in calls] == [503, None]


def test_a_request_sampled_out_records_no_call_and_a_call_outside_a_request_none(stub: Stub, store: Path) -> None:
    def view(request: Request) -> Response:
        return JSONResponse({"status": httpx.get(f"{stub.url}/ok").status_code})

    middleware = [Middleware(ObsmlMiddleware, store=str(store), sample_rate=0)]
    app = Starlette(routes=[Route("/", view)], middleware=middleware)
    with running_server(app) as url:
        assert httpx.get(url).json() == {"status": 200}
    httpx.get(f"{stub.url}/ok")  # the test's own call, outside any request
    obsml.flush()
    assert read_spans(store) == []
    assert obsml.stats().get("dependencies_captured", 0) == 0


async def call_with_aiohttp(stub: Stub) -> int:
    async with aiohttp.ClientSession() as session, session.get(f"{stub.url}/ok") as response:
        return response.status


def call_with_urllib3(stub: Stub) -> int:
    return urllib3.PoolManager().request("GET", f"{stub.url}/unavailable").status


@pytest.mark.parametrize(("client", "expected"), [("aiohttp", 200), ("urllib3", 503)])
def test_aiohttp_and_urllib3_calls_are_client_spans_of_the_request(
    client: str, expected: int, stub: Stub, store: Path
) -> None:
    async def view(request: Request) -> Response:
        if client == "aiohttp":
            status = await call_with_aiohttp(stub)
        else:
            status = await run_in_threadpool(call_with_urllib3, stub)
        return JSONResponse({"status": status})

    app = Starlette(routes=[Route("/", view)], middleware=[Middleware(ObsmlMiddleware, store=str(store))])
    with running_server(app) as url:
        response = httpx.get(url)
    assert response.json() == {"status": expected}
    obsml.flush()
    spans = read_spans(store)
    request, calls = request_and_dependencies(spans, response.headers["x-correlation-id"])
    assert len(spans) == 2
    (call,) = calls
    assert (call["parent_span_id"], call["trace_id"]) == (request["span_id"], request["trace_id"])
    assert call["attributes"]["http.response.status_code"] == expected
    assert call["attributes"]["url.full"].startswith(f"{stub.url}/")
    assert obsml.stats()["dependencies_captured"] == 1


def test_a_calls_url_is_stored_without_its_user_and_password_nor_the_query_values_redact_query_names(
    stub: Stub, store: Path
) -> None:
    host = stub.url.removeprefix("http://")

    async def view(request: Request) -> Response:
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"http://scorer:CANARY-password-1f2e@{host}/ok?apikey=CANARY-key-3d4c&row=1")
        return JSONResponse({"status": answer.status_code})

    middleware = [Middleware(ObsmlMiddleware, store=str(store), redact_query=["apikey"])]
    with running_server(Starlette(routes=[Route("/", view)], middleware=middleware)) as url:
        assert httpx.get(url).json() == {"status": 200}
    obsml.flush()
    (call,) = [span for span in read_spans(store) if span["kind"] == "CLIENT"]
    assert call["attributes"]["url.full"] == f"{stub.url}/ok?apikey=[REDACTED]&row=1"
    assert "CANARY" not in json.dumps(call)


# A fresh interpreter: the middleware starts before any HTTP client library is imported, and the
# view calls the stub with a client it imports itself, in the request (``STUB`` and the store given).
_FIRST_IMPORT_SCRIPT = """
import asyncio, json, logging, os, sys
logging.basicConfig(level=logging.INFO, format="LOG %(levelname)s %(message)s")
import obsml

CLIENTS = ("aiohttp", "httpx", "requests", "urllib3")

async def view(scope, receive, send):
    await receive()
    {client_import}
    status = {client_call}
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": str(status).encode()}})

app = obsml.ObsmlMiddleware(view)
loaded_at_start = [name for name in CLIENTS if name in sys.modules]
{app_setup}
async def request():
    sent = []
    async def receive():
        return {{"type": "http.request", "body": b"", "more_body": False}}
    async def send(message):
        sent.append(message)
    scope = {{"type": "http", "asgi": {{"version": "3.0"}}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/score", "raw_path": b"/score", "root_path": "", "query_string": b"", "headers": [],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}}
    await app(scope, receive, send)
    return sent[-1]["body"].decode()

answer = asyncio.run(request())
obsml.flush()
print(json.dumps({{"loaded_at_start": loaded_at_start, "answer": answer}}))
"""


def run_first_import(store: Path, stub: Stub, client_import: str, client_call: str, app_setup: str = "") -> Any:
    script = _FIRST_IMPORT_SCRIPT.format(client_import=client_import, client_call=client_call, app_setup=app_setup)
    result = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **store_env(store, STUB=stub.url)},
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


def test_a_client_first_imported_after_start_up_is_instrumented_then_and_none_is_loaded_before(
    stub: Stub, store: Path
) -> None:
    outcome, _ = run_first_import(
        store, stub, "import httpx", 'httpx.get(os.environ["STUB"] + "/ok").status_code'
    )
    # Start-up loaded no client library (aiohttp alone took ~0.6 s and ~19 MiB): an app that
    # never imports one never pays for it.
    assert outcome == {"loaded_at_start": [], "answer": "200"}
    request = next(span for span in read_spans(store) if span["kind"] == "SERVER")
    (call,) = [span for span in read_spans(store) if span["kind"] == "CLIENT"]
    assert call["parent_span_id"] == request["span_id"] and call["trace_id"] == request["trace_id"]
    assert call["attributes"]["url.full"] == f"{stub.url}/ok"
    assert stub.traceparents[0] is not None and request["trace_id"] in stub.traceparents[0]


def test_an_app_instrumenting_a_client_after_start_up_keeps_it_when_obsml_had_not_loaded_it(
    stub: Stub, store: Path
) -> None:
    # The app's own set-up after obsml's middleware, importing the instrumentation (and so the client).
    app_setup = (
        "from opentelemetry.sdk.trace import TracerProvider\n"
        "from opentelemetry.sdk.trace.export import SimpleSpanProcessor, ConsoleSpanExporter\n"
        "from opentelemetry.instrumentation.requests import RequestsInstrumentor\n"
        "provider = TracerProvider()\n"
        "provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr, "
        "formatter=lambda span: 'APP SPAN ' + span.kind.name + chr(10))))\n"
        "RequestsInstrumentor().instrument(tracer_provider=provider)\n"
    )
    outcome, stderr = run_first_import(
        store, stub, "import requests", 'requests.get(os.environ["STUB"] + "/ok").status_code', app_setup
    )
    assert outcome == {"loaded_at_start": [], "answer": "200"}
    assert "APP SPAN CLIENT" in stderr  # the app's provider got its call
    assert "already instrumented" not in stderr
    assert "obsml leaves requests to the application's own OpenTelemetry instrumentation" in stderr
    assert [span["kind"] for span in read_spans(store)] == ["SERVER"]


def test_an_unknown_client_is_a_config_error_naming_those_accepted() -> None:
    with pytest.raises(ConfigError, match="httpx, requests, urllib3, aiohttp"):
        ObsmlMiddleware(Starlette(), dependencies="httpx,grpc")


@pytest.mark.parametrize(
    ("missing", "says"),
    [
        pytest.param("aiohttp", "aiohttp is not installed", id="library"),
        pytest.param(
            "opentelemetry.instrumentation.aiohttp_client", r"pip install 'obsml\[dependencies\]'", id="instrumentation"
        ),
    ],
)
def test_a_client_named_without_its_library_or_instrumentation_fails_start_up_saying_what_to_install(
    missing: str, says: str, store: Path
) -> None:
    # A fresh interpreter in which the module cannot be imported, as where it is not installed.
    script = (
        f"import sys; sys.modules[{missing!r}] = None\n"
        "from starlette.applications import Starlette\n"
        "from obsml import ConfigError, ObsmlMiddleware\n"
        "try:\n"
        "    ObsmlMiddleware(Starlette(), dependencies='aiohttp')\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **store_env(store)}, capture_output=True, text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "OBSML_DEPENDENCIES names aiohttp" in result.stdout
    assert re.search(says, result.stdout)
