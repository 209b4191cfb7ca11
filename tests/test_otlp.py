"""The built-in ``otlp`` exporter against a real OTLP/HTTP receiver: the collector gets the store's spans."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from apps import make_app
from conftest import running_server, span_by_correlation_id
from otlp_receiver import OtlpReceiver, running_receiver

import obsml
from obsml import ObsmlMiddleware, PluginImportError
from obsml._exporters import otlp_exporter

pytestmark = pytest.mark.usefixtures("forget_new_pipelines")

API_KEY = "CANARY-otlp-key-77"
OPTIONS = {"service": "credit", "model": "best_model", "version": "10"}
OTEL_VARIABLES = ("ENDPOINT", "HEADERS", "TIMEOUT", "COMPRESSION", "CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE")


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    """A receiver, and the standard variables pointing the exporter at it (set before any middleware exists)."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{name}", raising=False)
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_TRACES_{name}", raising=False)
    with running_receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"x-api-key={API_KEY}")
        yield receiver


def same_span(stored: dict[str, Any], received: dict[str, Any]) -> None:
    """The span the collector got is the span in the store: ids, name, kind, attributes, events, status."""
    for key in ("trace_id", "span_id", "parent_span_id", "name", "attributes", "resource"):
        assert received[key] == stored[key], key
    assert received["kind"] == f"SPAN_KIND_{stored['kind']}"
    assert received["status"] == {
        "code": f"STATUS_CODE_{stored['status']['code']}", "message": stored["status"]["description"] or ""
    }
    assert [(e["name"], e["attributes"]) for e in received["events"]] == [
        (e["name"], e["attributes"]) for e in stored["events"]
    ]
    assert received["scope"] == "obsml"


def test_the_collector_receives_the_same_spans_as_the_store_and_the_api_key_is_never_logged(
    receiver: OtlpReceiver, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    big = b'{"rows": "' + b"x" * 70_000 + b'"}'
    with running_server(make_app(store=str(store), exporters="jsonl,otlp", **OPTIONS)) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            assert client.post("/echo", content=b'{"income": 52000}', headers={"x-correlation-id": "small-1"})
            assert client.post("/echo", content=big, headers={"x-correlation-id": "big-1"}).content == big
        with httpx.Client(base_url=url, timeout=30) as client:  # uvicorn closes the connection of a failure
            failed = client.get("/fail/before", headers={"x-correlation-id": "boom-1"})
            assert failed.status_code == 500
        stored = {cid: span_by_correlation_id(store, cid) for cid in ("small-1", "big-1", "boom-1")}
        assert obsml.flush(10)

    received = receiver.wait_for_spans(3)
    assert len(received) == 3
    for correlation_id, span in stored.items():
        got = receiver.span_by_id(span["span_id"])
        same_span(span, got)
        assert got["attributes"]["obsml.correlation_id"] == correlation_id

    big_span = receiver.span_by_id(stored["big-1"]["span_id"])["attributes"]
    assert big_span["obsml.request.body.uri"].startswith(f"file://{store}/payloads/")
    assert big_span["obsml.request.body.sha256"] == hashlib.sha256(big).hexdigest()
    assert big_span["obsml.request.body.size"] == len(big)
    assert "obsml.request.body" not in big_span
    assert receiver.span_by_id(stored["small-1"]["span_id"])["attributes"]["obsml.request.body"] == (
        '{"income": 52000}'
    )
    failure = receiver.span_by_id(stored["boom-1"]["span_id"])
    message = "RuntimeError: model exploded before answering"
    assert failure["status"] == {"code": "STATUS_CODE_ERROR", "message": message}
    [event] = failure["events"]
    assert event["name"] == "exception"
    assert event["attributes"]["exception.type"] == "RuntimeError"
    assert failure["resource"]["service.name"] == "credit"

    exported = [request for request in receiver.requests if request.span_count]
    assert exported and all(request.headers["x-api-key"] == API_KEY for request in exported)
    assert all(request.headers["content-type"] == "application/x-protobuf" for request in exported)
    # Were obsml ever to log the variable, its scrubber knows it as a secret.
    logging.getLogger("obsml").warning("exporter headers: %s", os.environ["OTEL_EXPORTER_OTLP_HEADERS"])
    assert "exporter headers: [REDACTED]" in caplog.text
    for record in caplog.records:
        assert API_KEY not in record.getMessage() and API_KEY not in (record.exc_text or "")
    assert API_KEY not in caplog.text


def test_the_standard_variables_configure_the_exporter(receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.url}/custom/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-api-key=traces-only%20key,x-tenant=t1")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "3")
    exporter: Any = otlp_exporter(settings=None, store=None)  # type: ignore[arg-type]
    try:
        assert exporter._endpoint == f"{receiver.url}/custom/traces"  # the signal variable wins, used as is
        assert exporter._client._headers["x-api-key"] == "traces-only key"
        assert exporter._client._headers["x-tenant"] == "t1"
        assert exporter._client._headers["Content-Encoding"] == "gzip"
        assert exporter._client._timeout == 3.0
    finally:
        exporter.shutdown()


def test_gzip_compressed_exports_arrive(receiver: OtlpReceiver, store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    with running_server(make_app(store=str(store), exporters="jsonl,otlp", **OPTIONS)) as url:
        assert httpx.post(f"{url}/echo", content=b"zipped", headers={"x-correlation-id": "gz-1"}).status_code == 200
        span = span_by_correlation_id(store, "gz-1")
        assert obsml.flush(10)
    [received] = receiver.wait_for_spans(1)
    same_span(span, received)
    assert receiver.requests[-1].headers["content-encoding"] == "gzip"


def test_a_collector_answering_503_twice_still_gets_the_spans(receiver: OtlpReceiver, store: Path) -> None:
    receiver.fail_next(2)
    with running_server(make_app(store=str(store), exporters="jsonl,otlp", **OPTIONS)) as url:
        assert httpx.post(f"{url}/echo", content=b"retry me", headers={"x-correlation-id": "retry-1"})
        span = span_by_correlation_id(store, "retry-1")
        assert obsml.flush(10)
    [received] = receiver.wait_for_spans(1, timeout=15)
    same_span(span, received)
    assert [request.status for request in receiver.requests] == [503, 503, 200]


def test_otlp_without_its_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)

    async def app(scope: object, receive: object, send: object) -> None:
        return None

    with pytest.raises(PluginImportError, match=r"exporter 'otlp' needs .*pip install 'obsml\[otlp\]'"):
        ObsmlMiddleware(app, exporters="jsonl,otlp", store="memory://otlp-missing")
    with pytest.raises(PluginImportError, match=r"pip install 'obsml\[otlp\]'"):
        otlp_exporter(settings=None, store=None)  # type: ignore[arg-type]


def test_a_collector_that_is_down_holds_up_nothing_and_its_failures_are_counted(
    receiver: OtlpReceiver, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receiver.fail_next(10_000)  # down for good
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "1")  # seconds, in the Python exporter
    with running_server(make_app(store=str(store), exporters="jsonl,otlp", flush_interval=0.05,
                                 flush_timeout=1, **OPTIONS)) as url, httpx.Client(base_url=url) as client:
        for n in range(5):
            assert client.post("/echo", content=b"{}", headers={"x-correlation-id": f"down-{n}"}).status_code == 200
        for n in range(5):  # in the store at the flush interval, without waiting for the collector
            span_by_correlation_id(store, f"down-{n}")
        obsml.flush(1)
        deadline = time.monotonic() + 15
        while "export_error" not in obsml.stats()["dropped"] and time.monotonic() < deadline:
            obsml.flush(1)
    assert obsml.stats()["dropped"]["export_error"]["span"] >= 1
