"""In-process benchmark of the per-request cost of obsml's ASGI middleware.

No server and no HTTP client: the ASGI callables are awaited directly on one asyncio loop,
so what is measured is the middleware itself. Three variants run in interleaved rounds (the
variant order is shuffled every round, so drift in the machine affects them alike):

* ``bare``  - a minimal raw ASGI app that reads the whole request body and answers with a
  JSON body of the same size;
* ``obsml`` - the same app wrapped in :class:`obsml.ObsmlMiddleware` (default ``jsonl``
  exporter, store in a temporary directory);
* ``otel``  - the same app wrapped in ``opentelemetry.instrumentation.asgi.OpenTelemetryMiddleware``
  with its own SDK ``TracerProvider`` and a ``BatchSpanProcessor`` over an exporter that
  discards spans (nothing is set globally).

Two numbers are reported per body size:

* request path: each call timed with ``time.perf_counter_ns``; median and p99 per variant,
  "added" = variant - bare, and the ratio to bare. The background work of obsml (writer
  thread) and of the OTel batch processor is flushed after each block, outside the timing,
  so that it does not leak into the next variant's block.
* end to end: wall time of a whole block of N requests *plus* the flush of the variant's
  background work (``obsml.flush()``, ``TracerProvider.force_flush()``), divided by N. For
  obsml this includes building and writing spans and payloads on the writer thread, which
  competes with the requests for the GIL.

Usage::

    python benchmarks/asgi_overhead.py                 # 30 rounds x 200 requests per variant
    python benchmarks/asgi_overhead.py --rounds 10 --requests 100
    python benchmarks/asgi_overhead.py --quick         # smoke run, a few seconds

Nothing is left on disk: the store lives in a ``tempfile.TemporaryDirectory`` and written
payloads and trace files are deleted between rounds (outside the timing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import obsml

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SIZES = (("1 KB", 1024), ("100 KB", 100 * 1024))
VARIANTS = ("bare", "obsml", "otel")
TARGET_ADDED_MEDIAN_US = {1024: 20.0, 100 * 1024: 40.0}


# --------------------------------------------------------------------------- the apps


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """A minimal raw ASGI app: read the whole body, answer with a JSON body of the same size."""
    if scope["type"] != "http":
        return
    chunks = []
    more_body = True
    while more_body:
        message = await receive()
        chunks.append(message.get("body", b""))
        more_body = message.get("more_body", False)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class DiscardingExporter(SpanExporter):
    def __init__(self) -> None:
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def json_body(size: int) -> bytes:
    """A valid JSON document of exactly ``size`` bytes."""
    head, tail = b'{"features":"', b'"}'
    return head + b"x" * (size - len(head) - len(tail)) + tail


def make_scope(size: int) -> Scope:
    """A fresh HTTP scope, as a server would build for every request."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/score",
        "raw_path": b"/score",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(size).encode()),
            (b"user-agent", b"obsml-bench/1.0"),
            (b"x-correlation-id", f"bench-{random.getrandbits(64):016x}".encode()),
        ],
        "client": ("127.0.0.1", 54321),
        "server": ("127.0.0.1", 8000),
    }


async def discard(message: Message) -> None:
    return None


def receiver(body: bytes) -> Receive:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


# --------------------------------------------------------------------------- driving


async def run_block(app: ASGIApp, size: int, body: bytes, n: int, out: list[int]) -> None:
    """Await ``app`` ``n`` times, appending each call's duration in ns to ``out``."""
    clock = time.perf_counter_ns
    for _ in range(n):
        scope = make_scope(size)
        receive = receiver(body)
        start = clock()
        await app(scope, receive, discard)
        out.append(clock() - start)


def clean_store(root: str) -> None:
    """Delete written files but keep folders (obsml's store caches the folders it created)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of already sorted values."""
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def median(values: Sequence[float]) -> float:
    return percentile(sorted(values), 50.0)


def run(rounds: int, requests: int, warmup: int, seed: int) -> int:
    rng = random.Random(seed)
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="obsml-bench-") as store:
        obsml_app = obsml.ObsmlMiddleware(echo_app, service="bench", model="m", version="1", store=store)
        exporter = DiscardingExporter()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        otel_app = OpenTelemetryMiddleware(
            echo_app, tracer_provider=provider, meter_provider=NoOpMeterProvider()
        )
        apps: dict[str, Any] = {"bare": echo_app, "obsml": obsml_app, "otel": otel_app}

        def settle(variant: str) -> None:
            """The variant's background work, done outside the per-request timing."""
            if variant == "obsml":
                if not obsml.flush(timeout=60):
                    print("warning: obsml.flush() timed out", file=sys.stderr)
            elif variant == "otel":
                provider.force_flush()

        print(
            f"obsml {obsml.__version__} | Python {platform.python_version()} "
            f"({platform.python_implementation()}) | {platform.machine()} {os.cpu_count()} CPU "
            f"| rounds={rounds} requests/round/variant={requests} warmup={warmup} seed={seed}"
        )
        try:
            results = {}
            for label, size in SIZES:
                body = json_body(size)
                samples: dict[str, list[int]] = {v: [] for v in VARIANTS}
                e2e: dict[str, list[float]] = {v: [] for v in VARIANTS}  # ns per request, one per round
                for variant in VARIANTS:  # warm-up, discarded
                    loop.run_until_complete(run_block(apps[variant], size, body, warmup, []))
                    settle(variant)
                clean_store(store)
                stats_before = obsml.stats()
                for _ in range(rounds):
                    order = list(VARIANTS)
                    rng.shuffle(order)
                    for variant in order:
                        gc.collect()
                        start = time.perf_counter_ns()
                        loop.run_until_complete(
                            run_block(apps[variant], size, body, requests, samples[variant])
                        )
                        settle(variant)
                        e2e[variant].append((time.perf_counter_ns() - start) / requests)
                    clean_store(store)
                results[label] = (samples, e2e, _stats_delta(stats_before, obsml.stats()))
        finally:
            provider.shutdown()
            loop.close()
            clean_store(store)
    return report(results, rounds, requests)


def _stats_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    for key, value in after.items():
        if isinstance(value, int):
            delta[key] = value - int(before.get(key, 0))
    drops = {}
    for reason, kinds in after.get("dropped", {}).items():
        for kind, n in kinds.items():
            lost = n - before.get("dropped", {}).get(reason, {}).get(kind, 0)
            if lost:
                drops[f"{reason}/{kind}"] = lost
    delta["dropped"] = drops
    return delta


# --------------------------------------------------------------------------- reporting


def report(results: dict[str, Any], rounds: int, requests: int) -> int:
    us = 1e-3
    failed = False
    for label, size in SIZES:
        samples, e2e, stats_delta = results[label]
        summary = {}
        for variant in VARIANTS:
            values = sorted(samples[variant])
            summary[variant] = (
                percentile(values, 50) * us,
                percentile(values, 99) * us,
                median(e2e[variant]) * us,
            )
        bare_med, bare_p99, bare_e2e = summary["bare"]
        print()
        print(f"== body {label} (request and response), {len(samples['bare'])} requests per variant ==")
        print("request path (per call, µs):")
        print(
            f"  {'variant':<7} {'median':>9} {'p99':>9} {'added med':>10} {'added p99':>10} "
            f"{'x bare med':>11} {'x bare p99':>11}"
        )
        for variant in VARIANTS:
            med, p99, _ = summary[variant]
            if variant == "bare":
                print(f"  {variant:<7} {med:9.2f} {p99:9.2f} {'-':>10} {'-':>10} {'1.00':>11} {'1.00':>11}")
            else:
                print(
                    f"  {variant:<7} {med:9.2f} {p99:9.2f} {med - bare_med:+10.2f} {p99 - bare_p99:+10.2f} "
                    f"{med / bare_med:11.2f} {p99 / bare_p99:11.2f}"
                )
        print("end to end (block of N requests + flush of background work, / N; median over rounds, µs):")
        print(f"  {'variant':<7} {'per req':>9} {'added':>10} {'x bare':>8}")
        for variant in VARIANTS:
            per = summary[variant][2]
            added = "-" if variant == "bare" else f"{per - bare_e2e:+.2f}"
            print(f"  {variant:<7} {per:9.2f} {added:>10} {per / bare_e2e:8.2f}")
        added_med = summary["obsml"][0] - bare_med
        target = TARGET_ADDED_MEDIAN_US[size]
        verdict = "PASS" if added_med <= target else "FAIL"
        failed |= added_med > target
        print(f"target: obsml added median {added_med:.2f} µs <= {target:.0f} µs -> {verdict}")
        drops = stats_delta.get("dropped") or {}
        print(
            f"obsml stats (timed rounds): captured={stats_delta.get('requests_captured', 0)} "
            f"spans_exported={stats_delta.get('spans_exported', 0)} "
            f"payloads_written={stats_delta.get('payloads_written', 0)} dropped={drops or 0}"
        )
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    parser.add_argument(
        "--requests", type=int, default=200, help="requests per variant per round (default 200)"
    )
    parser.add_argument("--warmup", type=int, default=None, help="warm-up requests per variant (500)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the variant shuffling")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 3 rounds x 50 requests, short warm-up"
    )
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 when obsml misses the added-median targets"
    )
    args = parser.parse_args(argv)
    if args.quick:
        rounds, requests, warmup = 3, 50, 50 if args.warmup is None else args.warmup
    else:
        rounds, requests, warmup = args.rounds, args.requests, 500 if args.warmup is None else args.warmup
    if rounds < 1 or requests < 1 or warmup < 0:
        parser.error("--rounds and --requests must be >= 1, --warmup >= 0")
    status = run(rounds, requests, warmup, args.seed)
    return status if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
