"""Request rate, latency and failures per model and version, as Application Insights custom metrics.

A private ``MeterProvider`` (never set as the global one) whose ``PeriodicExportingMetricReader``
sends, every ``export_interval_s``, through an ``AzureMonitorMetricExporter``. Two instruments, fed
from each obsml SERVER span as it is exported (on obsml's export thread):

- ``obsml.request.duration`` (histogram, unit ``s``: the span's end minus its start);
- ``obsml.requests`` (counter, unit ``{request}``).

Both carry ``obsml.model.name``, ``obsml.model.version``, ``http.request.method`` (``_OTHER`` for a
method outside RFC 9110 / 5789, as the semantic conventions say), ``http.route`` (only when the
span has one: never the path, whose values are unbounded), ``http.response.status_code`` (when the
span has one), ``obsml.failed`` (bool; the span's status is ERROR) and, for a failure, ``error.type``
(the escaped exception's type, else the status code as a string, else ``_OTHER``).

Why not ``http.server.request.duration``: the exporter treats that name (and the other HTTP
semantic-convention instrument names) as an auto-collected *standard* metric: it replaces every
attribute with ``_MS.MetricId=requests/duration`` and a few fixed keys (the model and version are
gone) and the result feeds the portal's "Server response time" chart, which Application Insights
already computes from the request items the plugin sends: it would count every request twice.

The exporter asks for DELTA temporality for counters and histograms, so each MetricData envelope
holds one interval's measurements for one attribute set: ``value`` the sum, ``count`` the number
of measurements (1 for the counter), ``min`` / ``max`` (histogram only), ``properties`` the
attributes as strings (``customMetrics``: ``value``/``valueSum``, ``valueCount``, ``valueMin``,
``valueMax``, ``customDimensions``). ``record`` only updates in-memory aggregations: no I/O.
"""

from __future__ import annotations

import threading
from typing import Any

import obsml
from azure.monitor.opentelemetry.exporter import AzureMonitorMetricExporter
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from ._log import warn_now_and_then

DURATION_METRIC = "obsml.request.duration"
REQUESTS_METRIC = "obsml.requests"
FAILED_ATTRIBUTE = "obsml.failed"

# RFC 9110 and PATCH (RFC 5789): any other method becomes "_OTHER" (bounded cardinality).
_KNOWN_METHODS = frozenset({"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE"})
_VALUE_LIMIT = 256  # a dimension value longer than this is cut (a route or an exception type never is, in practice)


class RequestMetrics:
    """Counts and times the requests of one destination; ``record`` once per exported SERVER span."""

    def __init__(self, *, connection_string: str, settings: obsml.Settings, export_interval_s: float = 60.0) -> None:
        if not export_interval_s > 0:
            raise obsml.ConfigError(f"export_interval_s={export_interval_s!r} is not valid: expected seconds > 0")
        self._model = settings.model
        self._version = settings.version
        self._reader = PeriodicExportingMetricReader(
            AzureMonitorMetricExporter(connection_string=connection_string),
            export_interval_millis=export_interval_s * 1000,
        )
        self._provider = MeterProvider(
            metric_readers=[self._reader],
            resource=Resource.create({"service.name": settings.service}),
            exemplar_filter=AlwaysOffExemplarFilter(),  # exemplars are not exported to Application Insights
            shutdown_on_exit=False,
        )
        meter = self._provider.get_meter("obsml_azure_monitor")
        self._duration = meter.create_histogram(
            DURATION_METRIC, unit="s", description="Duration of HTTP server requests captured by obsml."
        )
        self._requests = meter.create_counter(
            REQUESTS_METRIC, unit="{request}", description="HTTP server requests captured by obsml."
        )
        self._lock = threading.Lock()
        self._closed = False

    def record(self, span: ReadableSpan) -> None:
        """Add one request to the aggregations; never raises, never does I/O."""
        try:
            if self._closed or span.kind is not SpanKind.SERVER:
                return
            attributes = self._attributes(span)
            self._requests.add(1, attributes)
            if span.start_time is not None and span.end_time is not None:
                self._duration.record(max(0, span.end_time - span.start_time) / 1e9, attributes)
        except Exception:
            warn_now_and_then("metrics-record", "obsml-azure-monitor could not count a request in its metrics",
                              exc_info=True)

    def _attributes(self, span: ReadableSpan) -> dict[str, Any]:
        source = span.attributes or {}
        method = str(source.get("http.request.method", "_OTHER"))
        failed = span.status.status_code is StatusCode.ERROR
        attributes: dict[str, Any] = {
            "obsml.model.name": _text(source.get("obsml.model.name", self._model)),
            "obsml.model.version": _text(source.get("obsml.model.version", self._version)),
            "http.request.method": method if method in _KNOWN_METHODS else "_OTHER",
            FAILED_ATTRIBUTE: failed,
        }
        route = source.get("http.route")
        if route is not None:
            attributes["http.route"] = _text(route)
        status = source.get("http.response.status_code")
        if isinstance(status, int) and not isinstance(status, bool):
            attributes["http.response.status_code"] = status
        if failed:
            attributes["error.type"] = _error_type(span, status)
        return attributes

    def force_flush(self, timeout_millis: float = 30_000) -> None:
        """Export what has been recorded so far, now (on the calling thread)."""
        try:
            if not self._closed:
                self._provider.force_flush(timeout_millis)
        except Exception:
            warn_now_and_then("metrics-flush", "obsml-azure-monitor could not flush its metrics", exc_info=True)

    def shutdown(self) -> None:
        """Export what is left and stop the reader's thread; a second call does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._provider.shutdown()
        except Exception:
            warn_now_and_then("metrics-shutdown", "obsml-azure-monitor could not shut its metrics down",
                              exc_info=True)


def _text(value: object) -> str:
    return str(value)[:_VALUE_LIMIT]


def _error_type(span: ReadableSpan, status: object) -> str:
    """The semantic conventions' ``error.type``: the exception's type, else the status code."""
    for event in span.events:
        if event.name == "exception" and event.attributes and event.attributes.get("exception.type"):
            return _text(event.attributes["exception.type"])
    if isinstance(status, int) and not isinstance(status, bool):
        return str(status)
    return "_OTHER"
