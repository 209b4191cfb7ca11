"""Built-in exporters: ``jsonl`` (spans as part files in the store), ``console`` and ``otlp``.

An exporter factory is called with keyword arguments only, ``factory(settings=..., store=...)``,
and returns an OpenTelemetry ``SpanExporter``. Exporters marked ``obsml_inline = True`` run
on obsml's writer thread; any other is wrapped in a ``BatchSpanProcessor`` of its own.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult

from ._exceptions import PluginImportError
from ._objects import utc_folders
from ._parts import PartFiles
from ._registry import install_hint
from ._settings import Settings
from ._store import Store


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).isoformat(timespec="microseconds")


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    """The JSON object of one span in ``traces/…/*.jsonl`` (documented in the README)."""
    context = span.context
    start = span.start_time or 0
    end = span.end_time or start
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "span_id": f"{context.span_id:016x}" if context else None,
        "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "kind": span.kind.name,
        "start_time": _iso(start),
        "end_time": _iso(end),
        "duration_ms": (end - start) / 1e6,
        "status": {"code": span.status.status_code.name, "description": span.status.description},
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": event.name, "time": _iso(event.timestamp), "attributes": dict(event.attributes or {})}
            for event in span.events
        ],
        "resource": dict(span.resource.attributes),
        "dropped_attributes": span.dropped_attributes,
    }


class JsonlExporter(SpanExporter):
    """Spans as JSON lines, batched into ``traces/<yyyy>/<mm>/<dd>/<hh>/<writer-id>-<seq>.jsonl``."""

    obsml_inline = True
    obsml_counts_written = True  # counts spans_exported itself, once a span is written

    def __init__(self, store: Store) -> None:
        self._parts = PartFiles(store, kind="span", written="spans_exported")

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        for span in spans:
            line = json.dumps(span_to_dict(span), ensure_ascii=False, separators=(",", ":"))
            hour = utc_folders(span.start_time or 0, hourly=True)
            self._parts.add(f"traces/{hour}", line.encode("utf-8", "surrogatepass") + b"\n")
        return SpanExportResult.SUCCESS

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
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise PluginImportError(f"exporter 'otlp' needs its package: {install_hint('otlp')}") from exc

    return OTLPSpanExporter()
