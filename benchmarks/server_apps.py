"""The apps ``server_load.py`` runs under real servers, one middleware variant per server process.

``OBSML_BENCH_VARIANT`` picks it: ``bare``, ``obsml`` (store in ``OBSML_BENCH_STORE``), ``otel``
(OpenTelemetry's middleware, SDK provider, batch processor, spans discarded), ``sentry`` or
``logfire`` (ASGI only; see ``asgi_overhead.py``), and two references, ASGI only: ``passthrough``,
a middleware of obsml's shape that does nothing (the floor of any pure ASGI middleware that wraps
``receive`` and ``send``), and ``obsml-unsampled``, obsml at sample rate 0 (its request path
alone: every request captured, none written). ``asgi_app`` and ``wsgi_app`` echo the request
body (the apps of ``asgi_overhead.py`` and ``wsgi_overhead.py``: POST /echo for Flask);
``asgi_stream`` and ``wsgi_stream`` answer in two chunks 20 ms apart, for time to first byte.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from asgi_overhead import ASGIApp, DiscardingExporter, Receive, Scope, Send, echo_app, peer_apps
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware as OtelASGI
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware as OtelWSGI
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from wsgi_overhead import make_flask_app

import obsml

VARIANT = os.environ.get("OBSML_BENCH_VARIANT", "bare")
STORE = os.environ.get("OBSML_BENCH_STORE", "")
FIRST_CHUNK, PAUSE = b'{"first":"' + b"x" * 1000 + b'",', 0.02
OBSML_OPTIONS = {"service": "bench", "model": "m", "version": "1", "store": STORE}


def otel_provider() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DiscardingExporter()))
    return provider


async def stream_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Read the body, answer with a first chunk at once and the rest after a pause (chunked)."""
    if scope["type"] != "http":
        return
    more_body = True
    while more_body:
        more_body = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": FIRST_CHUNK, "more_body": True})
    await asyncio.sleep(PAUSE)
    await send({"type": "http.response.body", "body": b'"last":1}', "more_body": False})


def wsgi_stream_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    environ["wsgi.input"].read()
    start_response("200 OK", [("Content-Type", "application/json")])
    yield FIRST_CHUNK
    time.sleep(PAUSE)
    yield b'"last":1}'


class Passthrough:
    """Starlette GZip's shape with nothing in it: a responder object per request wrapping both channels."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await _PassthroughResponder(self.app, receive, send)(scope)


class _PassthroughResponder:
    __slots__ = ("app", "receive", "send")

    def __init__(self, app: ASGIApp, receive: Receive, send: Send) -> None:
        self.app, self.receive, self.send = app, receive, send

    async def __call__(self, scope: Scope) -> None:
        await self.app(scope, self.receive_with, self.send_with)

    async def receive_with(self) -> Any:
        return await self.receive()

    async def send_with(self, message: Any) -> None:
        await self.send(message)


def wrap_asgi(app: ASGIApp) -> ASGIApp:
    if VARIANT == "obsml":
        return obsml.ObsmlMiddleware(app, **OBSML_OPTIONS)
    if VARIANT == "obsml-unsampled":
        return obsml.ObsmlMiddleware(app, **OBSML_OPTIONS, sample_rate=0.0)
    if VARIANT == "passthrough":
        return Passthrough(app)
    if VARIANT == "otel":
        return OtelASGI(app, tracer_provider=otel_provider(), meter_provider=NoOpMeterProvider())
    if VARIANT in ("sentry", "logfire"):
        apps, _flushes, missing = peer_apps(app, (VARIANT,))
        if missing:
            raise RuntimeError(missing[VARIANT])
        return apps[VARIANT]
    return app


def wrap_wsgi(app: Any) -> Any:
    if VARIANT == "obsml":
        return obsml.ObsmlWSGIMiddleware(app, **OBSML_OPTIONS)
    if VARIANT == "otel":
        return OtelWSGI(app, tracer_provider=otel_provider(), meter_provider=NoOpMeterProvider())
    return app


asgi_app = wrap_asgi(echo_app)
asgi_stream = wrap_asgi(stream_app)
flask_app = make_flask_app()
flask_app.wsgi_app = wrap_wsgi(flask_app.wsgi_app)  # type: ignore[method-assign]
wsgi_app = flask_app
wsgi_stream = wrap_wsgi(wsgi_stream_app)
