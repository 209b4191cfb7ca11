"""obsml's spans with an application that configured OpenTelemetry itself.

A global TracerProvider can be set once per process, so each case runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import read_spans

SCRIPT = """
import asyncio, json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import {sampler}
import obsml

exported = InMemorySpanExporter()
provider = TracerProvider(sampler={sampler})
provider.add_span_processor(SimpleSpanProcessor(exported))
trace.set_tracer_provider(provider)
app_tracer = trace.get_tracer("credit-app")

async def app(scope, receive, send):
    await receive()
    with app_tracer.start_as_current_span("predict"):
        pass
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": b"ok"}})

async def main():
    middleware = obsml.ObsmlMiddleware(app, store=sys.argv[1], service="credit")
    async def receive():
        return {{"type": "http.request", "body": b"{{}}"}}
    async def send(message):
        pass
    scope = {{"type": "http", "method": "POST", "path": "/score", "headers": [(b"x-correlation-id", b"loan-9")]}}
    await middleware(scope, receive, send)

asyncio.run(main())
assert obsml.flush(10)
print(json.dumps([
    {{"name": s.name, "scope": s.instrumentation_scope.name, "trace_id": f"{{s.context.trace_id:032x}}",
      "span_id": f"{{s.context.span_id:016x}}", "parent": s.parent and f"{{s.parent.span_id:016x}}"}}
    for s in exported.get_finished_spans()
]))
"""


def run(store: Path, sampler: str) -> list[dict[str, str]]:
    code = textwrap.dedent(SCRIPT.format(sampler=sampler))
    result = subprocess.run([sys.executable, "-c", code, str(store)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_obsml_spans_go_through_the_applications_provider_and_parent_its_spans(tmp_path: Path) -> None:
    store = tmp_path / "store"
    exported = run(store, "ALWAYS_ON")
    by_scope = {span["scope"]: span for span in exported}
    assert set(by_scope) == {"obsml", "credit-app"}
    server, child = by_scope["obsml"], by_scope["credit-app"]
    assert child["trace_id"] == server["trace_id"]
    assert child["parent"] == server["span_id"]  # the app's span is the request span's child
    [stored] = read_spans(store)  # only obsml's own span goes to obsml's store
    assert (stored["trace_id"], stored["span_id"]) == (server["trace_id"], server["span_id"])


def test_a_span_the_applications_sampler_refuses_still_reaches_the_store(tmp_path: Path) -> None:
    store = tmp_path / "store"
    assert run(store, "ALWAYS_OFF") == []
    [stored] = read_spans(store)
    assert stored["attributes"]["obsml.correlation_id"] == "loan-9"


WSGI_SCRIPT = """
import io, json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import obsml

exported = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exported))
trace.set_tracer_provider(provider)
app_tracer = trace.get_tracer("credit-app")

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/event-stream")])
    def events():
        yield b"data: first\\n\\n"
        with app_tracer.start_as_current_span("predict-row-2"):  # runs while the server iterates
            pass
        yield b"data: second\\n\\n"
    return events()

middleware = obsml.ObsmlWSGIMiddleware(app, store=sys.argv[1], service="credit")
environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/score/stream", "wsgi.input": io.BytesIO(),
           "HTTP_X_CORRELATION_ID": "loan-10", "SERVER_NAME": "localhost", "SERVER_PORT": "80"}
response = middleware(environ, lambda status, headers, exc_info=None: None)
body = b"".join(response)
response.close()
assert obsml.flush(10)
print(json.dumps([
    {"name": s.name, "scope": s.instrumentation_scope.name, "span_id": f"{s.context.span_id:016x}",
     "parent": s.parent and f"{s.parent.span_id:016x}"}
    for s in exported.get_finished_spans()
]))
"""


def test_spans_made_while_a_wsgi_server_iterates_a_generator_are_children_of_the_request(tmp_path: Path) -> None:
    store = tmp_path / "store"
    result = subprocess.run([sys.executable, "-c", WSGI_SCRIPT, str(store)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    by_scope = {span["scope"]: span for span in json.loads(result.stdout)}
    assert by_scope["credit-app"]["parent"] == by_scope["obsml"]["span_id"]
    [stored] = read_spans(store)
    assert stored["attributes"]["obsml.response.body.size"] == len(b"data: first\n\ndata: second\n\n")


TRACESTATE_SCRIPT = """
import asyncio, json, logging, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import obsml

store, provider_kind, tracestate = sys.argv[1:]
warnings = []

class Collect(logging.Handler):
    def emit(self, record):
        warnings.append(f"{record.name}: {record.getMessage()}")

logging.getLogger().addHandler(Collect(logging.WARNING))
exported = InMemorySpanExporter()
if provider_kind == "app":
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    trace.set_tracer_provider(provider)

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

async def main():
    middleware = obsml.ObsmlMiddleware(app, store=store, service="credit")
    async def receive():
        return {"type": "http.request", "body": b""}
    async def send(message):
        pass
    headers = [(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
               (b"tracestate", tracestate.encode("latin-1"))]
    for _ in range(3):
        await middleware({"type": "http", "method": "GET", "path": "/", "headers": headers}, receive, send)

asyncio.run(main())
assert obsml.flush(10)
print(json.dumps({"warnings": warnings,
                  "states": [list(s.context.trace_state.items()) for s in exported.get_finished_spans()]}))
"""


@pytest.mark.parametrize(
    ("provider", "tracestate", "kept"),
    [
        pytest.param("app", "vendor=ok,BAD KEY=<script>", [], id="invalid-through-the-apps-provider"),
        pytest.param("obsml", "vendor=ok,BAD KEY=<script>", None, id="invalid-through-obsmls-provider"),
        pytest.param("app", ",".join(f"k{i}=v" for i in range(33)), [], id="more-than-32-members"),
        pytest.param("app", "vendor=ok,duplicate=1,duplicate=2", [], id="duplicate-key"),
        pytest.param("app", "vendor=ok, tenant@system=a b ,", [["vendor", "ok"], ["tenant@system", "a b"]],
                     id="valid-kept"),
    ],
)
def test_an_invalid_tracestate_is_dropped_before_opentelemetry_warns_about_it(
    tmp_path: Path, provider: str, tracestate: str, kept: list[list[str]] | None
) -> None:
    store = tmp_path / "store"
    result = subprocess.run([sys.executable, "-c", TRACESTATE_SCRIPT, str(store), provider, tracestate],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["warnings"] == []
    if kept is not None:
        assert output["states"] == [kept] * 3
    spans = read_spans(store)
    assert len(spans) == 3
    assert {span["parent_span_id"] for span in spans} == {"00f067aa0ba902b7"}  # the traceparent still holds


GLOBAL_PROVIDER_SCRIPT = """
import asyncio, json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
import obsml

probe = InMemorySpanExporter()  # the application's backend
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(probe))
trace.set_tracer_provider(provider)

async def app(scope, receive, send):
    body = (await receive())["body"]
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})

async def main():
    options = {"global_provider": sys.argv[2]} if sys.argv[2] else {}
    middleware = obsml.ObsmlMiddleware(app, store=sys.argv[1], **options)
    async def receive():
        return {"type": "http.request", "body": b'{"income": 52000}'}
    async def send(message):
        pass
    scope = {"type": "http", "method": "POST", "path": "/score", "headers": [(b"x-correlation-id", b"loan-11")]}
    await middleware(scope, receive, send)

asyncio.run(main())
assert obsml.flush(10)
print(json.dumps([
    {"span_id": f"{s.context.span_id:016x}", "attributes": dict(s.attributes)}
    for s in probe.get_finished_spans() if s.instrumentation_scope.name == "obsml"
]))
"""
BODY = '{"income": 52000}'


@pytest.mark.parametrize(
    ("keyword", "variable", "received"),
    [
        pytest.param("", "", "bodyless", id="default-bodyless"),
        pytest.param("bodyless", "", "bodyless", id="bodyless"),
        pytest.param("use", "", "whole", id="use"),
        pytest.param("ignore", "", "nothing", id="ignore"),
        pytest.param("", "use", "whole", id="use-from-the-environment"),
        pytest.param("ignore", "use", "nothing", id="the-keyword-wins"),
    ],
)
def test_the_applications_global_provider_gets_obsml_spans_bodies_only_when_told_to_use_it(
    tmp_path: Path, keyword: str, variable: str, received: str
) -> None:
    store = tmp_path / "store"
    env = {**os.environ, "OBSML_GLOBAL_PROVIDER": variable} if variable else os.environ
    result = subprocess.run([sys.executable, "-c", GLOBAL_PROVIDER_SCRIPT, str(store), keyword], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    probed = json.loads(result.stdout)
    [stored] = read_spans(store)  # obsml's store keeps the bodies whatever the application's provider gets
    assert stored["attributes"]["obsml.request.body"] == stored["attributes"]["obsml.response.body"] == BODY
    if received == "nothing":
        assert probed == []
        return
    [span] = probed
    assert span["span_id"] == stored["span_id"]
    for direction in ("request", "response"):
        digest = f"obsml.{direction}.body.sha256"
        assert span["attributes"][digest] == stored["attributes"][digest]
        assert span["attributes"].get(f"obsml.{direction}.body") == (BODY if received == "whole" else None)
    if received == "bodyless":
        assert "52000" not in json.dumps(span)
