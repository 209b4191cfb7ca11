from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from conftest import install_plugin

from obsml import ObsmlMiddleware, PluginError, PluginImportError
from obsml._registry import load_exporter


async def app(scope: object, receive: Callable[[], Awaitable[object]], send: object) -> None:
    await receive()  # bodies are captured as the app reads them


def test_an_exporter_plugin_is_found_by_entry_point_and_receives_obsml_spans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "memo", """
        from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
        received = []
        class MemoExporter(SpanExporter):
            def export(self, spans):
                received.extend(spans)
                return SpanExportResult.SUCCESS
        def make_exporter(*, settings, store):
            assert settings.service == "credit"
            return MemoExporter()
    """)
    import asyncio

    import memo_plugin  # type: ignore[import-not-found]

    import obsml

    middleware = ObsmlMiddleware(app, exporters="memo", store=str(tmp_path / "store"), service="credit")

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: object) -> None:
        return None

    asyncio.run(middleware({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send))
    assert obsml.flush(10)
    [span] = memo_plugin.received
    assert span.name == "GET" and span.attributes["obsml.service"] == "credit"
    assert not (tmp_path / "store" / "traces").exists()  # jsonl was not configured


def test_a_plugin_whose_import_fails_is_reported_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch, "broken", "raise RuntimeError('half-installed')\n")
    with pytest.raises(PluginImportError, match=r"exporter 'broken' .* is installed but its import failed.*"
                       r"RuntimeError: half-installed"):
        load_exporter("broken")


def test_a_plugin_whose_factory_raises_fails_start_up_with_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "grumpy", """
        def make_exporter(*, settings, store):
            raise ValueError("no endpoint configured")
    """)
    with pytest.raises(PluginError, match="exporter 'grumpy' failed to start: ValueError: no endpoint configured"):
        ObsmlMiddleware(app, exporters="grumpy", store="memory://grumpy")


def test_the_console_exporter_prints_each_span(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import asyncio

    import obsml

    middleware = ObsmlMiddleware(app, exporters="console", store=str(tmp_path / "store"), service="console")

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"hello"}

    async def send(message: object) -> None:
        return None

    scope = {"type": "http", "method": "POST", "path": "/score", "headers": [(b"x-correlation-id", b"c-1")]}
    asyncio.run(middleware(scope, receive, send))
    assert obsml.flush(10)
    out = capfd.readouterr().out
    assert '"obsml.correlation_id": "c-1"' in out and '"obsml.request.body": "hello"' in out
