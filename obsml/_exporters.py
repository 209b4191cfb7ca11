"""Built-in exporters: ``jsonl`` (spans as part files in the store), ``console`` and ``otlp``.

An exporter factory is called with keyword arguments only, ``factory(settings=..., store=...)``,
and returns an OpenTelemetry ``SpanExporter``. Exporters marked ``obsml_inline = True`` run
on obsml's writer thread; any other is wrapped in a ``BatchSpanProcessor`` of its own.

An exporter that also takes the request logs (issue 18) carries an OpenTelemetry
``LogRecordExporter`` as its ``obsml_log_exporter`` attribute: obsml feeds it the log records
and printed lines of each request (with the request's trace and span ids) through a private
``LoggerProvider`` and a ``BatchLogRecordProcessor`` of its own, and shuts it down at exit.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import orjson
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult

from ._exceptions import PluginImportError
from ._parts import PartFiles
from ._registry import install_hint
from ._settings import Settings
from ._store import Store

_NS = 1_000_000_000
_iso_second: tuple[int, str] = (-1, "")  # the last second formatted: spans come in bursts of the same second


def _iso(ns: int) -> str:
    """``ns`` (Unix time) in ISO 8601, UTC, to the microsecond: ``2026-11-30T20:16:23.123456+00:00``."""
    global _iso_second
    second, rest = divmod(ns, _NS)
    cached, text = _iso_second
    if cached != second:
        text = datetime.fromtimestamp(second, timezone.utc).replace(tzinfo=None).isoformat()
        _iso_second = (second, text)
    # %-formatting: a third quicker here than the f-string with its format spec (twice per span, issue 16)
    return "%s.%06d+00:00" % (text, rest // 1000)  # noqa: UP031


def span_record(
    *, name: str, trace_id: int, span_id: int, parent_span_id: int | None, kind: str, start: int, end: int,
    status: tuple[str, str | None], attributes: Mapping[str, Any], events: list[dict[str, Any]],
    resource: Mapping[str, Any], dropped_attributes: int = 0,
) -> dict[str, Any]:
    """The JSON object of one span in ``traces/…/*.jsonl`` (documented in the README)."""
    return {
        "name": name,
        "trace_id": f"{trace_id:032x}",
        "span_id": f"{span_id:016x}",
        "parent_span_id": f"{parent_span_id:016x}" if parent_span_id is not None else None,
        "kind": kind,
        "start_time": _iso(start),
        "end_time": _iso(end),
        "duration_ms": (end - start) / 1e6,
        "status": {"code": status[0], "description": status[1]},
        "attributes": attributes,
        "events": events,
        "resource": resource,
        "dropped_attributes": dropped_attributes,
    }


def log_record(
    *, time_ns: int, observed_ns: int, trace_id: int, span_id: int, severity_text: str, severity_number: int,
    logger: str, body: Any, attributes: Mapping[str, Any], resource: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON object of one log record in ``logs/<yyyy>/<mm>/<dd>/<hh>/<writer-id>-<seq>.jsonl``
    (issue 18; documented in the README). ``body`` is the message, or the structure of a printed
    JSON line; ``attributes`` hold ``obsml.correlation_id``, the service, model and version,
    ``code.*``, ``exception.*`` and the record's ``extra`` fields. Severity as OpenTelemetry's
    (TRACE 1 … DEBUG 5, INFO 9, WARN 13, ERROR 17, FATAL 21)."""
    return {
        "time": _iso(time_ns),
        "observed_time": _iso(observed_ns),
        "trace_id": f"{trace_id:032x}",
        "span_id": f"{span_id:016x}",
        "severity_text": severity_text,
        "severity_number": severity_number,
        "logger": logger,
        "body": body,
        "attributes": attributes,
        "resource": resource,
    }


def event_record(name: str, time_ns: int, attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": name, "time": _iso(time_ns), "attributes": attributes}


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """:func:`span_record` of an OpenTelemetry span (one that went through the application's provider)."""
    context = span.context
    start = span.start_time or 0
    return span_record(
        name=span.name,
        trace_id=context.trace_id if context else 0,
        span_id=context.span_id if context else 0,
        parent_span_id=span.parent.span_id if span.parent else None,
        kind=span.kind.name,
        start=start,
        end=span.end_time or start,
        status=(span.status.status_code.name, span.status.description),
        attributes=dict(span.attributes or {}),
        events=[event_record(e.name, e.timestamp, dict(e.attributes or {})) for e in span.events],
        resource=dict(span.resource.attributes),
        dropped_attributes=span.dropped_attributes,
    )


def json_line(record: Mapping[str, Any]) -> bytes:
    """One JSON line. orjson is some fifteen times faster than the stdlib here (issue 16); what it
    refuses (a lone surrogate, an integer past 64 bits, a type of a plugin's) goes the stdlib's way."""
    try:
        return orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE)
    except TypeError:  # orjson.JSONEncodeError
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        return line.encode("utf-8", "surrogatepass") + b"\n"


class JsonlExporter(SpanExporter):
    """Spans as JSON lines, batched into ``traces/<yyyy>/<mm>/<dd>/<hh>/<writer-id>-<seq>.jsonl``."""

    obsml_inline = True
    obsml_counts_written = True  # counts spans_exported itself, once a span is written

    def __init__(self, store: Store) -> None:
        self._parts = PartFiles(store, kind="span", written="spans_exported")
        self._hour = ("", "")  # the last start hour seen (ISO 8601, to the hour) and its folder

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            self.add(span_to_dict(span))
        return SpanExportResult.SUCCESS

    def add(self, record: Mapping[str, Any]) -> None:
        """Batch one :func:`span_record`: obsml's own spans come here straight, never built as
        OpenTelemetry objects when no other exporter needs them (issue 16)."""
        hour = record["start_time"][:13]
        cached, folder = self._hour
        if hour != cached:  # spans come in runs of the same hour
            folder = f"traces/{hour[0:4]}/{hour[5:7]}/{hour[8:10]}/{hour[11:13]}"
            self._hour = (hour, folder)
        self._parts.add(folder, json_line(record))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._parts.flush()

    def shutdown(self) -> None:
        self._parts.flush()


def jsonl_exporter(*, settings: Settings, store: Store) -> SpanExporter:
    return JsonlExporter(store)


def console_exporter(*, settings: Settings, store: Store) -> SpanExporter:
    exporter = ConsoleSpanExporter(service_name=settings.service, out=sys.stdout)  # stdout as it is now
    exporter.obsml_inline = True  # type: ignore[attr-defined]
    return exporter


def otlp_exporter(*, settings: Settings, store: Store) -> SpanExporter:
    """OTLP/HTTP protobuf, configured only by the standard ``OTEL_EXPORTER_OTLP_*`` variables.

    No arguments are passed, so the endpoint, headers, timeout, compression and certificates
    are resolved by the exporter itself exactly as the OpenTelemetry specification says.
    """
    try:
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise PluginImportError(f"exporter 'otlp' needs its package: {install_hint('otlp')}") from exc

    exporter = OTLPSpanExporter()
    exporter.obsml_log_exporter = OTLPLogExporter()  # type: ignore[attr-defined]  # the request logs, to /v1/logs
    return exporter
