"""RequestMetrics through the real AzureMonitorMetricExporter into the local ingestion stand-in."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from typing import Any

import obsml
import pytest
from azure.monitor.opentelemetry.exporter._constants import _AUTOCOLLECTED_INSTRUMENT_NAMES
from ingestion import Ingestion, ingestion  # noqa: F401
from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from obsml_azure_monitor._metrics import DURATION_METRIC, REQUESTS_METRIC, RequestMetrics

SETTINGS = obsml.Settings(service="scoring", model="fraud", version="3")
_ids = itertools.count(1)


def span(model: str, version: str, method: str, route: str | None, status: int | None, seconds: float, *,
         error: bool = False, exception: str | None = None, kind: SpanKind = SpanKind.SERVER) -> ReadableSpan:
    attributes: dict[str, Any] = {
        "http.request.method": method,
        "url.path": "/unbounded/" + str(next(_ids)),
        "obsml.service": SETTINGS.service,
        "obsml.model.name": model,
        "obsml.model.version": version,
        "obsml.correlation_id": f"{next(_ids):032x}",
    }
    if route is not None:
        attributes["http.route"] = route
    if status is not None:
        attributes["http.response.status_code"] = status
    events = []
    if exception is not None:
        events.append(Event("exception", {"exception.type": exception, "exception.message": "boom",
                                          "exception.escaped": True}))
    start = time.time_ns() - 5_000_000_000
    span_id = next(_ids)
    return ReadableSpan(
        name=f"{method} {route or ''}".strip(),
        context=SpanContext(trace_id=span_id, span_id=span_id, is_remote=False, trace_flags=TraceFlags(1)),
        kind=kind,
        attributes=attributes,
        events=events,
        status=Status(StatusCode.ERROR) if error else Status(StatusCode.UNSET),
        start_time=start,
        end_time=start + round(seconds * 1e9),
        resource=Resource.create({"service.name": SETTINGS.service}),
    )


@pytest.fixture
def metrics(ingestion: Ingestion, monkeypatch: pytest.MonkeyPatch) -> Iterator[RequestMetrics]:  # noqa: F811
    # No statsbeat (to Microsoft) and no customer SDK stats (a global MeterProvider that posts to this
    # ingestion at interpreter exit, when it is long gone).
    monkeypatch.setenv("APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL", "true")
    monkeypatch.setenv("APPLICATIONINSIGHTS_SDKSTATS_DISABLED", "true")
    # An hour: nothing is exported unless a test flushes.
    m = RequestMetrics(connection_string=ingestion.connection_string, settings=SETTINGS, export_interval_s=3600)
    try:
        yield m
    finally:
        m.shutdown()


def by_metric(envelopes: list[dict[str, Any]], name: str) -> dict[tuple[tuple[str, str], ...], dict[str, Any]]:
    """{sorted customDimensions items: the metric data point} for the envelopes of one metric."""
    found: dict[tuple[tuple[str, str], ...], dict[str, Any]] = {}
    for envelope in envelopes:
        (point,) = envelope["data"]["baseData"]["metrics"]
        if point["name"] == name:
            key = tuple(sorted(envelope["data"]["baseData"]["properties"].items()))
            assert key not in found, "one envelope per attribute set and interval"
            found[key] = point
    return found


def dims(model: str, version: str, method: str, route: str | None, status: int | None,
         error_type: str | None = None) -> tuple[tuple[str, str], ...]:
    d = {"obsml.model.name": model, "obsml.model.version": version, "http.request.method": method,
         "obsml.failed": "True" if error_type else "False"}
    if route is not None:
        d["http.route"] = route
    if status is not None:
        d["http.response.status_code"] = str(status)
    if error_type is not None:
        d["error.type"] = error_type
    return tuple(sorted(d.items()))


def test_counts_durations_and_failures_per_model_and_version(metrics: RequestMetrics,
                                                           ingestion: Ingestion) -> None:  # noqa: F811
    spans = [
        span("fraud", "3", "POST", "/score", 200, 0.1),
        span("fraud", "3", "POST", "/score", 200, 0.3),
        span("fraud", "3", "POST", "/score", 200, 0.2),
        span("fraud", "3", "POST", "/score", 500, 0.5, error=True, exception="ValueError"),
        span("fraud", "4", "POST", "/score", 200, 0.05),
        span("fraud", "4", "POST", "/score", 503, 1.25, error=True),
        span("fraud", "4", "POST", "/score", 503, 0.75, error=True),
        span("churn", "1", "GET", "/health", 200, 0.002),
        span("churn", "1", "GET", "/score/{id}", 404, 0.01),  # a 4xx is not a server failure
        span("churn", "1", "BREW", None, None, 2.0, error=True),  # unknown method, no route, no response
        span("churn", "1", "GET", "/x", 200, 9.0, kind=SpanKind.INTERNAL),  # not a request: ignored
    ]
    for s in spans:
        metrics.record(s)
    metrics.force_flush()

    envelopes = ingestion.wait_for(lambda: ingestion.of_type("MetricData"), timeout=10)
    assert len(envelopes) == 14  # 7 attribute sets x 2 metrics
    for envelope in envelopes:
        assert envelope["name"] == "Microsoft.ApplicationInsights.Metric"
        assert envelope["iKey"] == "00000000-0000-4000-8000-0000c0ffee01"
        assert envelope["tags"]["ai.cloud.role"] == "scoring"  # cloud_RoleName in the customMetrics table
        assert envelope["data"]["baseData"]["ver"] == 2

    durations = by_metric(envelopes, DURATION_METRIC)
    requests = by_metric(envelopes, REQUESTS_METRIC)
    expected = {
        dims("fraud", "3", "POST", "/score", 200): (3, 0.6, 0.1, 0.3),
        dims("fraud", "3", "POST", "/score", 500, "ValueError"): (1, 0.5, 0.5, 0.5),
        dims("fraud", "4", "POST", "/score", 200): (1, 0.05, 0.05, 0.05),
        dims("fraud", "4", "POST", "/score", 503, "503"): (2, 2.0, 0.75, 1.25),
        dims("churn", "1", "GET", "/health", 200): (1, 0.002, 0.002, 0.002),
        dims("churn", "1", "GET", "/score/{id}", 404): (1, 0.01, 0.01, 0.01),
        dims("churn", "1", "_OTHER", None, None, "_OTHER"): (1, 2.0, 2.0, 2.0),
    }
    # The one with an unknown method and no response has no route or status-code dimension at all.
    assert set(durations) == set(requests) == set(expected)
    for key, (count, seconds, low, high) in expected.items():
        point = durations[key]
        assert point["count"] == count, key
        assert point["value"] == pytest.approx(seconds), key
        assert point["min"] == pytest.approx(low) and point["max"] == pytest.approx(high), key
        assert requests[key] == {"name": REQUESTS_METRIC, "value": count, "count": 1}, key

    # The failure split per model/version, as a Kusto query over customDimensions would compute it.
    failed: dict[tuple[str, str], int] = {}
    total: dict[tuple[str, str], int] = {}
    for key, point in requests.items():
        d = dict(key)
        mv = (d["obsml.model.name"], d["obsml.model.version"])
        total[mv] = total.get(mv, 0) + point["value"]
        failed[mv] = failed.get(mv, 0) + (point["value"] if d["obsml.failed"] == "True" else 0)
    assert total == {("fraud", "3"): 4, ("fraud", "4"): 3, ("churn", "1"): 3}
    assert failed == {("fraud", "3"): 1, ("fraud", "4"): 2, ("churn", "1"): 1}
    # Nothing unbounded became a dimension.
    keys = {k for e in envelopes for k in e["data"]["baseData"]["properties"]}
    assert not keys & {"url.path", "obsml.correlation_id"}


def test_each_export_holds_only_its_interval(metrics: RequestMetrics, ingestion: Ingestion) -> None:  # noqa: F811
    metrics.record(span("fraud", "3", "POST", "/score", 200, 0.1))
    metrics.record(span("fraud", "3", "POST", "/score", 200, 0.1))
    metrics.force_flush()
    first = ingestion.wait_for(lambda: len(ingestion.of_type("MetricData")) == 2, timeout=10)
    assert first
    metrics.force_flush()  # nothing new: nothing sent
    metrics.record(span("fraud", "3", "POST", "/score", 200, 0.4))
    metrics.force_flush()
    assert ingestion.wait_for(lambda: len(ingestion.of_type("MetricData")) == 4, timeout=10)
    later = ingestion.of_type("MetricData")[2:]
    assert by_metric(later, REQUESTS_METRIC)[dims("fraud", "3", "POST", "/score", 200)]["value"] == 1
    point = by_metric(later, DURATION_METRIC)[dims("fraud", "3", "POST", "/score", 200)]
    assert point["count"] == 1 and point["value"] == pytest.approx(0.4)  # DELTA: sum(valueCount) over rows is right


def test_defaults_from_settings_and_nothing_raises(metrics: RequestMetrics, ingestion: Ingestion) -> None:  # noqa: F811
    s = span("x", "y", "PUT", "/a", 201, 0.25)
    bare = ReadableSpan(name="PUT /a", context=s.context, kind=SpanKind.SERVER,
                        attributes={"http.request.method": "PUT", "http.route": "/a", "http.response.status_code": 201},
                        start_time=s.start_time, end_time=s.end_time)
    metrics.record(bare)  # no model attributes: the settings' model and version
    metrics.record(ReadableSpan(name="open", context=s.context, kind=SpanKind.SERVER, start_time=s.start_time))
    metrics.record(None)  # type: ignore[arg-type]
    metrics.record(object())  # type: ignore[arg-type]
    metrics.force_flush()
    assert ingestion.wait_for(lambda: len(ingestion.of_type("MetricData")) >= 3, timeout=10)
    time.sleep(0.2)
    envelopes = ingestion.of_type("MetricData")
    point = by_metric(envelopes, DURATION_METRIC)[dims("fraud", "3", "PUT", "/a", 201)]
    assert point["count"] == 1 and point["value"] == pytest.approx(0.25)
    # The span that never ended is counted but not timed.
    assert by_metric(envelopes, REQUESTS_METRIC)[dims("fraud", "3", "_OTHER", None, None)]["value"] == 1
    assert dims("fraud", "3", "_OTHER", None, None) not in by_metric(envelopes, DURATION_METRIC)
    assert len(envelopes) == 3


def test_private_provider_names_not_rewritten_and_shutdown(metrics: RequestMetrics,
                                                            ingestion: Ingestion) -> None:  # noqa: F811
    # The exporter turns these names into standard metrics and drops every custom dimension.
    assert DURATION_METRIC not in _AUTOCOLLECTED_INSTRUMENT_NAMES
    assert REQUESTS_METRIC not in _AUTOCOLLECTED_INSTRUMENT_NAMES
    assert otel_metrics.get_meter_provider() is not metrics._provider
    metrics.record(span("fraud", "3", "POST", "/score", 200, 0.1))
    metrics.shutdown()  # exports what is left
    assert ingestion.wait_for(lambda: len(ingestion.of_type("MetricData")) == 2, timeout=10)
    metrics.shutdown()
    metrics.record(span("fraud", "3", "POST", "/score", 200, 0.1))  # after shutdown: ignored, no error
    metrics.force_flush()
    assert len(ingestion.of_type("MetricData")) == 2


def test_rejects_a_bad_interval(ingestion: Ingestion) -> None:  # noqa: F811
    with pytest.raises(obsml.ConfigError, match="export_interval_s"):
        RequestMetrics(connection_string=ingestion.connection_string, settings=SETTINGS, export_interval_s=0)
