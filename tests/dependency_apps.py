"""Apps whose view calls a stub service while it serves a request (issue 18: dependencies).

Served by a uvicorn or gunicorn subprocess, obsml configured by OBSML_* variables. The stub's base
URL is ``DEPENDENCY_STUB``, a port nobody listens on ``DEPENDENCY_CLOSED``. With
``APP_SPAN_LOG`` set, the app sets its own global provider and instruments httpx itself, before
obsml starts, and writes each of its spans (kind, trace id) to that file plus the process id.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import httpx
import requests
from flask import Flask
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import obsml
from obsml import ObsmlMiddleware, ObsmlWSGIMiddleware

SECRET = "CANARY-query-sig-5e6f"
scoring_log = logging.getLogger("scoring")
scoring_log.setLevel(logging.INFO)  # the app's logging: obsml records what it lets through

if os.environ.get("APP_SPAN_LOG"):
    from opentelemetry import trace
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class SpanLog(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            with open(f"{os.environ['APP_SPAN_LOG']}-{os.getpid()}", "a") as file:
                for span in spans:
                    file.write(json.dumps({"kind": span.kind.name, "trace_id": f"{span.context.trace_id:032x}"}) + "\n")
            return SpanExportResult.SUCCESS

    app_provider = TracerProvider()
    app_provider.add_span_processor(SimpleSpanProcessor(SpanLog()))
    trace.set_tracer_provider(app_provider)  # as an app does: obsml then makes the request's context current
    HTTPXClientInstrumentor().instrument(tracer_provider=app_provider)


if os.environ.get("APP_METRICS"):
    # The app's own metrics set-up: obsml's instruments bind to it.
    from opentelemetry import metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    metric_reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[metric_reader]))


def _with_requests(stub: str, closed: str) -> tuple[int, str]:
    unavailable = requests.get(f"{stub}/unavailable", timeout=10).status_code
    try:
        requests.get(f"{closed}/refused", params={"token": SECRET}, timeout=10)  # its error quotes the URL
        refused = "answered"
    except requests.ConnectionError as exc:
        refused = type(exc).__name__
    return unavailable, refused


def _targets() -> tuple[str, str]:
    return os.environ["DEPENDENCY_STUB"], os.environ["DEPENDENCY_CLOSED"]


async def call(request: Request) -> Response:
    """httpx (200, a credential in the query), then requests (503, then a refused connection)."""
    stub, closed = _targets()
    async with httpx.AsyncClient() as client:
        ok = (await client.get(f"{stub}/ok", params={"sig": SECRET, "model": "7"})).status_code
    scoring_log.info("features fetched: %s", ok)
    unavailable, refused = await run_in_threadpool(_with_requests, stub, closed)
    scoring_log.warning("model B unavailable (%s), then %s", unavailable, refused)
    return JSONResponse({"ok": ok, "unavailable": unavailable, "refused": refused})


async def plain(request: Request) -> Response:
    return JSONResponse({"called": 0})


def collected_metrics(request: Request) -> Response:
    """What the app's metric reader holds, once obsml has written what it captured (APP_METRICS)."""
    obsml.flush(10)
    data = metric_reader.get_metrics_data()
    points = [
        {"name": metric.name, "attributes": dict(point.attributes or {}),
         "count": getattr(point, "count", None), "value": getattr(point, "value", None)}
        for resource in (data.resource_metrics if data else [])
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for point in metric.data.data_points
    ]
    return JSONResponse(points)


asgi_app = Starlette(
    routes=[Route("/call", call), Route("/plain", plain), Route("/metrics", collected_metrics)],
    middleware=[Middleware(ObsmlMiddleware)],
)

flask_app = Flask(__name__)


@flask_app.get("/call")
def flask_call() -> dict[str, Any]:
    stub, closed = _targets()
    with httpx.Client() as client:
        ok = client.get(f"{stub}/ok", params={"sig": SECRET, "model": "7"}).status_code
    unavailable, refused = _with_requests(stub, closed)
    return {"ok": ok, "unavailable": unavailable, "refused": refused}


@flask_app.get("/plain")
def flask_plain() -> dict[str, Any]:
    return {"called": 0}


wsgi_app = ObsmlWSGIMiddleware(flask_app)
