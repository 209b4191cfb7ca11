"""What the background writer costs in CPU, and how long a request waits behind it for the GIL (issue 16).

In process, no server. ``N`` requests go through :class:`obsml.ObsmlMiddleware` (awaited directly
on one asyncio loop, the default ``jsonl`` exporter, a store in a temporary directory) while a
job holds the writer, then the writer is let go and ``obsml.flush()`` waits for it; the writer
thread's own CPU time (``time.pthread_getcpuclockid`` of the ``obsml-writer`` thread) over the
flush, divided by ``N``, is the writer's cost per request (best of the rounds).

* 1 KB JSON bodies (request and response, both inline in the span): the span built, serialized and
  its part file written; once with the default body redaction (each inline JSON body parsed for
  the default field names), once with ``redact_fields=["none"]``.
* 100 KB bodies (both offloaded to ``payloads/``): ``application/octet-stream`` (hashed and
  written as they come) and ``application/json`` (by default redacted: held in a private file
  until whole, parsed, then written). Per body = (cost per request - the 1 KB cost) / 2.
* The floor of a 100 KB body, measured in the same rounds on the same disk, right before and after
  the 100 KB cases: ``sha256`` of the bytes plus a plain ``open(..., "wb").write(...)`` of them to
  a new file in one folder. (``obsml.flush`` is given 600 s: a loaded machine can take longer.)
* The old path, kept as the reference: the same span records built as OpenTelemetry
  ``ReadableSpan``s and serialized with the stdlib's ``json.dumps`` (what the writer did before).
* GIL wait: while the writer works through a backlog of 1 KB spans, a thread that sleeps 0.2 ms
  in a loop (as a server's thread waits on a socket) measures how late it gets the GIL back.

    .venv/bin/python benchmarks/writer_cost.py [--requests 5000] [--rounds 5] [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import platform
import pstats
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from hashlib import sha256
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

import obsml
from obsml._exporters import span_to_dict

Message = MutableMapping[str, Any]
JSON, BINARY = b"application/json", b"application/octet-stream"


def echo_app(content_type: bytes) -> Any:
    async def app(scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Message]], send: Any) -> None:
        """Reads the whole body and answers with a body of the same size and type."""
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": body})

    return app


def request_scope(size: int, content_type: bytes) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"), (b"user-agent", b"writer-cost/1.0"),
            (b"content-type", content_type), (b"content-length", str(size).encode()),
        ],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }


def json_body(size: int) -> bytes:
    """A JSON document of exactly ``size`` bytes: a few features and a long text field."""
    head = b'{"id":7,"features":[0.5,1.25,3.0],"note":"'
    return head + b"x" * (size - len(head) - 2) + b'"}'


async def run_block(app: Any, size: int, content_type: bytes, n: int) -> None:
    scope = request_scope(size, content_type)
    body = json_body(size)

    async def send(message: Message) -> None:
        return None

    for _ in range(n):
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await app(dict(scope), receive, send)


def writer_thread() -> threading.Thread:
    return next(t for t in threading.enumerate() if t.name == "obsml-writer")


class _Gate:
    """A job that holds the writer until the block of requests is queued: then the writer works
    alone (the timing is of its work, not of its contention with the requests for the GIL)."""

    nbytes = 0

    def __init__(self) -> None:
        self.open = threading.Event()

    def run(self) -> None:
        self.open.wait()


def writer_cpu_per_request(app: Any, size: int, content_type: bytes, n: int, store: str) -> float:
    """Microseconds of the writer thread's CPU per request, for a block of ``n`` requests and the flush."""
    from obsml import _pipeline

    asyncio.run(run_block(app, size, content_type, 10))  # the writer thread starts, folders are made
    obsml.flush(600)
    ident = writer_thread().ident
    assert ident is not None
    clock = time.pthread_getcpuclockid(ident)
    gate = _Gate()
    next(iter(_pipeline._PIPELINES.values())).writer.submit(gate, force=True)
    asyncio.run(run_block(app, size, content_type, n))
    before = time.clock_gettime_ns(clock)
    gate.open.set()
    obsml.flush(600)
    used = time.clock_gettime_ns(clock) - before
    for top in ("traces", "payloads"):  # outside the timing: the next round starts on an empty disk
        shutil.rmtree(os.path.join(store, top), ignore_errors=True)
    return used / n / 1000


def floor_per_body(size: int, n: int, folder: str) -> float:
    """The floor of one body: sha256 and a plain write of the same bytes to a new file (µs of CPU)."""
    data = json_body(size)
    os.makedirs(folder, exist_ok=True)
    start = time.thread_time_ns()
    for i in range(n):
        sha256(data).hexdigest()
        with open(f"{folder}/{i}.json", "wb") as file:
            file.write(data)
    used = time.thread_time_ns() - start
    shutil.rmtree(folder)
    return used / n / 1000


def old_serialization_per_span(n: int, folder: str) -> tuple[float, float]:
    """The reference (the writer before issue 16): a ReadableSpan per span, ``json.dumps`` of its
    dict; against today's record and orjson line. µs of CPU per span, both from the same record."""
    from obsml._exporters import json_line

    with open(_trace_files(folder)[0], "rb") as part:
        record = json.loads(part.readline())
    attributes = record["attributes"]
    resource = Resource.create(record["resource"])
    context = SpanContext(int(record["trace_id"], 16), int(record["span_id"], 16), False, TraceFlags(1))
    start = time.thread_time_ns()
    for _ in range(n):
        span = ReadableSpan(
            record["name"], context, None, resource, attributes, (), kind=SpanKind.SERVER,
            status=Status(StatusCode.UNSET), start_time=1_700_000_000_000_000_000, end_time=1_700_000_000_000_100_000,
        )
        json.dumps(span_to_dict(span), ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    old = (time.thread_time_ns() - start) / n / 1000
    start = time.thread_time_ns()
    for _ in range(n):
        json_line(record)
    new = (time.thread_time_ns() - start) / n / 1000
    return old, new


def _trace_files(store: str) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(os.path.join(store, "traces")) for f in files]


def gil_waits(app: Any, n: int) -> tuple[float, float, float, int, float]:
    """How late a serving thread gets the GIL back while the writer works through ``n`` spans:
    p50, p99 and max in ms, the number of samples, and the writer's CPU per span meanwhile (µs:
    with the releases of the GIL it makes while requests come in). The thread goes on serving requests (one,
    then a 0.2 ms sleep that releases the GIL, as a server waits on its sockets, timed)."""
    from obsml import _pipeline

    writer = next(iter(_pipeline._PIPELINES.values())).writer
    waits: list[float] = []

    async def serve() -> None:
        await run_block(app, 1024, JSON, n)  # the backlog (the writer polls: it starts on it meanwhile)
        while writer.pending() > 100:
            await run_block(app, 1024, JSON, 1)
            start = time.perf_counter_ns()
            time.sleep(0.0002)
            waits.append((time.perf_counter_ns() - start) / 1e6 - 0.2)

    ident = writer_thread().ident
    assert ident is not None
    clock = time.pthread_getcpuclockid(ident)
    before = time.clock_gettime_ns(clock)
    asyncio.run(serve())
    obsml.flush(600)
    per_span = (time.clock_gettime_ns(clock) - before) / (n + len(waits)) / 1000
    waits = sorted(waits) or [0.0]
    return waits[len(waits) // 2], waits[int(len(waits) * 0.99)], waits[-1], len(waits), per_span


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200 requests, one round")
    parser.add_argument(
        "--profile", action="store_true", help="cProfile of the writer: the case in $CASE (default the first), by $SORT"
    )
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 200, 1
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        options: dict[str, Any] = {
            "store": store, "status": False, "spool_dir": os.path.join(tmp, "spool"), "flush_interval": 60,
            "queue_max_items": max(10000, 4 * args.requests), "queue_max_bytes": 1 << 30,
        }
        apps = {
            "1 KB JSON, default redaction": (echo_app(JSON), {}, 1024),
            "1 KB JSON, redact_fields=none": (echo_app(JSON), {"redact_fields": ["none"]}, 1024),
            "100 KB octet-stream": (echo_app(BINARY), {}, 100 * 1024),
            "100 KB JSON, default redaction": (echo_app(JSON), {}, 100 * 1024),
        }
        middlewares = {name: obsml.ObsmlMiddleware(app, **options, **extra) for name, (app, extra, _) in apps.items()}
        if args.profile:
            profile_writer(middlewares[os.environ.get("CASE", "1 KB JSON, default redaction")], args.requests)
            return 0
        results: dict[str, list[float]] = {name: [] for name in (*apps, "floor")}
        for _ in range(args.rounds):
            for name, (_, _, size) in apps.items():
                if name == "100 KB octet-stream":  # the floor just before the bodies and just after
                    results["floor"].append(floor_per_body(100 * 1024, max(10, args.requests // 10), f"{tmp}/floor"))
                n = args.requests if size < 65536 else max(10, args.requests // 10)
                content_type = BINARY if "octet" in name else JSON
                results[name].append(writer_cpu_per_request(middlewares[name], size, content_type, n, store))
            results["floor"].append(floor_per_body(100 * 1024, max(10, args.requests // 10), f"{tmp}/floor"))
        # The least of the rounds: on a shared machine, the others measure the neighbours too.
        median = {name: min(values) for name, values in results.items()}
        print(f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.2f}; best of {args.rounds} rounds, "
              f"{args.requests} requests per 1 KB round")
        print("\n| case | writer CPU per request µs | per 100 KB body µs | x floor |\n| --- | --- | --- | --- |")
        floor = median["floor"]
        for name in apps:
            row = f"| {name} | {median[name]:.1f} |"
            if name.startswith("100 KB"):
                per_body = (median[name] - median["1 KB JSON, default redaction"]) / 2
                row += f" {per_body:.1f} | {per_body / floor:.2f} |"
            else:
                row += " | |"
            print(row)
        print(f"| floor: sha256 + plain file write | | {floor:.1f} | 1.00 |")
        asyncio.run(run_block(middlewares["1 KB JSON, default redaction"], 1024, JSON, 10))
        obsml.flush(600)
        old, new = old_serialization_per_span(max(200, args.requests), store)
        print(f"\nspan serialization alone: ReadableSpan + json.dumps (old) {old:.1f} µs, "
              f"record + orjson (now) {new:.1f} µs")
        backlog = 4 * args.requests
        p50, p99, worst, samples, per_span = gil_waits(middlewares["1 KB JSON, default redaction"], backlog)
        print(f"GIL wait of a serving thread behind a {backlog}-span backlog: p50 {p50:.2f} ms, "
              f"p99 {p99:.2f} ms, max {worst:.2f} ms ({samples} samples); "
              f"writer CPU meanwhile {per_span:.1f} µs per span")
    return 0


def profile_writer(app: Any, n: int) -> None:
    """cProfile of the writer thread's jobs at 1 KB (enabled and disabled by jobs on that thread)."""
    from obsml import _pipeline

    profiler = cProfile.Profile()
    asyncio.run(run_block(app, 1024, JSON, 10))
    obsml.flush(600)
    writer = next(iter(_pipeline._PIPELINES.values())).writer

    class _Switch:
        nbytes = 0

        def __init__(self, switch: Callable[[], None]) -> None:
            self.run = switch

    writer.submit(_Switch(profiler.enable), force=True)
    asyncio.run(run_block(app, 1024, JSON, n))
    obsml.flush(600)
    writer.submit(_Switch(profiler.disable), force=True)
    obsml.flush(600)
    pstats.Stats(profiler, stream=sys.stdout).sort_stats(os.environ.get("SORT", "cumulative")).print_stats(30)


if __name__ == "__main__":
    raise SystemExit(main())
