"""Wiring: a :class:`Capturer` per middleware over a :class:`Pipeline` shared per destination.

The pipeline owns the store, the exporters and the writer thread; every middleware
instance with the same destination in one process shares it (one writer per process).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

from ._attributes import span_attributes
from ._body_redaction import BodyRedactor
from ._capture import Capture
from ._control import ControlTicker
from ._dependencies import dependency_attributes, instrument_dependencies
from ._headers import HeaderSlots
from ._ids import sampling_threshold
from ._log_records import RequestLogs
from ._metrics import record_dependency, register_metrics
from ._policy import CapturePolicy
from ._redact import RedactionPolicy
from ._registry import load_redactor
from ._request_logs import OFF, install_log_handler, install_print_capture
from ._settings import Settings
from ._stats import count
from ._status import StatusReport
from ._store import Store
from ._tracing import Tracing
from ._types import Attributes
from ._writer import Writer


class Pipeline:
    """Store, exporters and background writer for one destination."""

    def __init__(self, settings: Settings) -> None:
        register_metrics()
        self.store = Store(settings)
        self.tracing = Tracing(settings, self.store)
        self.writer = Writer(
            self.tracing,
            max_items=settings.queue_max_items,
            max_bytes=settings.queue_max_bytes,
            interval=self.store.batch_interval(settings.flush_interval),
            exit_timeout=settings.flush_timeout,
        )
        # The request logs (issue 18): the store's logs/ part files, the exporters' log exporters.
        self.logs = RequestLogs(
            service=settings.service, store=self.store, jsonl=self.tracing.jsonl,
            exporters=self.tracing.log_exporters, flush_timeout=settings.flush_timeout,
        )
        self.writer.add_ticker(self.logs)
        self.writer.exit_hooks.append(self.logs.shutdown)
        # The runtime switches (README "Runtime switches"): not for a sink plugin's store, which has
        # no read side.
        self.control: ControlTicker | None = None
        if self.store.fs is not None:
            self.control = ControlTicker(settings, self.store)
            self.writer.add_ticker(self.control)
        self.status: StatusReport | None = None
        # Not for a sink plugin's store: obsml cannot read it back, and a sink may keep the first put
        # of a path (the Sink contract: a path is put again only with the same bytes).
        if settings.status and self.store.fs is not None:
            self.status = StatusReport(settings, self.store, lambda: self.writer.closed, self.control)
            self.writer.add_ticker(self.status, last=True)
        if self.store.delivery is not None:
            self.writer.exit_hooks.append(self.store.delivery.close)

    def flush(self, timeout: float, shutdown: bool = False) -> bool:
        """Everything captured so far written out (for a remote store: delivered), within ``timeout``.

        ``shutdown``: the server is stopping (an ASGI lifespan shutdown, after which uvicorn skips
        atexit), so the status written now is the writer's last, marked exited.
        """
        deadline = time.monotonic() + timeout
        if shutdown and self.status is not None:
            self.status.exit_next()
        if not self.writer.flush(timeout):
            return False
        delivery = self.store.delivery
        if delivery is None:
            return True
        if self.writer.closed:  # the exit flush stopped delivery too: what it left waits in the spool
            return not delivery.spool.records
        return delivery.wait_empty(max(0.0, deadline - time.monotonic()))


_PIPELINES: dict[tuple[Any, ...], Pipeline] = {}
_PIPELINES_LOCK = threading.Lock()


def pipeline_for(settings: Settings) -> Pipeline:
    key = (
        settings.store,
        settings.exporters,
        settings.service,
        settings.queue_max_items,
        settings.queue_max_bytes,
        settings.flush_interval,
        settings.flush_timeout,
        settings.status,
    )
    with _PIPELINES_LOCK:
        pipeline = _PIPELINES.get(key)
        if pipeline is None:
            pipeline = _PIPELINES[key] = Pipeline(settings)
        return pipeline


def flush(timeout: float | None = None) -> bool:
    """Write out everything captured so far in this process; False if ``timeout`` ran out."""
    with _PIPELINES_LOCK:
        pipelines = list(_PIPELINES.values())
    results = [p.flush(p.writer.exit_timeout if timeout is None else timeout) for p in pipelines]
    return all(results)


def body_redactor(settings: Settings) -> BodyRedactor:
    """The body redaction of ``settings``: field rules, patterns and hooks, loaded at start-up."""
    from ._spool import default_spool_dir

    hooks = [settings.redact] if settings.redact is not None else []
    hooks.extend(load_redactor(name) for name in settings.redactors)
    # Raw bodies wait for redaction beside the spool, never under the store root.
    base = Path(settings.spool_dir).expanduser() if settings.spool_dir else default_spool_dir()
    return BodyRedactor(
        settings.redact_fields,
        settings.redact_patterns,
        hooks=hooks,
        unparseable=settings.redact_unparseable,
        max_bytes=settings.redact_max_bytes,
        raw_dir=base / "raw",
    )


Describe = Callable[[Any, "Capturer"], Attributes]
_LOG_LEVELS = {
    "debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
    "critical": logging.CRITICAL, "off": OFF,
}


class Capturer:
    """Everything compiled once per middleware: header lookup, sampling, limits, redaction."""

    def __init__(self, settings: Settings, describe: Describe) -> None:
        self.settings = settings
        self.enabled = settings.enabled
        self.pipeline = pipeline_for(settings)
        # What the request's jobs use: bodies stream to the store through the writer.
        self.writer = self.pipeline.writer
        self.store = self.pipeline.store
        self.describe = describe
        self.body_redaction = body_redactor(settings)
        self.redaction = RedactionPolicy(
            settings.redact_headers, settings.correlation_headers, settings.redact_query, self.body_redaction.fields
        )
        self.policy = CapturePolicy(settings.capture_bodies, settings.capture_routes, settings.skip_routes)
        self.skip_path = self.policy.skip  # the one match on the request path (None: nothing is skipped)
        self.inline_limit = settings.inline_limit
        # capture_bodies=none: no body byte is kept at all (sizes are still counted).
        self.max_capture = 0 if settings.capture_bodies == "none" else settings.max_capture
        # Body chunks may fill four fifths of the queue: the rest is kept for spans (their headers
        # and inline bodies), so that the span of a body lost to a full queue can still say so.
        self.queue_body_bytes = max(1, settings.queue_max_bytes * 4 // 5)
        self.sample_all = settings.sample_rate >= 1.0
        self.sample_threshold = sampling_threshold(settings.sample_rate)
        self.correlation_headers = settings.correlation_headers
        # The request headers the request path reads, each in its slot (one scanner for both adapters).
        self.header_slots = slots = HeaderSlots(settings.correlation_headers)
        self.traceparent_slot, self.tracestate_slot = slots.traceparent, slots.tracestate
        self.content_type_slot, self.content_length_slot = slots.content_type, slots.content_length
        self._otel_configured = False
        self._otel_next_check = 0.0
        self.base_attributes = {
            "obsml.service": settings.service,
            "obsml.model.name": settings.model,
            "obsml.model.version": settings.version,
        }
        # The request logs (issue 18): records at or above log_level, printed lines with capture_print.
        self.request_logs = self.pipeline.logs
        logs_wanted = self.enabled and self.request_logs.enabled
        self.log_level = _LOG_LEVELS[settings.log_level] if logs_wanted else OFF
        self.capture_print = settings.capture_print and logs_wanted
        if self.log_level != OFF:
            install_log_handler()
        if self.capture_print:
            install_print_capture()
        # The HTTP clients whose calls during a request become its CLIENT child spans (issue 18).
        self.dependency_clients = instrument_dependencies(settings.dependencies) if self.enabled else frozenset()
        # The runtime switches (README "Runtime switches"): swapped in by the writer's ControlTicker.
        self.control_scope = (settings.service, settings.model, settings.version)
        self.control_values: Mapping[str, Any] = {}
        control = self.pipeline.control
        if control is not None:
            control.read_now()
            control.subscribe(self)

    def apply_control(self, values: Mapping[str, Any]) -> None:
        """Swap in the switches set for this scope (``values``; empty: none), over the settings.

        On the writer thread (and once at creation). Each is a plain attribute that the request
        path reads already, so it costs a request nothing; a request sees the old or the new value.
        """
        settings = self.settings
        bodies = values.get("capture_bodies", settings.capture_bodies)
        if bodies != self.policy.bodies:  # capture_routes means nothing with none (CapturePolicy refuses it)
            routes = () if bodies == "none" else settings.capture_routes
            self.policy = CapturePolicy(bodies, routes, settings.skip_routes)
            self.max_capture = 0 if bodies == "none" else settings.max_capture
        rate = values.get("sample_rate", settings.sample_rate)
        self.sample_threshold = sampling_threshold(rate)
        self.sample_all = rate >= 1.0
        self.enabled = values.get("enabled", settings.enabled)
        self.control_values = dict(values)

    def control_report(self) -> dict[str, Any]:
        """What this middleware runs with, for its writer's status (``obsml config show``)."""
        return {
            "scope": "/".join(self.control_scope),
            "part": "middleware",
            "enabled": self.enabled,
            "sample_rate": self.control_values.get("sample_rate", self.settings.sample_rate),
            "capture_bodies": self.policy.bodies,
            "from_control": sorted(self.control_values),
        }

    def otel_configured(self) -> bool:
        """Whether the application set a global TracerProvider (then obsml makes its context current).

        Asking OpenTelemetry costs microseconds (it reads the environment), so a "no" is
        re-checked once a second; a "yes" is final, as a global provider cannot be unset.
        """
        if self._otel_configured:
            return True
        now = time.monotonic()
        if now >= self._otel_next_check:
            self._otel_next_check = now + 1.0
            self._otel_configured = not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
        return self._otel_configured

    def start(self, headers: Any, info: Any, held_bytes: int) -> Capture:
        """Begin capturing a request whose raw ``(name, value)`` header pairs are ``headers``.

        ``held_bytes`` is what else of the request the capture keeps (its target); the headers'
        own bytes are added here, in the one scan, so the queue bound counts them too.
        """
        found, held_bytes = self.header_slots.scan_pairs(headers, held_bytes)
        return Capture(self, found, headers, info, held_bytes)

    def emit(self, capture: Capture) -> None:
        """Writer side: turn a finished capture into a span."""
        policy = self.policy
        if policy.skips_route(capture.route):  # its path did not match, its template does: no span
            for tee in (capture.request_body, capture.response_body):
                if tee.stream is not None:
                    tee.stream.finish(commit=False)
            count("requests_skipped")
            return
        count("requests_captured")
        described = self.describe(capture.info, self)
        keep_bodies = policy.keeps_bodies(
            str(described.get("url.path", "")), capture.route, capture.failed or bool(capture.exceptions)
        )
        # Payloads are committed (or aborted) before the span's attributes: building them then
        # touches no file. A response body counts only once the response started, and a body sent
        # past obsml never; a body the policy does not keep is discarded (nothing of it is stored).
        for tee, commit in ((capture.request_body, True), (capture.response_body, capture.responded)):
            if tee.stream is not None:
                tee.stream.finish(commit=commit and keep_bodies and tee.unseen is None)
        name, attributes = span_attributes(capture, described, self.base_attributes, self.redaction, keep_bodies)
        self.pipeline.tracing.emit(capture, name, attributes)

    def emit_dependency(self, span: ReadableSpan, correlation_id: str) -> None:
        """Writer side: a finished CLIENT span of a request of this middleware (``_dependencies``)."""
        count("dependencies_captured")
        attributes, scrub = dependency_attributes(span, self.redaction.query, self.base_attributes, correlation_id)
        self.pipeline.tracing.emit_dependency(span, attributes, scrub)
        record_dependency(span, attributes)

    def flush(self, shutdown: bool = False) -> bool:
        return self.pipeline.flush(self.settings.flush_timeout, shutdown)
