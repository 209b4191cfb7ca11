"""The scoring code's outbound calls (obsml's CLIENT spans, issue 18) arrive in Application Insights as
dependency items of the request's operation; the exporter's own posts to ingestion are never among them."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import obsml
import pytest
from ingestion import Ingestion
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from test_end_to_end import Served, properties, running_server

from obsml_azure_monitor import live_exporters

SECRET = "CANARY-dependency-token-9a8b"


@contextmanager
def running_stub() -> Iterator[str]:
    """A feature store: /features answers 200, /unavailable 503."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(503 if self.path.startswith("/unavailable") else 200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def stub() -> Iterator[str]:
    with running_stub() as url:
        yield url


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ingestion: Ingestion, stub: str) -> Iterator[Served]:
    async def score(request: Request) -> Response:
        async with httpx.AsyncClient() as client:
            features = await client.get(f"{stub}/features", params={"token": SECRET, "row": "3"})
            fallback = await client.get(f"{stub}/unavailable")
        return JSONResponse({"features": features.status_code, "fallback": fallback.status_code})

    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", ingestion.connection_string)
    monkeypatch.setenv("OBSML_AZURE_MONITOR_STORAGE_DIR", str(tmp_path / "offline"))
    store = tmp_path / "store"
    app = obsml.ObsmlMiddleware(
        Starlette(routes=[Route("/score", score)]), service="credit", model="best_model", version="10",
        store=str(store), exporters="jsonl,azure_monitor", flush_interval=0.1,
    )
    (exporter,) = live_exporters()
    try:
        with running_server(app) as url:
            yield Served(url, store, ingestion)
    finally:
        obsml.flush(30)
        exporter.shutdown()


def test_outbound_calls_arrive_as_dependency_items_of_the_requests_operation(served: Served, stub: str) -> None:
    response = httpx.get(f"{served.url}/score", headers={"x-correlation-id": "dep-1"})
    assert response.json() == {"features": 200, "fallback": 503}
    obsml.flush(30)
    parts = served.store.glob("traces/*/*/*/*/*.jsonl")
    spans = [json.loads(line) for part in parts for line in part.read_text().splitlines()]
    (request_span,) = [span for span in spans if span["kind"] == "SERVER"]
    assert [span["parent_span_id"] for span in spans if span["kind"] == "CLIENT"] == [request_span["span_id"]] * 2
    (request,) = served.items("RequestData", "dep-1")
    features, fallback = sorted(served.items("RemoteDependencyData", "dep-1", count=2),
                                key=lambda e: e["data"]["baseData"]["resultCode"])

    host = stub.removeprefix("http://")
    for item in (features, fallback):
        data = item["data"]["baseData"]
        assert item["tags"]["ai.operation.id"] == request_span["trace_id"]  # the request's operation
        assert item["tags"]["ai.operation.parentId"] == request["data"]["baseData"]["id"]
        assert (data["type"], data["target"]) == ("HTTP", host)
        assert properties(item)["obsml.model.version"] == "10"
    assert features["data"]["baseData"]["name"] == "GET /features"
    assert properties(features)["obsml.correlation_id"] == "dep-1"
    assert features["data"]["baseData"]["data"] == f"{stub}/features?token=[REDACTED]&row=3"
    assert (features["data"]["baseData"]["resultCode"], features["data"]["baseData"]["success"]) == ("200", True)
    assert (fallback["data"]["baseData"]["resultCode"], fallback["data"]["baseData"]["success"]) == ("503", False)
    # The exporter's own posts to the ingestion endpoint are no one's dependency.
    assert len(served.ingestion.of_type("RemoteDependencyData")) == 2
    # (httpx's own INFO line quotes the URL whole: the log bridge's business, not the dependency's.)
    assert SECRET not in str([features, fallback, request])
