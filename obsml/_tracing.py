"""OpenTelemetry plumbing: spans are built on the writer thread with the ids chosen at request start.

obsml builds its spans itself and hands them to its exporters' processors; it never sets a global
provider. What an application's global SDK ``TracerProvider`` gets of them is ``global_provider``
(``OBSML_GLOBAL_PROVIDER``; issue 17 item 4), since its exporters send to a backend obsml was
not asked to send bodies to:

- ``bodyless`` (the default): the same span, same ids, without the body attributes, emitted
  through the application's tracer, so its processors and exporters see it;
- ``use``: obsml's spans go through that provider whole, and obsml adds a processor that sends
  obsml's own spans, and only those, to obsml's exporters;
- ``ignore``: the application's provider never sees them.

A span the application's sampler would not record is still recorded for obsml's exporters:
obsml's store never loses a capture to someone else's sampler.
"""

from __future__ import annotations

import re
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from .__version__ import __version__
from ._exceptions import PluginError
from ._exporters import JsonlExporter, event_record, span_record
from ._log_records import LogRecordExporter
from ._registry import exporter_target, load_exporter
from ._settings import Settings
from ._stats import count, record_drop
from ._store import Store

if TYPE_CHECKING:
    from ._capture import Capture
    from ._types import Attributes

SCOPE = "obsml"
# The attributes holding body bytes; sizes, hashes and URIs stay on a bodyless span.
_BODY_ATTRIBUTES = frozenset({"obsml.request.body", "obsml.response.body"})
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)

# W3C Trace Context (tracestate): at most 32 list-members, each key=value or empty, OWS around commas.
_TRACESTATE_MAX_MEMBERS = 32
_TRACESTATE_MEMBER = re.compile(
    rb"([a-z][_0-9a-z*/-]{0,255}|[a-z0-9][_0-9a-z*/-]{0,240}@[a-z][_0-9a-z*/-]{0,13})"
    rb"=([\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e])"
)


def incoming_trace_state(header: bytes | None) -> TraceState | None:
    """The request's ``tracestate``; None when absent, empty or invalid.

    The W3C processing model lets a vendor discard an invalid one whole. Checked here, it never
    reaches OpenTelemetry's parser, which would log a warning (with the value) per request.
    """
    if not header or header.count(b",") >= _TRACESTATE_MAX_MEMBERS:
        return None
    pairs: dict[bytes, bytes] = {}
    for member in header.split(b","):
        member = member.strip(b" \t")
        if not member:
            continue
        match = _TRACESTATE_MEMBER.fullmatch(member)
        if match is None or match[1] in pairs:
            return None
        pairs[match[1]] = match[2]
    if not pairs:
        return None
    return TraceState([(key.decode("ascii"), value.decode("ascii")) for key, value in pairs.items()])


def exception_attributes(exc: BaseException, escaped: bool = True) -> dict[str, Any]:
    """The ``exception`` event's attributes, exactly as the SDK's ``record_exception`` makes them."""
    module, qualname = type(exc).__module__, type(exc).__qualname__
    return {
        "exception.type": f"{module}.{qualname}" if module and module != "builtins" else qualname,
        "exception.message": str(exc),
        "exception.stacktrace": "".join(traceback.format_exception(exc)),
        "exception.escaped": str(escaped),
    }


_UNSET: tuple[str, str | None] = ("UNSET", None)
_ERROR: tuple[str, str | None] = ("ERROR", None)


def _status(capture: Capture) -> tuple[str, str | None]:
    """ERROR when an exception escaped through obsml or the status is 5xx, described by the first
    exception that escaped the app's code; otherwise (an exception the app recorded and handled,
    or one the framework answered with a 4xx) the response says how the request went.

    The status code's name and the description, not an OpenTelemetry ``Status``: the jsonl record
    needs none (issue 16: one object, and an enum's name, fewer per span); :func:`_otel_status`
    makes one for a span that does."""
    exc = capture.exception
    if exc is None:
        if capture.status < 500:
            return _UNSET
        exc = next((event.exception for event in capture.exceptions or () if event.escaped), None)
        if exc is None:
            return _ERROR
    return "ERROR", f"{type(exc).__name__}: {exc}"


def _otel_status(status: tuple[str, str | None]) -> Status:
    return Status(StatusCode[status[0]], status[1])


class _PresetIds(IdGenerator):
    """Hands the SDK the ids a request already announced; falls back to ``fallback`` otherwise."""

    def __init__(self, fallback: IdGenerator) -> None:
        self._fallback = fallback
        self._local = threading.local()

    def preset(self, trace_id: int, span_id: int) -> None:
        self._local.ids = (trace_id, span_id)

    def clear(self) -> None:
        self._local.ids = None

    def generate_trace_id(self) -> int:
        ids = getattr(self._local, "ids", None)
        return ids[0] if ids else self._fallback.generate_trace_id()

    def generate_span_id(self) -> int:
        ids = getattr(self._local, "ids", None)
        return ids[1] if ids else self._fallback.generate_span_id()


class _InlineExport(SpanProcessor):
    """Exports synchronously on the writer thread (already off the request path).

    On the application's provider it sits behind :class:`_OnlyObsml`, so it sees only obsml's spans.
    """

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = _Counted(exporter)

    def on_end(self, span: ReadableSpan) -> None:
        self.exporter.export([span])

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.exporter.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self.exporter.shutdown()


class _Counted(SpanExporter):
    """Accounts for what an exporter did with each batch (``spans_exported`` or ``export_error``)."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        # The jsonl exporter only batches here; it counts a span once the span is written.
        self._counts_exported = not getattr(exporter, "obsml_counts_written", False)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.exporter.export(spans)
        except Exception:
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            if self._counts_exported:
                count("spans_exported", len(spans))
        else:
            record_drop("span", "export_error", len(spans), detail=type(self.exporter).__name__)
        return result

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.exporter.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self.exporter.shutdown()


class _OnlyObsml(SpanProcessor):
    """Lets through only obsml's spans, for processors added to the application's provider."""

    def __init__(self, inner: SpanProcessor) -> None:
        self.inner = inner

    def on_end(self, span: ReadableSpan) -> None:
        if span.instrumentation_scope is not None and span.instrumentation_scope.name == SCOPE:
            self.inner.on_end(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class Tracing:
    """Exporters loaded at start-up; spans emitted and batches flushed by the writer."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._inline: list[SpanProcessor] = []
        self._records: list[JsonlExporter] = []  # given obsml's spans as records, not as ReadableSpans
        self._batched: list[SpanProcessor] = []
        self._batched_exporters: list[SpanExporter] = []
        self.log_exporters: list[LogRecordExporter] = []  # the exporters' request logs (issue 18)
        for name in settings.exporters:
            factory = load_exporter(name)
            try:
                exporter = factory(settings=settings, store=store)
            except PluginError:
                raise  # already says what is wrong and what to do
            except Exception as exc:
                raise PluginError(f"exporter {name!r} failed to start: {type(exc).__name__}: {exc}") from exc
            if not isinstance(exporter, SpanExporter):
                raise PluginError(
                    f"exporter {name!r} ({exporter_target(name)}): its factory returned {type(exporter).__name__}, "
                    "not an OpenTelemetry SpanExporter"
                )
            log_exporter = getattr(exporter, "obsml_log_exporter", None)
            if log_exporter is not None:
                if not isinstance(log_exporter, LogRecordExporter):
                    raise PluginError(
                        f"exporter {name!r} ({exporter_target(name)}): its obsml_log_exporter is "
                        f"{type(log_exporter).__name__}, not an OpenTelemetry LogRecordExporter"
                    )
                self.log_exporters.append(log_exporter)
            if isinstance(exporter, JsonlExporter):
                self._records.append(exporter)
            if getattr(exporter, "obsml_inline", False):
                self._inline.append(_InlineExport(exporter))
            else:
                # Batched exporters export on the processor's own thread, never on obsml's writer:
                # a collector that is down must not hold up the store.
                counted = _Counted(exporter)
                self._batched.append(_OnlyObsml(BatchSpanProcessor(counted)))
                self._batched_exporters.append(counted)
        self.processors: list[SpanProcessor] = [*self._inline, *self._batched]
        self.jsonl = bool(self._records)  # the store's part files: logs/ beside traces/
        # Those that take obsml's own spans as ReadableSpans: any but the store's jsonl.
        self._span_processors = [
            p for p in self.processors if not (isinstance(p, _InlineExport) and p.exporter.exporter in self._records)
        ]
        self._flush_timeout_ms = int(settings.flush_timeout * 1000)
        self._resource = Resource.create({"service.name": settings.service})
        self._resource_record = dict(self._resource.attributes)
        self._scope = InstrumentationScope(SCOPE, __version__)
        self._global_provider = settings.global_provider
        self._app_provider: Any = None
        self._app_tracer: Any = None
        self._app_ids: _PresetIds | None = None
        self._no_provider_until = 0.0  # until then (monotonic), "no global provider" stands; 0: ask

    def _sdk_provider(self) -> TracerProvider | None:
        """The application's global SDK provider, if it set one and obsml's spans are to go there.

        Asking OpenTelemetry costs a lookup in the environment while none is set, so a "no" is
        asked again once a second, as on the request path (``Capturer.otel_configured``).
        """
        if self._global_provider == "ignore":
            return None
        if self._no_provider_until:
            if time.monotonic() < self._no_provider_until:
                return None
            self._no_provider_until = 0.0
        provider = trace.get_tracer_provider()
        if isinstance(provider, TracerProvider):
            return provider
        if isinstance(provider, trace.ProxyTracerProvider):
            self._no_provider_until = time.monotonic() + 1.0
        return None

    def _app_tracer_for(self, provider: Any) -> tuple[Any, _PresetIds] | None:
        """The application's tracer, hooked up once per provider; None when it cannot take our ids."""
        if provider is not self._app_provider:
            self._app_provider, self._app_tracer, self._app_ids = provider, None, None
            tracer = provider.get_tracer(SCOPE, __version__)
            if hasattr(tracer, "id_generator"):
                self._app_ids = _PresetIds(tracer.id_generator)
                tracer.id_generator = self._app_ids
                if self._global_provider == "use":  # otherwise obsml's exporters get spans from emit() alone
                    for processor in self.processors:
                        provider.add_span_processor(_OnlyObsml(processor))
                self._app_tracer = tracer
        if self._app_ids is None:
            return None
        return self._app_tracer, self._app_ids

    def emit(self, capture: Capture, name: str, attributes: Attributes) -> None:
        start = capture.start_ns
        end = start + (capture.end_perf - capture.start_perf)
        status = _status(capture)
        provider = self._sdk_provider()
        choice = None
        if provider is not None:
            choice = self._app_tracer_for(provider)
        if choice is not None:
            if self._global_provider == "use":
                if self._emit_through(*choice, capture, name, attributes, status, start, end):
                    return
            else:
                bodyless = {key: value for key, value in attributes.items() if key not in _BODY_ATTRIBUTES}
                self._emit_through(*choice, capture, name, bodyless, status, start, end)
        if self._records:
            self._emit_record(capture, name, attributes, status, start, end)
        if not self._span_processors:
            return
        # obsml's own spans are built directly: the SDK's Span would validate every attribute
        # again (obsml makes only str, int, float, bool and lists of str), a third of the cost.
        parent = self._parent(capture)
        events = tuple(
            Event("exception", exception_attributes(event.exception, event.escaped), event.time_ns)
            for event in capture.exceptions or ()
        )
        span = ReadableSpan(
            name,
            SpanContext(capture.trace_id, capture.span_id, False, _SAMPLED, parent.trace_state if parent else None),
            parent,
            self._resource,
            attributes,
            events,
            kind=SpanKind.SERVER,
            status=_otel_status(status),
            start_time=start,
            end_time=end,
            instrumentation_scope=self._scope,
        )
        for processor in self._span_processors:
            processor.on_end(span)

    def _emit_record(
        self, capture: Capture, name: str, attributes: Attributes, status: tuple[str, str | None], start: int, end: int
    ) -> None:
        """The span as the jsonl line's record, straight from the capture: no OpenTelemetry object
        is made for it (issue 16: building and converting a ReadableSpan was half the writer's time)."""
        record = span_record(
            name=name,
            trace_id=capture.trace_id,
            span_id=capture.span_id,
            parent_span_id=capture.parent[0] if capture.parent is not None else None,
            kind="SERVER",
            start=start,
            end=end,
            status=status,
            attributes=attributes,
            events=[
                event_record("exception", event.time_ns, exception_attributes(event.exception, event.escaped))
                for event in capture.exceptions
            ] if capture.exceptions else [],  # a comprehension costs a function call, even over nothing
            resource=self._resource_record,
        )
        for exporter in self._records:
            try:
                exporter.add(record)
            except Exception:  # as _Counted counts a failed export
                record_drop("span", "export_error", 1, detail=type(exporter).__name__)

    def emit_dependency(self, span: ReadableSpan, attributes: Attributes, scrub: Callable[[str], str]) -> None:
        """A finished CLIENT span of the app's (``_dependencies``) to the same exporters as the request
        spans, with ``attributes`` (already made by ``dependency_attributes``) and this pipeline's
        resource; ``scrub`` takes redacted URL parts out of the status and exception texts."""
        context = span.context
        if context is None:
            return
        start = span.start_time or 0
        end = span.end_time or start
        status = span.status
        if status.description is not None and scrub(status.description) != status.description:
            status = Status(status.status_code, scrub(status.description))
        events = tuple(
            Event(event.name, {key: scrub(value) if isinstance(value, str) else value
                               for key, value in (event.attributes or {}).items()}, event.timestamp)
            for event in span.events
        )
        if self._records:
            record = span_record(
                name=span.name,
                trace_id=context.trace_id,
                span_id=context.span_id,
                parent_span_id=span.parent.span_id if span.parent is not None else None,
                kind=span.kind.name,
                start=start,
                end=end,
                status=(status.status_code.name, status.description),
                attributes=attributes,
                events=[event_record(event.name, event.timestamp, dict(event.attributes or {})) for event in events],
                resource=self._resource_record,
                dropped_attributes=span.dropped_attributes,
            )
            for exporter in self._records:
                try:
                    exporter.add(record)
                except Exception:  # as _Counted counts a failed export
                    record_drop("span", "export_error", 1, detail=type(exporter).__name__)
        if not self._span_processors:
            return
        rebuilt = ReadableSpan(
            span.name, context, span.parent, self._resource, attributes, events, span.links, span.kind,
            status=status, start_time=start, end_time=end, instrumentation_scope=span.instrumentation_scope,
        )
        for processor in self._span_processors:
            # Past the filter that keeps the app's own spans out: this one is obsml's to export.
            (processor.inner if isinstance(processor, _OnlyObsml) else processor).on_end(rebuilt)

    @staticmethod
    def _parent(capture: Capture) -> SpanContext | None:
        if capture.parent is None:
            return None
        parent_id, flags = capture.parent
        state = incoming_trace_state(capture.tracestate)
        return SpanContext(capture.trace_id, parent_id, True, TraceFlags(flags), state)

    def _emit_through(
        self, tracer: Any, ids: _PresetIds, capture: Capture, name: str, attributes: Attributes,
        status: tuple[str, str | None], start: int, end: int,
    ) -> bool:
        """Emit through the application's provider; False when its sampler would not record the span."""
        context = Context()
        parent = self._parent(capture)
        if parent is not None:
            context = trace.set_span_in_context(NonRecordingSpan(parent), context)
        ids.preset(capture.trace_id, capture.span_id)
        try:
            span = tracer.start_span(name, context, SpanKind.SERVER, attributes, start_time=start)
        finally:
            ids.clear()
        if not span.is_recording():
            return False
        for event in capture.exceptions or ():
            span.record_exception(event.exception, timestamp=event.time_ns, escaped=event.escaped)
        if status is not _UNSET:
            span.set_status(_otel_status(status))
        span.end(end_time=end)
        return True

    def tick(self, force: bool) -> None:
        """Called by the writer at each flush interval, and with ``force`` on a flush.

        Inline exporters (the store's part files) write out their batch. Batched exporters
        send on their own schedule and thread; a flush asks them too, after the store.
        """
        for processor in self._inline:
            processor.force_flush()
        if force:
            for processor in self._batched:
                processor.force_flush(self._flush_timeout_ms)
            for exporter in self._batched_exporters:  # what an exporter buffers itself (logs, metrics)
                exporter.force_flush(self._flush_timeout_ms)
