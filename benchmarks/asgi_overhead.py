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
    python benchmarks/asgi_overhead.py --sizes 200,1024,102400,1048576 --peers --json out.json

``--peers`` adds Sentry's ASGI middleware and Logfire's ``instrument_asgi`` (both send nothing
anywhere: Sentry over a transport that discards envelopes, Logfire with ``send_to_logfire=False``);
neither captures request or response bodies in its ASGI middleware. ``make bench`` (``bench.py``)
runs this with every size and the peers.

Nothing is left on disk: the store lives in a ``tempfile.TemporaryDirectory`` and written
payloads and trace files are deleted between rounds (outside the timing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
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
PEERS = ("sentry", "logfire")
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


def size_label(size: int) -> str:
    for unit, factor in (("MB", 1024 * 1024), ("KB", 1024)):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size} B"


def parse_sizes(text: str) -> tuple[tuple[str, int], ...]:
    return tuple((size_label(int(part)), int(part)) for part in text.split(","))


def sentry_app(app: ASGIApp) -> tuple[ASGIApp, Callable[[], None]]:
    """Sentry's ASGI middleware, tracing every request, over a transport that discards envelopes.

    ``send_default_pii`` and ``max_request_body_size="always"`` are set, but its ASGI middleware
    reads no bodies (only framework integrations do, for error events). Integrations that patch
    the standard library are off, so that the other variants of the same process run unchanged.
    """
    import sentry_sdk
    from sentry_sdk.integrations.asgi import SentryAsgiMiddleware
    from sentry_sdk.transport import Transport

    class DiscardingTransport(Transport):
        def capture_envelope(self, envelope: Any) -> None:
            return None

    sentry_sdk.init(
        dsn="http://public@127.0.0.1:9/1", transport=DiscardingTransport(), traces_sample_rate=1.0,
        send_default_pii=True, max_request_body_size="always",
        default_integrations=False, auto_enabling_integrations=False,
    )
    return SentryAsgiMiddleware(app), lambda: sentry_sdk.flush(timeout=10)


def logfire_app(app: ASGIApp) -> tuple[ASGIApp, Callable[[], None]]:
    """Logfire's ``instrument_asgi`` (OpenTelemetry's ASGI middleware over Logfire's provider), sending
    nothing. It has no option to capture bodies (``capture_headers`` only)."""
    import logfire

    instance = logfire.configure(
        send_to_logfire=False, console=False, metrics=False, service_name="bench", inspect_arguments=False
    )
    return instance.instrument_asgi(app), lambda: instance.force_flush(10000)


def peer_apps(
    app: ASGIApp, names: Sequence[str] = PEERS
) -> tuple[dict[str, ASGIApp], dict[str, Callable[[], None]], dict[str, str]]:
    """The peers' middleware around ``app``: (apps, flushes, why a peer could not be set up)."""
    apps: dict[str, ASGIApp] = {}
    flushes: dict[str, Callable[[], None]] = {}
    missing: dict[str, str] = {}
    for name in names:
        try:
            apps[name], flushes[name] = {"sentry": sentry_app, "logfire": logfire_app}[name](app)
        except Exception as exc:  # an optional peer: say why, measure the rest
            missing[name] = f"{type(exc).__name__}: {exc}"
    return apps, flushes, missing


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


def block_size(requests: int, size: int) -> int:
    """Requests per block: a tenth as many for bodies over 100 KB, so a 1 MB round stays short."""
    return requests if size <= 100 * 1024 else max(5, requests // 10)


def run(
    rounds: int, requests: int, warmup: int, seed: int,
    sizes: Sequence[tuple[str, int]] = SIZES, peers: bool = False,
) -> dict[str, Any]:
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
        flushes: dict[str, Callable[[], None]] = {}
        missing: dict[str, str] = {}
        if peers:
            peer, flushes, missing = peer_apps(echo_app)
            apps.update(peer)
        variants = tuple(apps)

        def settle(variant: str) -> None:
            """The variant's background work, done outside the per-request timing."""
            if variant == "obsml":
                if not obsml.flush(timeout=60):
                    print("warning: obsml.flush() timed out", file=sys.stderr)
            elif variant == "otel":
                provider.force_flush()
            elif variant in flushes:
                flushes[variant]()

        print(
            f"obsml {obsml.__version__} | Python {platform.python_version()} "
            f"({platform.python_implementation()}) | {platform.machine()} {os.cpu_count()} CPU "
            f"| rounds={rounds} requests/round/variant={requests} warmup={warmup} seed={seed}"
        )
        for name, why in missing.items():
            print(f"peer {name} not measured: {why}")
        try:
            results = {}
            for label, size in sizes:
                body = json_body(size)
                n = block_size(requests, size)
                samples: dict[str, list[int]] = {v: [] for v in variants}
                e2e: dict[str, list[float]] = {v: [] for v in variants}  # ns per request, one per round
                for variant in variants:  # warm-up, discarded; in blocks the writer's queue holds, as timed
                    for _ in range(-(-block_size(warmup, size) // n)):
                        loop.run_until_complete(run_block(apps[variant], size, body, n, []))
                        settle(variant)
                clean_store(store)
                stats_before = obsml.stats()
                for _ in range(rounds):
                    order = list(variants)
                    rng.shuffle(order)
                    for variant in order:
                        gc.collect()
                        start = time.perf_counter_ns()
                        loop.run_until_complete(run_block(apps[variant], size, body, n, samples[variant]))
                        settle(variant)
                        e2e[variant].append((time.perf_counter_ns() - start) / n)
                    clean_store(store)
                results[label] = (samples, e2e, _stats_delta(stats_before, obsml.stats()))
        finally:
            provider.shutdown()
            loop.close()
            clean_store(store)
    return {"sizes": sizes, "variants": variants, "missing": missing, "results": results}


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


def summarize(run_result: dict[str, Any]) -> dict[str, Any]:
    """Per size and variant, in µs: min, median, p99 of the request path and end to end per request,
    each also as added over bare; obsml's counters over the timed rounds; peers not measured."""
    us = 1e-3
    sizes: dict[str, Any] = {}
    for label, size in run_result["sizes"]:
        samples, e2e, stats_delta = run_result["results"][label]
        rows = {}
        for variant in run_result["variants"]:
            values = sorted(samples[variant])
            rows[variant] = {
                "min_us": values[0] * us,
                "median_us": percentile(values, 50) * us,
                "p99_us": percentile(values, 99) * us,
                "e2e_us": median(e2e[variant]) * us,
            }
        bare = rows["bare"]
        for row in rows.values():
            for key in ("min_us", "median_us", "p99_us", "e2e_us"):
                row[f"added_{key}"] = row[key] - bare[key]
        sizes[label] = {
            "label": label, "bytes": size, "requests_per_variant": len(samples["bare"]),
            "variants": rows, "obsml_stats": stats_delta,
        }
    return {"sizes": sizes, "peers_missing": run_result["missing"]}


def report(summary: dict[str, Any]) -> int:
    failed = False
    for label, cell in summary["sizes"].items():
        rows = cell["variants"]
        bare = rows["bare"]
        print()
        print(f"== body {label} (request and response), {cell['requests_per_variant']} requests per variant ==")
        print("request path (per call, µs):")
        print(
            f"  {'variant':<7} {'min':>9} {'median':>9} {'p99':>9} {'added min':>10} {'added med':>10} "
            f"{'added p99':>10} {'x bare med':>11} {'x bare p99':>11}"
        )
        for variant, row in rows.items():
            head = f"  {variant:<7} {row['min_us']:9.2f} {row['median_us']:9.2f} {row['p99_us']:9.2f}"
            if variant == "bare":
                print(f"{head} {'-':>10} {'-':>10} {'-':>10} {'1.00':>11} {'1.00':>11}")
            else:
                print(
                    f"{head} {row['added_min_us']:+10.2f} {row['added_median_us']:+10.2f} "
                    f"{row['added_p99_us']:+10.2f} {row['median_us'] / bare['median_us']:11.2f} "
                    f"{row['p99_us'] / bare['p99_us']:11.2f}"
                )
        print("end to end (block of N requests + flush of background work, / N; median over rounds, µs):")
        print(f"  {'variant':<7} {'per req':>9} {'added':>10} {'x bare':>8}")
        for variant, row in rows.items():
            added = "-" if variant == "bare" else f"{row['added_e2e_us']:+.2f}"
            print(f"  {variant:<7} {row['e2e_us']:9.2f} {added:>10} {row['e2e_us'] / bare['e2e_us']:8.2f}")
        added_med = rows["obsml"]["added_median_us"]
        target = TARGET_ADDED_MEDIAN_US.get(cell["bytes"])
        if target is not None:
            verdict = "PASS" if added_med <= target else "FAIL"
            failed |= added_med > target
            print(f"target: obsml added median {added_med:.2f} µs <= {target:.0f} µs -> {verdict}")
        stats_delta = cell["obsml_stats"]
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
    parser.add_argument("--sizes", type=parse_sizes, default=SIZES, help="body sizes in bytes, comma-separated")
    parser.add_argument("--peers", action="store_true", help="add Sentry's and Logfire's ASGI middleware")
    parser.add_argument("--json", metavar="PATH", help="also write the summary as JSON to PATH")
    args = parser.parse_args(argv)
    if args.quick:
        rounds, requests, warmup = 3, 50, 50 if args.warmup is None else args.warmup
    else:
        rounds, requests, warmup = args.rounds, args.requests, 500 if args.warmup is None else args.warmup
    if rounds < 1 or requests < 1 or warmup < 0:
        parser.error("--rounds and --requests must be >= 1, --warmup >= 0")
    summary = summarize(run(rounds, requests, warmup, args.seed, args.sizes, args.peers))
    status = report(summary)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(summary, file, indent=1)
    return status if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
