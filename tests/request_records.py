"""What a request's scoring code logs and calls, written to a store the way issue 18 writes it: outbound
calls as CLIENT spans of OpenTelemetry's SDK through the jsonl exporter, children of the request span;
log records as :func:`obsml._exporters.log_record` lines in part files under ``logs/``."""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

import obsml
from obsml._exporters import JsonlExporter, json_line, log_record
from obsml._parts import PartFiles
from obsml._store import Store

MS = 1_000_000
SEVERITY = {"INFO": 9, "WARNING": 13, "ERROR": 17}


@dataclass(frozen=True)
class Call:
    """An outbound call ``at`` ms into the request: a status, or the exception it raised."""

    at: float
    took: float
    method: str
    url: str
    status: int | None = None
    raised: Exception | None = None


@dataclass(frozen=True)
class Line:
    """A log record ``at`` ms into the request: a message, or a structure (a printed JSON line)."""

    at: float
    severity: str
    logger: str
    body: Any
    raised: Exception | None = None


def start_ns(request_span: dict[str, Any]) -> int:
    start = datetime.fromisoformat(request_span["start_time"])
    return int(start.timestamp()) * 1_000_000_000 + start.microsecond * 1000


def request_ids(request_span: dict[str, Any]) -> dict[str, Any]:
    """The request's correlation id, service, model and version, as obsml puts them on its log
    records and CLIENT spans."""
    own = request_span["attributes"]
    names = ("obsml.correlation_id", "obsml.service", "obsml.model.name", "obsml.model.version")
    return {name: own[name] for name in names if name in own}


def write_calls(store: Path, request_span: dict[str, Any], calls: list[Call]) -> None:
    """``calls`` as CLIENT spans of a private SDK provider, parented on the request span, exported by
    obsml's jsonl exporter (the stable HTTP semantic conventions, as the contrib instrumentations write)."""
    provider = TracerProvider(resource=Resource.create({"service.name": "credit"}))
    provider.add_span_processor(SimpleSpanProcessor(JsonlExporter(Store(obsml.Settings.load(store=str(store))))))
    tracer = provider.get_tracer("opentelemetry.instrumentation.httpx")
    parent = SpanContext(int(request_span["trace_id"], 16), int(request_span["span_id"], 16), is_remote=False,
                         trace_flags=TraceFlags(TraceFlags.SAMPLED))
    context = trace.set_span_in_context(NonRecordingSpan(parent))
    start = start_ns(request_span)
    for call in calls:
        host, _, port = call.url.split("/")[2].partition(":")
        attributes: dict[str, Any] = {"http.request.method": call.method, "url.full": call.url,
                                      "server.address": host, "server.port": int(port or 80)}
        attributes.update(request_ids(request_span))  # what obsml adds to its CLIENT spans
        span = tracer.start_span(call.method, context=context, kind=SpanKind.CLIENT, attributes=attributes,
                                 start_time=start + int(call.at * MS))
        if call.raised is not None:
            span.record_exception(call.raised, timestamp=start + int((call.at + call.took) * MS))
            span.set_attribute("error.type", type(call.raised).__qualname__)
            span.set_status(Status(StatusCode.ERROR))
        elif call.status is not None:
            span.set_attribute("http.response.status_code", call.status)
            if call.status >= 400:
                span.set_attribute("error.type", str(call.status))
                span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=start + int((call.at + call.took) * MS))
    provider.shutdown()  # the exporter writes its part file


def write_lines(store: Path, request_span: dict[str, Any], lines: list[Line]) -> None:
    """``lines`` as log records of the request, in part files under ``logs/<yyyy>/<mm>/<dd>/<hh>/``."""
    parts = PartFiles(Store(obsml.Settings.load(store=str(store))), kind="log", written="logs_exported")
    start = start_ns(request_span)
    for line in lines:
        attributes: dict[str, Any] = request_ids(request_span)
        attributes.update({"code.function.name": "score", "code.line.number": 12})
        if line.raised is not None:
            attributes.update({
                "exception.type": type(line.raised).__qualname__, "exception.message": str(line.raised),
                "exception.stacktrace": "".join(traceback.format_exception(line.raised)),
            })  # fmt: skip
        at = start + int(line.at * MS)
        record = log_record(
            time_ns=at, observed_ns=at, trace_id=int(request_span["trace_id"], 16),
            span_id=int(request_span["span_id"], 16), severity_text=line.severity,
            severity_number=SEVERITY[line.severity], logger=line.logger, body=line.body, attributes=attributes,
            resource=request_span["resource"],
        )
        time = record["time"]
        parts.add(f"logs/{time[0:4]}/{time[5:7]}/{time[8:10]}/{time[11:13]}", json_line(record))
    assert parts.flush()


def raised(exception: Exception) -> Exception:
    """``exception`` raised and caught, so that it has a traceback."""
    try:
        raise exception
    except Exception as caught:
        return caught
