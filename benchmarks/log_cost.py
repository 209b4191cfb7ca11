"""What the request logs (issue 18) cost on the request path, in process, no server.

Requests go through :class:`obsml.ObsmlMiddleware` (awaited directly on one asyncio loop, the
``jsonl`` exporter, a store in a temporary directory). Rounds alternate between the cases, so a
noisy machine slows each alike; each case's best round is its cost (as in ``writer_cost.py``: noise
only ever adds), the median is shown beside it. For the line cases a round's figure is its
fastest request (``LINES`` lines each).

* A request with no log line and no print: with the bridge installed (``log_level=info``,
  ``capture_print=true``: the root handler and the stdout/stderr tees in place) and without it
  (``log_level=off``, the handler taken off the root logger, the streams unwrapped). The issue's
  target: nothing measurable.
* One log line, ``logger.info("scored %s", 42)``, timed inside the app's request (``LINES`` per
  request), with the bridge and without (the reference: the same call when no handler is there,
  which is what the app pays anyway). The difference is the bridge's cost per line on the request
  path (target: 5 µs or less). The writer's share (the record built, serialized, written) runs on
  its own thread and is not in it: the writer is held while a block is timed, then flushed, untimed.
* One printed line, ``print("scored 42")``, the same way, into a stream that discards.

    .venv/bin/python benchmarks/log_cost.py [--requests 2000] [--lines 200] [--rounds 9] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import obsml
from obsml import _request_logs

Message = MutableMapping[str, Any]
SCOPE: dict[str, Any] = {
    "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
    "path": "/score", "raw_path": b"/score", "query_string": b"", "root_path": "",
    "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"log-cost/1.0")],
    "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
}
log = logging.getLogger("scoring")
log.setLevel(logging.INFO)
log.propagate = True


async def receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Message) -> None:
    return None


class Timed:
    """An app that does ``work`` ``lines`` times per request and keeps its fastest request's time."""

    def __init__(self, work: Callable[[], None], lines: int) -> None:
        self.work, self.lines, self.best_ns = work, lines, 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        work = self.work
        start = time.perf_counter_ns()
        for _ in range(self.lines):
            work()
        took = time.perf_counter_ns() - start
        self.best_ns = min(self.best_ns, took) if self.best_ns else took
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})


def bridge(on: bool, stdout: Any) -> None:
    """Put the process-wide root handler and stream tees in place, or take them away."""
    root = logging.getLogger()
    handler = _request_logs._handler
    if handler is not None:
        if on and handler not in root.handlers:
            root.addHandler(handler)
        if not on:
            root.removeHandler(handler)
    sys.stdout = _request_logs.PrintTee(stdout, "stdout") if on else stdout


class _Gate:
    """A job that holds the writer while a block of requests is timed: the request path is timed
    alone, not its contention with the writer for the GIL (the writer's share is its own thread's)."""

    nbytes = 0

    def __init__(self) -> None:
        self.open = threading.Event()

    def run(self) -> None:
        self.open.wait()


async def requests_ns(app: Any, n: int, every: int = 100) -> float:
    """Nanoseconds per request in the fastest block of ``every`` requests, the writer held during
    each block, then let go and flushed (untimed). A block of log lines stays near 500 of them: the queue never fills (a
    refused line would cost less than a queued one), and holds no more than the writer, polling
    every 50 ms, would let pile up (queued records are live objects the garbage collector walks)."""
    from obsml import _pipeline

    writer = next(iter(_pipeline._PIPELINES.values())).writer
    best = float("inf")
    for done in range(0, n, every):
        gate = _Gate()
        writer.submit(gate, force=True)
        block = min(every, n - done)
        start = time.perf_counter_ns()
        for _ in range(block):
            await app(dict(SCOPE), receive, send)
        best = min(best, (time.perf_counter_ns() - start) / block)
        gate.open.set()
        obsml.flush(60)
    return best


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--lines", type=int, default=200, help="log lines (or prints) per timed request")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few requests, 3 rounds")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.lines, args.rounds = 200, 50, 3
    store = tempfile.mkdtemp(prefix="obsml-log-cost-")
    discard = io.StringIO()
    real_stdout = sys.stdout
    try:
        settings = {"store": store, "flush_interval": 0.05}

        def quiet() -> None:
            return None

        empty_on = obsml.ObsmlMiddleware(Timed(quiet, 0), log_level="info", capture_print=True, **settings)
        empty_off = obsml.ObsmlMiddleware(Timed(quiet, 0), log_level="off", **settings)
        lines_on = Timed(lambda: log.info("scored %s", 42), args.lines)
        lines_off = Timed(lambda: log.info("scored %s", 42), args.lines)
        prints_on = Timed(lambda: print("scored 42"), args.lines)
        prints_off = Timed(lambda: print("scored 42"), args.lines)
        apps = {
            "lines_on": obsml.ObsmlMiddleware(lines_on, log_level="info", **settings),
            "lines_off": obsml.ObsmlMiddleware(lines_off, log_level="off", **settings),
            "prints_on": obsml.ObsmlMiddleware(prints_on, log_level="off", capture_print=True, **settings),
            "prints_off": obsml.ObsmlMiddleware(prints_off, log_level="off", **settings),
        }
        timed = {"lines_on": lines_on, "lines_off": lines_off, "prints_on": prints_on, "prints_off": prints_off}
        results: dict[str, list[float]] = {name: [] for name in ("empty_on", "empty_off", *apps)}
        line_requests = max(1, args.requests // args.lines * 10)
        for _ in range(args.rounds):
            for name, app, on in (("empty_off", empty_off, False), ("empty_on", empty_on, True)):
                bridge(on, discard)
                results[name].append(await requests_ns(app, args.requests))
            for name, app in apps.items():
                bridge(name.endswith("_on"), discard)
                timed[name].best_ns = 0
                await requests_ns(app, line_requests, every=max(1, 500 // args.lines))
                results[name].append(timed[name].best_ns / args.lines)
        bridge(False, real_stdout)
    finally:
        sys.stdout = real_stdout
        obsml.flush(60)
        shutil.rmtree(store, ignore_errors=True)

    best = {name: min(values) for name, values in results.items()}
    median = {name: statistics.median(values) for name, values in results.items()}
    print(f"log_cost: {args.rounds} rounds, Python {platform.python_version()}, {platform.machine()}")
    print("| case | best | median |")
    print("|---|---|---|")
    rows = [
        ("request, no log line, bridge off", "empty_off", 1e3), ("request, no log line, bridge on", "empty_on", 1e3),
        ("logger.info, no handler (app's own cost)", "lines_off", 1e3), ("logger.info, bridge on", "lines_on", 1e3),
        ("print(), not captured", "prints_off", 1e3), ("print(), captured", "prints_on", 1e3),
    ]
    for label, name, scale in rows:
        print(f"| {label} | {best[name] / scale:.2f} µs | {median[name] / scale:.2f} µs |")
    line = (best["lines_on"] - best["lines_off"]) / 1e3
    printed = (best["prints_on"] - best["prints_off"]) / 1e3
    empty = (best["empty_on"] - best["empty_off"]) / 1e3
    print(f"\nbridge cost on the request path: per request with no log line {empty:+.2f} µs, per log line "
          f"{line:.2f} µs (target <= 5 µs: {'met' if line <= 5 else 'NOT met'}), per printed line {printed:.2f} µs")


if __name__ == "__main__":
    asyncio.run(main())
