"""Built-in exporters: ``jsonl`` (spans as part files in the store), ``console`` and ``otlp``.

An exporter factory is called with keyword arguments only, ``factory(settings=..., store=...)``,
and returns an OpenTelemetry ``SpanExporter``. Exporters marked ``obsml_inline = True`` run
on obsml's writer thread; any other is wrapped in a ``BatchSpanProcessor`` of its own.
"""

from __future__ import annotations

import json
import os
import secrets
import sys
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult

from ._exceptions import PluginImportError
from ._objects import describe_error, failure_reason, utc_folders
from ._registry import install_hint
from ._settings import Settings
from ._stats import count, logger, record_drop
from ._store import Store

_BATCH_MAX_SPANS = 1000
# A part file is also written once its lines pass this size, so that a batch of large spans
# (inline bodies up to the inline limit, twice) stays small: it counts in obsml's worst-case memory.
_BATCH_MAX_BYTES = 8 * 1024 * 1024


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
        self._store = store
        self._lock = threading.Lock()
        self._pid = 0
        self._writer_id = ""
        self._seq = 0
        self._batches: dict[str, list[bytes]] = {}
        self._pending = 0
        self._pending_bytes = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            if self._pid != os.getpid():  # a forked child names its own files and keeps none of the parent's
                self._pid, self._writer_id, self._seq = os.getpid(), f"{os.getpid()}-{secrets.token_hex(4)}", 0
                self._batches, self._pending, self._pending_bytes = {}, 0, 0
            for span in spans:
                hour = utc_folders(span.start_time or 0, hourly=True)
                line = json.dumps(span_to_dict(span), ensure_ascii=False, separators=(",", ":"))
                encoded = line.encode("utf-8", "surrogatepass") + b"\n"
                self._batches.setdefault(hour, []).append(encoded)
                self._pending += 1
                self._pending_bytes += len(encoded)
            full = self._pending >= _BATCH_MAX_SPANS or self._pending_bytes >= _BATCH_MAX_BYTES
        if full:
            self.force_flush()
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        with self._lock:
            batches, self._batches, self._pending, self._pending_bytes = self._batches, {}, 0, 0
            names = []
            for hour in batches:
                self._seq += 1
                names.append(f"traces/{hour}/{self._writer_id}-{self._seq:06d}.jsonl")
        ok = True
        for name, lines in zip(names, batches.values(), strict=True):
            try:
                self._write(name, lines)
            except Exception as exc:
                ok = False
                record_drop("span", failure_reason(exc), len(lines), detail=describe_error(exc))
                logger.debug("obsml could not write %s", name, exc_info=True)
            else:
                count("spans_exported", len(lines))  # only once written (the caller does not count us)
        return ok

    def _write(self, name: str, lines: list[bytes]) -> None:
        # Line by line into the store's atomic object: joining them first would copy the batch.
        target = self._store.open_atomic(name)
        try:
            for line in lines:
                target.write(line)
        except BaseException:
            target.abort()
            raise
        target.commit()

    def shutdown(self) -> None:
        self.force_flush()


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
