"""obsml's own counters as OpenTelemetry metrics (``obsml.*``), read from :data:`STATS` on collection.

The instruments are observable, so nothing runs per request; they are created once per
process on the global meter provider, and bind to the application's provider whenever it is
set (OpenTelemetry's proxy meter), before or after obsml starts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

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
    "obsml.objects.spooled": "objects committed to the local spool of a remote store",
    "obsml.objects.drained": "spooled objects delivered after the sink had failed",
    "obsml.sink.retries": "failed attempts to put an object to a remote store",
    "obsml.spool.adopted": "spool records of dead processes taken over",
}

_registered = False
_lock = threading.Lock()


def register_metrics() -> None:
    """Create obsml's instruments once per process (idempotent)."""
    global _registered
    with _lock:
        if _registered:
            return
        _registered = True
    meter = metrics.get_meter("obsml", __version__)
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
