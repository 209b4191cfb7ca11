"""The plugin's settings, without a server: connection string checks, levels, and an export that cannot raise."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import obsml
import pytest
from ingestion import Ingestion
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags

from obsml_azure_monitor import azure_monitor_exporter, live_exporters
from obsml_azure_monitor._config import load_config, parse_connection_string, parse_log_level

KEY = "0badc0de-5ec2-4e7a-9b1d-c4a2a27ca1e5"


def test_a_connection_string_is_normalised_as_the_exporter_reads_it() -> None:
    raw = f" InstrumentationKey={KEY.upper()} ; IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/;"
    assert parse_connection_string(raw) == (
        f"InstrumentationKey={KEY};IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/"
    )


def test_the_config_never_shows_the_connection_string() -> None:
    config = load_config({"APPLICATIONINSIGHTS_CONNECTION_STRING": f"InstrumentationKey={KEY}"})
    assert KEY not in repr(config) and KEY not in str(config)


@pytest.mark.parametrize(("raw", "level"), [
    (None, logging.INFO), ("", logging.INFO), ("debug", logging.DEBUG), ("WARNING", logging.WARNING),
    ("25", 25), ("off", None), ("none", None),
])
def test_log_levels(raw: str | None, level: int | None) -> None:
    assert parse_log_level(raw) == level


def test_a_bad_log_level_fails_start_up(monkeypatch: pytest.MonkeyPatch, ingestion: Ingestion) -> None:
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", ingestion.connection_string)
    monkeypatch.setenv("OBSML_AZURE_MONITOR_LOG_LEVEL", "loud")
    with pytest.raises(obsml.ConfigError, match="OBSML_AZURE_MONITOR_LOG_LEVEL='loud' is not valid"):
        azure_monitor_exporter(settings=obsml.Settings(), store=None)


class RefusingStore:
    def write_atomic(self, relative: str, data: bytes) -> None:
        raise OSError("no space left on device")

    def uri(self, relative: str) -> str:
        raise AssertionError("never asked")

    def offload(self, folder: str, name: str, data: bytes, *, time_ns: int) -> object:
        raise OSError("no space left on device")


def test_export_never_raises_and_log_capture_can_be_off(
    monkeypatch: pytest.MonkeyPatch, ingestion: Ingestion, tmp_path: Path
) -> None:
    monkeypatch.setenv("APPLICATIONINSIGHTS_CONNECTION_STRING", ingestion.connection_string)
    monkeypatch.setenv("OBSML_AZURE_MONITOR_STORAGE_DIR", str(tmp_path / "offline"))
    monkeypatch.setenv("OBSML_AZURE_MONITOR_LOG_LEVEL", "off")
    exporter = azure_monitor_exporter(settings=obsml.Settings(service="credit"), store=RefusingStore())
    try:
        assert exporter.obsml_log_exporter is None  # obsml's request logs are not sent to Application Insights
        now = time.time_ns()
        span = ReadableSpan("POST /score", SpanContext(1, 2, False, TraceFlags(1)), None, Resource({}),
                            {"obsml.request.body": "b" * 9000, "obsml.correlation_id": "c"}, kind=SpanKind.SERVER,
                            start_time=now, end_time=now + 1000)
        assert exporter.export([span]) is SpanExportResult.SUCCESS  # cut and marked: the store refused
        (request,) = ingestion.wait_for(lambda: ingestion.of_type("RequestData"))
        body = request["data"]["baseData"]["properties"]["obsml.request.body"]
        assert body.endswith("the store refused the whole value]") and len(body) <= 8192

        def boom(spans: object) -> SpanExportResult:
            raise RuntimeError("exporter bug")

        monkeypatch.setattr(exporter._traces, "export", boom)
        assert exporter.export([span]) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
    assert exporter not in live_exporters()
    assert exporter.export([span]) is SpanExportResult.FAILURE
