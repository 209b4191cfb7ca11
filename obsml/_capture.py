"""The capture core: one :class:`Capture` per request, fed by a thin protocol adapter.

It imports no web framework. On the request path it only scans headers once, appends body
chunks to a list (or, past the inline limit, hands them to the writer) and takes
timestamps. Decoding, hashing, redaction and the span itself happen later, on the
background writer, when the finished Capture is run there as a job.
"""

from __future__ import annotations

import time
from contextvars import ContextVar, Token
from random import getrandbits
from typing import Any, NamedTuple, Protocol

from opentelemetry import context as otel_context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from ._ids import FIRST_CORRELATION_ID, VALID_TRACEPARENT, correlation_keep
from ._payloads import BodyLimits, BodyTee
from ._stats import count, record_drop, report_internal_error

CURRENT_CAPTURE: ContextVar[Capture | None] = ContextVar("obsml_current_capture", default=None)

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
MAX_EXCEPTION_EVENTS = 32  # per request: an app recording in a loop must not grow a span without bound


class CaptureSettings(BodyLimits, Protocol):
    """What a capture needs of its middleware: the ``Capturer`` (in ``_pipeline``), compiled once.

    A protocol, so that the capture core imports nothing above it.
    """

    @property
    def correlation_headers(self) -> tuple[str, ...]: ...
    @property
    def traceparent_slot(self) -> int: ...
    @property
    def tracestate_slot(self) -> int: ...
    @property
    def content_type_slot(self) -> int: ...
    @property
    def content_length_slot(self) -> int: ...
    @property
    def sample_all(self) -> bool: ...
    @property
    def sample_threshold(self) -> int: ...
    @property
    def max_capture(self) -> int: ...
    def otel_configured(self) -> bool: ...
    def emit(self, capture: Capture) -> None: ...


class RequestIds(NamedTuple):
    """The ids of the request being served, as its span and the response header will carry them."""

    correlation_id: str
    trace_id: str  # 32 hex digits, the Application Insights operation id
    span_id: str  # 16 hex digits


def current_request() -> RequestIds | None:
    """The request obsml is capturing in this context (thread or task), or None outside one.

    For joining what the app records (log lines, model data) to the request's span.
    """
    capture = CURRENT_CAPTURE.get()
    if capture is None:
        return None
    return RequestIds(capture.correlation_id, f"{capture.trace_id:032x}", f"{capture.span_id:016x}")


class ExceptionEvent(NamedTuple):
    """An exception recorded during a request, and whether it escaped the app's own code."""

    exception: BaseException
    time_ns: int
    escaped: bool


def record_exception(exc: BaseException) -> bool:
    """Put ``exc`` on the span of the request being served, as an ``exception`` event.

    For an exception the app handles itself (a fallback model, a 200 with an error field): the
    event is recorded with ``exception.escaped`` false, the span's status and the response's
    status stay what the response says, and the request is kept whatever the sample rate.
    Returns False, and records nothing, outside a request or when ``exc`` is not an exception;
    never raises.
    """
    capture = CURRENT_CAPTURE.get()
    if capture is None or capture.end_perf or not isinstance(exc, BaseException):
        return False  # end_perf: the request is over and its capture may be on the writer already
    try:
        capture.note_exception(exc, escaped=False)
    except Exception:
        report_internal_error("recording an exception")
        return False
    return True


class Capture:
    """What one request did. Filled on the request path, turned into a span on the writer."""

    __slots__ = (
        "capturer",
        "completed",
        "correlation_bytes",
        "correlation_header",
        "correlation_id",
        "correlation_rejected",
        "declared_length",
        "disconnected",
        "end_perf",
        "exception",
        "exceptions",
        "exceptions_not_recorded",
        "held_bytes",
        "info",
        "parent",
        "printed",
        "request_body",
        "request_ended",
        "request_headers",
        "responded",
        "response_body",
        "response_headers",
        "route",
        "sampled",
        "span_id",
        "start_ns",
        "start_perf",
        "status",
        "trace_id",
        "tracestate",
    )

    def __init__(
        self, capturer: CaptureSettings, found: list[bytes | None], headers: Any, info: Any, held_bytes: int
    ) -> None:
        self.start_ns = time.time_ns()
        self.start_perf = time.perf_counter_ns()
        self.capturer = capturer
        self.info = info
        self.request_headers = headers
        # Bytes of headers (and request target) this capture keeps alive, as the adapter measured them.
        self.held_bytes = held_bytes
        self.response_headers: Any = ()
        self.status = 0
        self.responded = False
        self.completed = False  # the last body message has been sent
        # The request body's end was seen (its last message, end of file, or the client gone):
        # then no byte announced by Content-Length is still unread.
        self.request_ended = False
        self.exception: BaseException | None = None  # the first one that failed the request
        self.exceptions: list[ExceptionEvent] | None = None  # every one recorded, as span events
        self.exceptions_not_recorded = 0
        self.disconnected = False
        self.route: str | None = None  # the matched route template, when an adapter learns it early
        self.printed: dict[str, tuple[str, int]] | None = None  # stream -> its unended line, characters cut
        self.end_perf = 0
        self.span_id = getrandbits(64) or 1
        self.parent: tuple[int, int] | None = None  # (span id, trace flags) of a remote parent
        self.tracestate = found[capturer.tracestate_slot]
        self.declared_length = found[capturer.content_length_slot]  # parsed on the writer
        traceparent = found[capturer.traceparent_slot]
        match = VALID_TRACEPARENT.fullmatch(traceparent) if traceparent is not None else None
        if (
            match is not None
            and match[1] != b"ff"
            and not (match[1] == b"00" and match[5] is not None)
            and int(match[2], 16)
            and int(match[3], 16)
        ):
            self.trace_id = int(match[2], 16)
            self.parent = (int(match[3], 16), int(match[4], 16))
        else:
            self.trace_id = getrandbits(128) or 1

        self.correlation_header: str | None = None
        self.correlation_rejected: str | None = None
        for slot, header in enumerate(capturer.correlation_headers):
            value = found[slot]
            if value is None:
                continue
            found_id = FIRST_CORRELATION_ID.match(value)
            if found_id is not None:
                self.correlation_bytes = found_id[1]
                self.correlation_id = self.correlation_bytes.decode("ascii")
                self.correlation_header = header
            else:  # never used raw: replaced, and the span says from which header
                self.correlation_rejected = header
            break
        if self.correlation_header is None:
            self.correlation_id = f"{getrandbits(128):032x}"
            self.correlation_bytes = self.correlation_id.encode("ascii")

        self.sampled = capturer.sample_all or correlation_keep(self.correlation_id, capturer.sample_threshold)
        inline_limit = capturer.inline_limit
        limit = capturer.max_capture if self.sampled else min(capturer.max_capture, inline_limit)
        self.request_body = BodyTee(self, "request", found[capturer.content_type_slot], limit, inline_limit)
        self.response_body = BodyTee(self, "response", None, limit, inline_limit)

    def activate(self) -> tuple[Token[Capture | None], object]:
        """Make this request current, so logs, model data and child spans in the app join it.

        The OpenTelemetry context costs several microseconds; it is set only when the
        application configured OpenTelemetry (someone is there to read it).
        """
        otel_token = None
        if self.capturer.otel_configured():
            span = NonRecordingSpan(SpanContext(self.trace_id, self.span_id, False, _SAMPLED))
            otel_token = otel_context.attach(set_span_in_context(span))
        return CURRENT_CAPTURE.set(self), otel_token

    @staticmethod
    def deactivate(tokens: tuple[Token[Capture | None], object]) -> None:
        if tokens[1] is not None:
            otel_context.detach(tokens[1])  # type: ignore[arg-type]
        CURRENT_CAPTURE.reset(tokens[0])

    def response_started(self, status: int, headers: Any, held_bytes: int) -> None:
        self.status = status
        self.responded = True
        self.response_headers = headers
        self.held_bytes += held_bytes

    def fail(self, exc: BaseException) -> None:
        """``exc`` escaped the app through obsml's frame: the request failed."""
        self.note_exception(exc, escaped=True)
        if self.exception is None:
            self.exception = exc
        if not self.responded:
            self.status = 500

    def note_exception(self, exc: BaseException, escaped: bool) -> None:
        """One ``exception`` event per exception object, however often it is heard (a framework's
        hook, then obsml's own frame when the framework re-raises it), kept from its first time."""
        events = self.exceptions
        if events is None:
            self.exceptions = [ExceptionEvent(exc, time.time_ns(), escaped)]
            return
        for index, event in enumerate(events):
            if event.exception is exc:
                if escaped and not event.escaped:
                    events[index] = event._replace(escaped=True)
                return
        if len(events) < MAX_EXCEPTION_EVENTS:
            events.append(ExceptionEvent(exc, time.time_ns(), escaped))
        else:
            self.exceptions_not_recorded += 1

    @property
    def failed(self) -> bool:
        return self.exception is not None or self.status >= 500

    def finish(self) -> None:
        """Hand the finished request to the writer: never blocks, never raises into the request."""
        self.end_perf = time.perf_counter_ns()
        if not (self.sampled or self.failed or self.exceptions):
            count("requests_sampled_out")
            self._release()
            return
        request, response = self.request_body, self.response_body
        # Past the inline limit, a body is streamed (its last slab goes ahead of its span) or carried
        # (BodyTee.carried, inlined: most bodies are inline).
        carried = False
        if request.held > request.inline_limit:
            if request.stream is not None:
                request.stream.send_slab()
            else:
                carried = True
        if response.held > response.inline_limit:
            if response.stream is not None:
                response.stream.send_slab()
            else:
                carried = True
        capturer = self.capturer
        writer = capturer.writer
        if carried:
            # A body past the inline limit that came as one chunk goes with its span, in its job: one
            # queue entry rather than two or three. Only when, sent ahead of the span on its own, it
            # would have been let in too (under the queue's bound for bodies); else it is, as before.
            bound = capturer.queue_body_bytes
            if self.nbytes <= bound and writer.submit(self, max_bytes=bound):
                return
            for tee in (request, response):
                if tee.carried:
                    tee.stream_carried()
        if writer.submit(self):
            return
        if self._follows_a_body_let_in_alone() and writer.submit(self, force=True):
            return
        record_drop("span", writer.refusal)
        streamed = False
        for tee in (self.request_body, self.response_body):
            if tee.stream is not None and tee.stream.queued:  # else the writer never opened a file
                tee.stream.abort_later()
                streamed = True
        self._release(bodies_done=not streamed)

    def _follows_a_body_let_in_alone(self) -> bool:
        # A body chunk over the queue's bound went in alone (the writer admits one into an empty
        # queue); without its span it would be discarded, so the span follows it in. There is at
        # most one such chunk in the queue at a time, so at most one forced span per chunk too.
        for tee in (self.request_body, self.response_body):
            if tee.stream is not None and tee.stream.alone and tee.stream.lost is None:
                return True
        return False

    @property
    def nbytes(self) -> int:
        """Bytes this job holds in memory: headers, inline and carried bodies (streamed bytes were counted as
        they left)."""
        request, response = self.request_body, self.response_body  # read twice per request by the writer
        return (
            self.held_bytes
            + (request.held if request.stream is None else request.stream.carried)
            + (response.held if response.stream is None else response.stream.carried)
        )

    def run(self) -> None:
        try:
            request, response = self.request_body, self.response_body
            if request.carried:
                request.write_carried()
            if response.carried:
                response.write_carried()
            self.capturer.emit(self)
        finally:
            self._release()

    def _release(self, bodies_done: bool = True) -> None:
        # Let go at once of what is heavy (the scope or environ with its headers, the inline bodies,
        # the exception with its frames). ``nbytes`` is unchanged. A capture, its body tees and a
        # streamed body's stream refer to each other: unless a slab job of theirs is still queued (a
        # dropped span's), they let go of each other, so that reference counting frees them all. Left
        # to the cyclic garbage collector, they made it run about every 120 requests and kept what
        # they held (a redacted body's stored copy) until it did: the sink-outage burst's excess (issue 16).
        self.info = None
        self.request_headers = self.response_headers = ()
        self.exception = self.exceptions = None
        for tee in (self.request_body, self.response_body):
            tee.chunks = []
            if bodies_done:
                del tee.capture
                if tee.stream is not None:  # a streamed body's stream and tee refer to each other too
                    del tee.stream.tee
