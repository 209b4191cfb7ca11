"""What recording the scoring code's outbound calls costs a request (issue 18, item 6).

In process, no server, no network: requests go through :class:`obsml.ObsmlMiddleware` (awaited
directly on one asyncio loop, the ``jsonl`` exporter, a store in a temporary directory), rounds
interleaved, the median of the rounds' mean per request reported. Time is CPU time: the request
thread's own (``time.thread_time_ns``) while a job holds obsml's writer (so that the writer's work
on the spans does not compete with the requests, as in ``writer_cost.py``), then the writer
thread's over the flush that follows: what the requests left it.

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
  so each round uninstruments and instruments it again for (b) and (c).

    .venv/bin/python benchmarks/dependency_cost.py [--requests 2000] [--rounds 7] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import shutil
import statistics
import sys
import tempfile
import threading
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


class Gate:
    """A job that holds obsml's writer while a block of requests runs: the request thread's time is
    then its own, not shared with the writer's work on the spans (done, and timed, after it)."""

    nbytes = 0

    def __init__(self) -> None:
        self.open = threading.Event()

    def run(self) -> None:
        self.open.wait()


def per_request_us(app: Any, n: int) -> tuple[float, float]:
    """µs per request of the request thread's CPU, and of the writer's CPU for what they left it."""

    async def run() -> float:
        start = time.thread_time_ns()
        for _ in range(n):
            await app(dict(SCOPE), receive, send)
        return (time.thread_time_ns() - start) / n / 1000

    writer = app.capturer.pipeline.writer
    gate = Gate()
    writer.submit(gate, force=True)
    request = asyncio.run(run())
    (thread,) = [t for t in threading.enumerate() if t.name == "obsml-writer"]
    assert thread.ident is not None
    clock = time.pthread_getcpuclockid(thread.ident)
    before = time.clock_gettime_ns(clock)
    gate.open.set()
    obsml.flush(600)
    return request, (time.clock_gettime_ns(clock) - before) / n / 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="200 requests, 3 rounds")
    args = parser.parse_args()
    n, rounds = (200, 3) if args.quick else (args.requests, args.rounds)
    store = tempfile.mkdtemp(prefix="obsml-dependency-cost-")
    try:
        return measure(n, rounds, store)
    finally:
        obsml.flush(60)
        shutil.rmtree(store, ignore_errors=True)


def measure(n: int, rounds: int, store: str) -> int:
    options = {"store": store, "service": "bench", "model": "m", "version": "1", "status": False}

    # No outbound call: first with nothing instrumented in the process, then with obsml's instrumentation.
    plain = obsml.ObsmlMiddleware(calls_nothing, dependencies="none", **options)
    per_request_us(plain, 10)  # the writer thread starts, the store's folders are made
    before = [per_request_us(plain, n) for _ in range(rounds)]
    instrumented = obsml.ObsmlMiddleware(calls_nothing, dependencies="requests", **options)
    after: list[tuple[float, float]] = []
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
    times: dict[str, list[tuple[float, float]]] = {"bare": [], "obsml": [], "otel": []}
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

    def median(results: list[tuple[float, float]], which: int = 0) -> float:
        return statistics.median(result[which] for result in results)

    print(f"# dependency_cost: {n} requests x {rounds} rounds, Python {platform.python_version()}, "
          f"{platform.machine()}; medians of the rounds' mean CPU per request, µs: the request thread's "
          "(the writer held), and obsml's writer thread's after it")
    def line(label: str, results: list[tuple[float, float]]) -> str:
        return f"{label:<48} request {median(results):7.1f}   writer {median(results, 1):7.1f}"

    print(line("no outbound call, nothing instrumented", before))
    added = median(after) - median(before)
    print(line("no outbound call, obsml's instrumentation", after) + f"   (request {added:+.1f})")
    bare = median(times["bare"])
    print(line("one requests call, uninstrumented", times["bare"]))
    for name, label in (("obsml", "obsml's instrumentation"), ("otel", "OpenTelemetry + SDK provider")):
        print(line(f"one requests call, {label}", times[name]) + f"   (the call's instrumentation: request "
              f"{median(times[name]) - bare:+.1f}, writer {median(times[name], 1) - median(times['bare'], 1):+.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
