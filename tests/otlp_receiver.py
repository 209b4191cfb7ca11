"""A minimal OTLP/HTTP (protobuf) trace and log receiver on 127.0.0.1, as a collector would be seen by an exporter.

It accepts ``POST /v1/traces`` and ``POST /v1/logs``, decodes ``ExportTraceServiceRequest`` and
``ExportLogsServiceRequest`` (gzip or deflate when ``Content-Encoding`` says so), records every
span and log record as plain Python values and the headers of every request, and answers 200
with an empty response. ``fail_next(n)``
makes it answer 503 to the next ``n`` requests (without recording their spans).
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status


def any_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as the Python value an SDK attribute would have been."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    return getattr(value, kind)


def attributes(pairs: Any) -> dict[str, Any]:
    """Repeated ``KeyValue`` as a dict; lists stay lists (the jsonl store writes them as JSON arrays)."""
    result: dict[str, Any] = {}
    pair: KeyValue
    for pair in pairs:
        result[pair.key] = any_value(pair.value)
    return result


@dataclass
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    status: int
    span_count: int


@dataclass
class OtlpReceiver:
    """What the receiver got; ``url`` is the base for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""

    url: str = ""
    spans: list[dict[str, Any]] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    requests: list[ReceivedRequest] = field(default_factory=list)
    _fail_next: int = 0
    _fail_status: int = 503
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _arrived: threading.Condition = field(init=False)

    def __post_init__(self) -> None:
        self._arrived = threading.Condition(self._lock)

    def fail_next(self, n: int, status: int = 503) -> None:
        """Answer ``status`` (no spans recorded) to the next ``n`` export requests."""
        with self._lock:
            self._fail_next, self._fail_status = n, status

    def wait_for_spans(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """At least ``n`` spans received (or the timeout reached): a copy of all spans so far."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.spans) < n and (left := deadline - time.monotonic()) > 0:
                self._arrived.wait(left)
            return list(self.spans)

    def wait_for_logs(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """At least ``n`` log records received (or the timeout reached): a copy of all so far."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.logs) < n and (left := deadline - time.monotonic()) > 0:
                self._arrived.wait(left)
            return list(self.logs)

    def span_by_id(self, span_id: str) -> dict[str, Any]:
        with self._lock:
            matches = [span for span in self.spans if span["span_id"] == span_id]
        assert len(matches) == 1, f"{len(matches)} spans with span_id {span_id}"
        return matches[0]

    def _handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        with self._lock:
            if path not in ("/v1/traces", "/v1/logs"):
                self.requests.append(ReceivedRequest(path, headers, 404, 0))
                return 404, b""
            if self._fail_next > 0:
                self._fail_next -= 1
                self.requests.append(ReceivedRequest(path, headers, self._fail_status, 0))
                return self._fail_status, b""
        encoding = headers.get("content-encoding", "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        if path == "/v1/logs":
            return self._logs(path, headers, body)
        request = ExportTraceServiceRequest.FromString(body)
        spans = [
            _span_record(span, scope_spans.scope.name, attributes(resource_spans.resource.attributes))
            for resource_spans in request.resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
        with self._arrived:
            self.requests.append(ReceivedRequest(path, headers, 200, len(spans)))
            self.spans.extend(spans)
            self._arrived.notify_all()
        return 200, ExportTraceServiceResponse().SerializeToString()

    def _logs(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        request = ExportLogsServiceRequest.FromString(body)
        logs = [
            _log_record(record, scope_logs.scope.name, attributes(resource_logs.resource.attributes))
            for resource_logs in request.resource_logs
            for scope_logs in resource_logs.scope_logs
            for record in scope_logs.log_records
        ]
        with self._arrived:
            self.requests.append(ReceivedRequest(path, headers, 200, 0))
            self.logs.extend(logs)
            self._arrived.notify_all()
        return 200, ExportLogsServiceResponse().SerializeToString()


def _log_record(record: LogRecord, scope: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "time_unix_nano": record.time_unix_nano,
        "trace_id": record.trace_id.hex(),
        "span_id": record.span_id.hex(),
        "severity_number": record.severity_number,
        "severity_text": record.severity_text,
        "body": any_value(record.body),
        "attributes": attributes(record.attributes),
        "scope": scope,
        "resource": resource,
    }


def _span_record(span: Span, scope: str, resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": span.name,
        "trace_id": span.trace_id.hex(),
        "span_id": span.span_id.hex(),
        "parent_span_id": span.parent_span_id.hex() or None,
        "kind": Span.SpanKind.Name(span.kind),
        "start_time_unix_nano": span.start_time_unix_nano,
        "end_time_unix_nano": span.end_time_unix_nano,
        "attributes": attributes(span.attributes),
        "events": [
            {"name": event.name, "time_unix_nano": event.time_unix_nano, "attributes": attributes(event.attributes)}
            for event in span.events
        ],
        "status": {"code": Status.StatusCode.Name(span.status.code), "message": span.status.message},
        "scope": scope,
        "resource": resource,
    }


@contextmanager
def running_receiver() -> Iterator[OtlpReceiver]:
    """An :class:`OtlpReceiver` served on a free 127.0.0.1 port by a thread; stopped on exit."""
    receiver = OtlpReceiver()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, answer = receiver._handle(self.path, headers, body)
            self.send_response(status)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows stderr on failure
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
