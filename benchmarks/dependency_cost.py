"""What recording the scoring code's outbound calls costs a request (issue 18, item 6).

In process, no server, no network: requests go through :class:`obsml.ObsmlMiddleware` (awaited
directly on one asyncio loop, the ``jsonl`` exporter, a store in a temporary directory), rounds
interleaved, the median of the rounds' mean per request reported. Time is the request thread's
own CPU time (``time.thread_time_ns``): what the request path does, without the waits for the GIL
that a noisy shared machine adds (and without obsml's writer thread, whose work is off the path).

* **No outbound call**: a request to an app that calls nothing, with ``dependencies="none"``
  (nothing instrumented yet in the process), then with the HTTP clients instrumented by obsml
  (``dependencies="auto"``). obsml's request path reads nothing of the instrumentation: the two
  should not differ beyond noise.
* **One outbound call**: the app makes one ``requests`` call whose transport answers at once (a
  ``requests`` adapter returning a canned 200, so the network's time does not drown the cost),
  (a) uninstrumented, (b) instrumented by obsml (a CLIENT span handed to obsml's writer), (c)
  instrumented by OpenTelemetry's ``RequestsInstrumentor`` with a plain SDK ``TracerProvider`` and
  a ``BatchSpanProcessor`` (to an exporter that drops the spans): the reference. Each variant's
  cost of the call = its time per request - (a)'s. The instrumentor is a process-wide singleton,
  so each round uninstruments and instruments it again for (b) and (c). Each round ends with an
  ``obsml.flush()``, outside the timings (the writer's work on the spans is not on the request path).

    .venv/bin/python benchmarks/dependency_cost.py [--requests 2000] [--rounds 7] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import requests
from opentelemetry.instrumentation.requests import RequestsInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from requests.adapters import BaseAdapter

import obsml
from obsml import _dependencies

Message = MutableMapping[str, Any]
App = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Message]], Any], Awaitable[None]]


class CannedAdapter(BaseAdapter):
    """Answers every request at once with a 200 and two bytes: the call without the network."""

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response._content = b"{}"
        response.request = request
        response.url = request.url or ""
        return response

    def close(self) -> None:
        pass


class Discard(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


SESSION = requests.Session()
SESSION.mount("http://feature-store.internal/", CannedAdapter())


async def calls_nothing(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


async def calls_once(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    SESSION.get("http://feature-store.internal/features?row=3")
    await calls_nothing(scope, receive, send)


SCOPE = {
    "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
    "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
    "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"dependency-cost/1.0")],
    "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
}


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Message) -> None:
    return None


def per_request_us(app: App, n: int) -> float:
    async def run() -> float:
        start = time.thread_time_ns()
        for _ in range(n):
            await app(dict(SCOPE), receive, send)
        return (time.thread_time_ns() - start) / n / 1000

    result = asyncio.run(run())
    obsml.flush(600)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="200 requests, 3 rounds")
    args = parser.parse_args()
    n, rounds = (200, 3) if args.quick else (args.requests, args.rounds)
    store = tempfile.mkdtemp(prefix="obsml-dependency-cost-")
    options = {"store": store, "service": "bench", "model": "m", "version": "1", "status": False}

    # No outbound call: first with nothing instrumented in the process, then with obsml's instrumentation.
    plain = obsml.ObsmlMiddleware(calls_nothing, dependencies="none", **options)
    before = [per_request_us(plain, n) for _ in range(rounds)]
    instrumented = obsml.ObsmlMiddleware(calls_nothing, dependencies="requests", **options)
    after: list[float] = []
    for _ in range(rounds):
        after.append(per_request_us(instrumented, n))
        before.append(per_request_us(plain, n))

    # One outbound call, three ways.
    caller = obsml.ObsmlMiddleware(calls_once, dependencies="requests", **options)
    sdk = TracerProvider(shutdown_on_exit=False)
    sdk.add_span_processor(BatchSpanProcessor(Discard()))
    instrumentor = RequestsInstrumentor()
    provider = _dependencies._PROVIDER
    assert provider is not None
    times: dict[str, list[float]] = {"bare": [], "obsml": [], "otel": []}
    for _ in range(rounds):
        instrumentor.uninstrument()
        times["bare"].append(per_request_us(caller, n))
        instrumentor.instrument(tracer_provider=provider)
        times["obsml"].append(per_request_us(caller, n))
        instrumentor.uninstrument()
        instrumentor.instrument(tracer_provider=sdk)
        times["otel"].append(per_request_us(caller, n))
    stats = obsml.stats()
    assert stats.get("dependencies_captured") == rounds * n, stats  # obsml's variant recorded every call

    median = statistics.median
    print(f"# dependency_cost: {n} requests x {rounds} rounds, Python {platform.python_version()}, "
          f"{platform.machine()}, median of the rounds' mean request-thread CPU per request")
    print(f"no outbound call, nothing instrumented      {median(before):8.1f} µs")
    print(f"no outbound call, obsml's instrumentation   {median(after):8.1f} µs "
          f"({median(after) - median(before):+.1f})")
    bare = median(times["bare"])
    print(f"one requests call, uninstrumented           {bare:8.1f} µs")
    for name, label in (("obsml", "obsml's instrumentation"), ("otel", "OpenTelemetry + SDK provider")):
        print(f"one requests call, {label:<25} {median(times[name]):8.1f} µs "
              f"(the call's instrumentation: {median(times[name]) - bare:+.1f} µs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
