"""obsml's own counters as OpenTelemetry metrics (``obsml.*``), read from :data:`STATS` on collection.

The instruments are observable, so nothing runs per request; they are created once per
process on the global meter provider, and bind to the application's provider whenever it is
set (OpenTelemetry's proxy meter), before or after obsml starts. One is not: the outbound calls'
``http.client.request.duration`` histogram, recorded on the writer from each CLIENT span (issue 18).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Histogram, Observation
from opentelemetry.sdk.trace import ReadableSpan

from .__version__ import __version__
from ._stats import STATS

# counter in obsml.stats() -> (instrument, attributes)
_COUNTERS = {
    "requests_captured": ("obsml.requests.captured", {}),
    "requests_sampled_out": ("obsml.requests.sampled_out", {}),
    "spans_exported": ("obsml.spans.exported", {}),
    "trace_files_written": ("obsml.objects.written", {"obsml.object": "trace_file"}),
    "payloads_written": ("obsml.objects.written", {"obsml.object": "payload"}),
    "modeldata_files_written": ("obsml.objects.written", {"obsml.object": "modeldata_file"}),
    "log_files_written": ("obsml.objects.written", {"obsml.object": "log_file"}),
    "logs_exported": ("obsml.logs.exported", {}),
    "rows_collected": ("obsml.rows.collected", {}),
    "dependencies_captured": ("obsml.dependencies.captured", {}),
    "objects_spooled": ("obsml.objects.spooled", {}),
    "objects_drained": ("obsml.objects.drained", {}),
    "sink_retries": ("obsml.sink.retries", {}),
    "spool_records_adopted": ("obsml.spool.adopted", {}),
}
_DESCRIPTIONS = {
    "obsml.requests.captured": "requests captured as spans",
    "obsml.requests.sampled_out": "successful requests skipped by the sample rate",
    "obsml.spans.exported": "spans the exporters accepted",
    "obsml.logs.exported": "request log records the exporters accepted",
    "obsml.objects.written": "objects in the store (part files, payloads)",
    "obsml.rows.collected": "Collector rows written to the store (or to its spool)",
    "obsml.dependencies.captured": "outbound calls made during requests, recorded as CLIENT spans",
    "obsml.objects.spooled": "objects committed to the local spool of a remote store",
    "obsml.objects.drained": "spooled objects delivered after the sink had failed",
    "obsml.sink.retries": "failed attempts to put an object to a remote store",
    "obsml.spool.adopted": "spool records of dead processes taken over",
}

# The semantic conventions' attributes of http.client.request.duration: bounded (no URL, no path).
DEPENDENCY_METRIC = "http.client.request.duration"
_DEPENDENCY_KEYS = ("http.request.method", "server.address", "server.port", "http.response.status_code", "error.type")
# The semantic conventions' advised buckets for HTTP durations (seconds).
_DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0]

_registered = False
_lock = threading.Lock()
_dependency_duration: Histogram | None = None


def register_metrics() -> None:
    """Create obsml's instruments once per process (idempotent)."""
    global _registered, _dependency_duration
    with _lock:
        if _registered:
            return
        _registered = True
    meter = metrics.get_meter("obsml", __version__)
    _dependency_duration = meter.create_histogram(
        DEPENDENCY_METRIC, unit="s", description="Duration of the outbound HTTP calls made during requests.",
        explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
    )
    for instrument in dict.fromkeys(name for name, _ in _COUNTERS.values()):
        meter.create_observable_counter(
            instrument, callbacks=[_observe(instrument)], unit="{item}", description=_DESCRIPTIONS[instrument]
        )
    meter.create_observable_counter(
        "obsml.items.dropped", callbacks=[_observe_drops], unit="{item}",
        description="items lost, by reason (queue_full, spool_full, corrupt, ...) and kind",
    )


def _observe(instrument: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        snapshot = STATS.snapshot()
        return [
            Observation(int(snapshot.get(counter, 0)), attributes)  # type: ignore[call-overload]
            for counter, (name, attributes) in _COUNTERS.items()
            if name == instrument
        ]

    return callback


def _observe_drops(options: CallbackOptions) -> Iterable[Observation]:
    dropped = STATS.snapshot()["dropped"]
    assert isinstance(dropped, dict)
    return [
        Observation(n, {"obsml.reason": reason, "obsml.kind": kind})
        for reason, kinds in dropped.items()
        for kind, n in kinds.items()
    ]


def record_dependency(span: ReadableSpan, attributes: Any) -> None:
    """One outbound call in ``http.client.request.duration`` (on the writer, from its finished span:
    the call count is the histogram's count), by method, target host and port, status and error type."""
    histogram = _dependency_duration
    if histogram is None or span.start_time is None or span.end_time is None:
        return
    labels = {key: attributes[key] for key in _DEPENDENCY_KEYS if key in attributes}
    histogram.record(max(0, span.end_time - span.start_time) / 1e9, labels)
