"""Small real WSGI apps the tests serve under gunicorn (imported by gunicorn's workers).

obsml is configured through OBSML_* environment variables, as a deployment would.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, request, send_file, stream_with_context

import obsml
from obsml import ObsmlWSGIMiddleware

if os.environ.get("WSGI_APPS_SPAN_LOG"):
    # The application's own OpenTelemetry set-up, made before gunicorn forks (--preload).
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class CorrelationIdLog(SpanExporter):
        """Appends each exported span's correlation id to a file per process."""

        def export(self, spans: Any) -> SpanExportResult:
            with open(f"{os.environ['WSGI_APPS_SPAN_LOG']}-{os.getpid()}", "a") as file:
                for span in spans:
                    file.write(f"{span.attributes.get('obsml.correlation_id')}\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(CorrelationIdLog()))
    trace.set_tracer_provider(provider)

flask_app = Flask(__name__)


@flask_app.post("/echo")
def echo() -> Response:
    return Response(request.get_data(), content_type=request.content_type or "application/octet-stream")


@flask_app.post("/digest")
def digest() -> dict[str, Any]:
    hasher, size = hashlib.sha256(), 0
    while chunk := request.stream.read(8192):
        hasher.update(chunk)
        size += len(chunk)
    return {"sha256": hasher.hexdigest(), "size": size}


@flask_app.get("/bytes/<int:size>")
def sized(size: int) -> Response:
    """A body of the size asked for (as apps.pattern makes it), returned whole: the server gets one chunk."""
    return Response((bytes(range(256)) * (size // 256 + 1))[:size], content_type="application/octet-stream")


@flask_app.get("/whoami")
def whoami() -> dict[str, Any]:
    ids = obsml.current_request()
    return ids._asdict() if ids else {}


@flask_app.post("/ignore-body")
def ignore_body() -> dict[str, str]:
    return {"read": "nothing"}


@flask_app.get("/scores/<int:row>")
def score(row: int) -> dict[str, int]:
    return {"row": row, "score": row * 2}


@flask_app.get("/slow/<int:row>")
def slow(row: int) -> dict[str, int]:
    time.sleep(0.02)  # long enough that concurrent requests reach both workers
    return {"row": row, "pid": os.getpid()}


@flask_app.get("/endless")
def endless() -> Response:
    def chunks() -> Iterator[bytes]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            yield b"x" * 16384
            time.sleep(0.005)

    return Response(chunks(), content_type="application/octet-stream")


@flask_app.get("/stream")
def stream() -> Response:
    """Three chunks; the last waits until the file named by ``gate`` exists (the client made it)."""
    gate = Path(request.args["gate"])

    def events() -> Iterator[str]:
        yield "data: first\n\n"
        yield "data: second\n\n"
        deadline = time.monotonic() + 10
        while not gate.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        yield f"data: last, gate {'opened' if gate.exists() else 'timed out'}\n\n"

    return Response(stream_with_context(events()), content_type="text/event-stream")


@flask_app.get("/file")
def file() -> Response:
    """A file sent through the server's wsgi.file_wrapper (Flask's send_file uses it)."""
    return send_file(request.args["path"], mimetype="application/octet-stream")


@flask_app.get("/fail/before")
def fail_before() -> str:
    raise ValueError("row 3: income must be a number")


@flask_app.get("/fail/during")
def fail_during() -> Response:
    def events() -> Iterator[str]:
        yield "data: first\n\n"
        raise RuntimeError("model crashed mid-stream")

    return Response(events(), content_type="text/event-stream")


flask_app.wsgi_app = ObsmlWSGIMiddleware(flask_app.wsgi_app)  # type: ignore[method-assign]

if os.environ.get("WSGI_APPS_WARM_UP"):
    # A warm-up request at import, as model servers do: with --preload, obsml's writer is
    # already running in the master when gunicorn forks.
    flask_app.test_client().get("/scores/0", headers={"x-correlation-id": "warm-up"})


class CountedClose:
    """A response iterable that records each close() call in a file (the test counts them)."""

    def __init__(self, chunks: list[bytes], record: str | None, fail_at: int | None = None) -> None:
        self.chunks = chunks
        self.record = record
        self.fail_at = fail_at

    def __iter__(self) -> Iterator[bytes]:
        for index, chunk in enumerate(self.chunks):
            if index == self.fail_at:
                raise RuntimeError("iteration failed")
            yield chunk

    def close(self) -> None:
        if self.record:
            with open(self.record, "a") as file:
                file.write(f"close {os.getpid()}\n")


def echo_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A PEP 3333 callable with no framework: echoes the body; headers steer the response."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    status = environ.get("HTTP_X_STATUS", "200")
    pieces = int(environ.get("HTTP_X_PIECES", "1"))
    if environ.get("HTTP_X_FAIL") == "before":
        raise ValueError("failed before responding")
    write = start_response(
        f"{status} Whatever", [("Content-Type", environ.get("CONTENT_TYPE") or "application/octet-stream")]
    )
    if environ.get("HTTP_X_USE_WRITE"):  # PEP 3333's legacy write() callable
        write(body[:10])
        return [body[10:]]
    step = max(1, -(-len(body) // pieces))
    chunks = [body[start : start + step] for start in range(0, len(body), step)] or [b""]
    fail_at = 1 if environ.get("HTTP_X_FAIL") == "during" else None
    return CountedClose(chunks, environ.get("HTTP_X_CLOSE_RECORD"), fail_at)


plain_app = ObsmlWSGIMiddleware(echo_app)
