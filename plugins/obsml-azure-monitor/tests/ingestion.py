"""A local stand-in for Application Insights' ingestion endpoint: records what the real exporter sends.

The Azure Monitor exporter posts envelopes (JSON, gzip when it says so) to
``<IngestionEndpoint>/v2.1/track``. Point it here with
``InstrumentationKey=…;IngestionEndpoint=http://127.0.0.1:<port>/``.
"""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

INSTRUMENTATION_KEY = "00000000-0000-4000-8000-0000c0ffee01"


class Ingestion:
    """Envelopes received, and a switch to answer errors (e.g. 503) for the next N posts."""

    def __init__(self) -> None:
        self.envelopes: list[dict[str, Any]] = []
        self.posts: list[dict[str, str]] = []  # the headers of every post to /v2.1/track
        self.fail_next: list[int] = []  # status codes to answer, in order, before answering 200
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.port = self.server.server_address[1]
        self.connection_string = (
            f"InstrumentationKey={INSTRUMENTATION_KEY};IngestionEndpoint=http://127.0.0.1:{self.port}/"
        )

    def of_type(self, base_type: str) -> list[dict[str, Any]]:
        """Envelopes whose ``data.baseType`` is e.g. RequestData, ExceptionData, MessageData, MetricData."""
        with self.lock:
            return [e for e in self.envelopes if e.get("data", {}).get("baseType") == base_type]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.05)


def _handler(ingestion: Ingestion) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.headers.get("content-encoding") == "gzip" or body[:2] == b"\x1f\x8b":
                body = gzip.decompress(body)
            with ingestion.lock:
                ingestion.posts.append(dict(self.headers))
                status = ingestion.fail_next.pop(0) if ingestion.fail_next else 200
                if status == 200:
                    items = json.loads(body) if body.strip().startswith(b"[") else [
                        json.loads(line) for line in body.splitlines() if line.strip()
                    ]
                    ingestion.envelopes.extend(items)
            reply = json.dumps({"itemsReceived": 0, "itemsAccepted": 0, "errors": []}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    return Handler


@pytest.fixture
def ingestion() -> Iterator[Ingestion]:
    server = Ingestion()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.server.shutdown()
        server.server.server_close()
