from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
from apps import make_app
from conftest import install_plugin, read_spans, running_server

import obsml
from obsml._exporters import json_line, span_to_dict
from obsml._parts import MAX_BYTES
from obsml._pipeline import pipeline_for

OPTIONS = {"service": "credit", "model": "best_model", "version": "10"}


def test_a_part_file_is_written_once_its_spans_pass_8_mib_without_waiting_for_the_interval(store: Path) -> None:
    options = {"store": str(store), "flush_interval": 3600, **OPTIONS}
    body = b"j" * 60_000  # inline both ways: a span line of about 120 KB
    with running_server(make_app(**options)) as url, httpx.Client(base_url=url) as client:
        for index in range(100):
            client.post("/echo", content=body, headers={"x-correlation-id": f"line-{index}"})
        writer = pipeline_for(obsml.Settings.load(**options)).writer
        deadline = time.monotonic() + 30
        while writer.pending() and time.monotonic() < deadline:  # every span exported, nothing flushed
            time.sleep(0.02)
        parts = sorted(store.glob("traces/*/*/*/*/*.jsonl"))
        assert parts, "no part file before the interval, though the batch passed 8 MiB"
        largest_line = max(len(line) for part in parts for line in part.read_bytes().split(b"\n"))
        assert all(part.stat().st_size < MAX_BYTES + largest_line + 1 for part in parts)
    ids = sorted(span["attributes"]["obsml.correlation_id"] for span in read_spans(store))
    assert ids == sorted(f"line-{index}" for index in range(100))  # the rest at shutdown, each once


def test_a_span_written_straight_to_the_store_is_the_one_an_exporter_of_opentelemetry_spans_gets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue 16: with jsonl alone no ReadableSpan is made; beside an exporter that needs one, both
    # must describe the same span (parent, exception event, status, resource, every attribute).
    install_plugin(tmp_path, monkeypatch, "twin", """
        from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
        received = []
        class TwinExporter(SpanExporter):
            obsml_inline = True
            def export(self, spans):
                received.extend(spans)
                return SpanExportResult.SUCCESS
        def make_exporter(*, settings, store):
            return TwinExporter()
    """)
    import twin_plugin  # type: ignore[import-not-found]

    async def failing(scope: object, receive: Callable[[], Awaitable[object]], send: object) -> None:
        await receive()
        raise ValueError("no model loaded")

    store = tmp_path / "store"
    middleware = obsml.ObsmlMiddleware(failing, exporters="jsonl,twin", store=str(store), **OPTIONS)
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    scope = {"type": "http", "method": "POST", "path": "/predict", "query_string": b"",
             "headers": [(b"traceparent", parent.encode()), (b"content-type", b"application/json")]}

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b'{"x": 1}'}

    async def send(message: object) -> None:
        return None

    with pytest.raises(ValueError, match="no model loaded"):
        asyncio.run(middleware(scope, receive, send))
    assert obsml.flush(10)
    [span] = twin_plugin.received
    [line] = [line for part in store.glob("traces/*/*/*/*/*.jsonl") for line in part.read_bytes().splitlines()]
    written = json.loads(line)
    assert written == json.loads(json.dumps(span_to_dict(span)))
    assert written["parent_span_id"] == "b7ad6b7169203331" and written["status"]["code"] == "ERROR"
    assert [event["name"] for event in written["events"]] == ["exception"]


def test_a_record_orjson_refuses_is_written_by_the_standard_library() -> None:
    # A lone surrogate or an integer past 64 bits (a plugin's attribute) must not lose the span.
    record = {"attributes": {"text": "half \ud800 pair", "big": 2**70}}
    line = json_line(record)
    assert line.endswith(b"\n")
    assert json.loads(line.decode("utf-8", "surrogatepass")) == record
