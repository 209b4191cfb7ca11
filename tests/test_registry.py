from __future__ import annotations

import hashlib
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


def test_an_exporter_factory_must_return_a_span_exporter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_plugin(tmp_path, monkeypatch, "shapeless", """
        def make_exporter(*, settings, store):
            return object()
    """)
    with pytest.raises(PluginError, match=r"exporter 'shapeless' \(shapeless_plugin:make_exporter\): its factory "
                       r"returned object, not an OpenTelemetry SpanExporter"):
        ObsmlMiddleware(app, exporters="shapeless", store=str(tmp_path / "store"))


def test_an_exporter_factory_is_handed_a_store_that_offloads_long_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "offloading", """
        from opentelemetry.sdk.trace.export import SpanExporter
        handed = []
        def make_exporter(*, settings, store):
            handed.append(store)
            return SpanExporter()
    """)
    import offloading_plugin  # type: ignore[import-not-found]

    ObsmlMiddleware(app, exporters="offloading", store=str(tmp_path / "store"))
    [store] = offloading_plugin.handed
    day = 1_700_000_000 * 10**9  # 2023-11-14 UTC
    where = store.offload("my_backend", "trace-span-key.txt", b"x" * 10_000, time_ns=day)
    relative = "my_backend/2023/11/14/trace-span-key.txt"
    assert where == (store.uri(relative), 10_000, hashlib.sha256(b"x" * 10_000).hexdigest())
    assert (tmp_path / "store" / relative).read_bytes() == b"x" * 10_000
    store.write_atomic("my_backend/other.json", b"{}")
    assert (tmp_path / "store" / "my_backend" / "other.json").read_bytes() == b"{}"


@pytest.mark.parametrize(
    ("name", "plugin_source", "error", "message"),
    [
        pytest.param(
            "nodep", "import a_dependency_that_is_not_installed\n", PluginImportError,
            r"sink 'nodep' .*from nodep-plugin\) is installed but needs a module that is not: "
            r"a_dependency_that_is_not_installed",
            id="dependency-missing",
        ),
        pytest.param(
            "halfsink", "raise RuntimeError('half-installed')\n", PluginImportError,
            r"sink 'halfsink' .* is installed but its import failed: RuntimeError: half-installed",
            id="import-fails",
        ),
        pytest.param(
            "notcallable", "make_sink = 'not a factory'\n", PluginError,
            r"sink 'notcallable': entry point notcallable_plugin:make_sink \(from notcallable-plugin\) is not callable",
            id="not-callable",
        ),
    ],
)
def test_a_sink_plugin_that_cannot_be_used_fails_start_up_with_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, plugin_source: str, error: type[Exception], message: str
) -> None:
    install_plugin(tmp_path, monkeypatch, name, plugin_source, group="obsml.sinks", factory="make_sink")
    monkeypatch.setenv("OBSML_SPOOL_DIR", str(tmp_path / "spool"))
    with pytest.raises(error, match=message):
        ObsmlMiddleware(app, store=f"{name}://box")


def test_a_sink_plugin_whose_package_is_gone_fails_start_up_saying_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_plugin(tmp_path, monkeypatch, "gone", "", group="obsml.sinks", factory="make_sink")
    (tmp_path / "gone_plugin.py").unlink()  # its dist-info is left behind: registered, not importable
    monkeypatch.setenv("OBSML_SPOOL_DIR", str(tmp_path / "spool"))
    with pytest.raises(PluginImportError, match=r"sink 'gone' is registered by gone-plugin, but its module "
                       r"gone_plugin is not installed: reinstall it \(pip install gone-plugin\)"):
        ObsmlMiddleware(app, store="gone://box")


def test_a_known_sink_plugin_that_is_not_installed_fails_start_up_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("obsml._sinks.entry_points", lambda group: [])  # the example may be installed here
    with pytest.raises(PluginImportError, match=r"the sqlite:// sink plugin is not installed: pip install "
                       r"obsml-sqlite-sink"):
        ObsmlMiddleware(app, store="sqlite:///tmp/obsml.db")
