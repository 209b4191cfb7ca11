"""In-process benchmark of the per-request cost of obsml's WSGI middleware.

No server and no HTTP client: each request is driven the way a WSGI server drives it (PEP 3333)
- a fresh environ dict with ``wsgi.input = io.BytesIO(body)``, the CGI keys and ``HTTP_*``
headers (gunicorn's set, including ``wsgi.input_terminated``), a trivial ``start_response``,
the result iterated to the end and then ``close()``-d - so what is measured is the middleware
itself. Three variants run in interleaved rounds (the variant order is shuffled every round,
so drift in the machine affects them alike):

* ``bare``  - a minimal Flask app; ``POST /score`` reads the whole body and answers with a
  small JSON document, ``POST /echo`` reads it and answers with a JSON body of the same size;
* ``obsml`` - the same Flask app with ``app.wsgi_app = obsml.ObsmlWSGIMiddleware(app.wsgi_app, ...)``
  (default ``jsonl`` exporter, store in a temporary directory);
* ``otel``  - the same Flask app with ``app.wsgi_app`` wrapped in
  ``opentelemetry.instrumentation.wsgi.OpenTelemetryMiddleware`` with its own SDK
  ``TracerProvider`` and a ``BatchSpanProcessor`` over an exporter that discards spans
  (nothing is set globally).

Two numbers are reported per case (1 KB and 100 KB request bodies, small or same-size response):

* request path: each call - ``app(environ, start_response)``, iteration and ``close()`` - timed
  with ``time.perf_counter_ns``; median and p99 per variant, "added" = variant - bare, and the
  ratio to bare. The background work of obsml (writer thread) and of the OTel batch processor
  is flushed after each block, outside the timing, so that it does not leak into the next
  variant's block.
* end to end: wall time of a whole block of N requests *plus* the flush of the variant's
  background work (``obsml.flush()``, ``TracerProvider.force_flush()``), divided by N. For
  obsml this includes building and writing spans and payloads on the writer thread, which
  competes with the requests for the GIL.

Before the timed rounds of each case, one request per variant is checked (status 200, response
size) and obsml's span for it is read back from the store (body sizes as sent), so the numbers
are of a middleware that really captured the exchange.

Usage::

    python benchmarks/wsgi_overhead.py                 # 30 rounds x 200 requests per variant
    python benchmarks/wsgi_overhead.py --rounds 10 --requests 100
    python benchmarks/wsgi_overhead.py --quick         # smoke run, a few seconds
    python benchmarks/wsgi_overhead.py --sizes 200,1024,102400,1048576 --json out.json  # echo only

Nothing is left on disk: the store lives in a ``tempfile.TemporaryDirectory`` and written
payloads and trace files are deleted between rounds (outside the timing).
"""

from __future__ import annotations

import argparse
import gc
import glob
import io
import json
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from asgi_overhead import (
    DiscardingExporter,
    _stats_delta,
    block_size,
    clean_store,
    json_body,
    median,
    parse_sizes,
    percentile,
)
from flask import Flask, Response, request
from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import obsml

Environ = dict[str, Any]
WSGIApp = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]

# (label, request body size, response): "small" = a ~30-byte JSON answer, "echo" = same size.
CASES = (
    ("1 KB", 1024, "small"),
    ("1 KB", 1024, "echo"),
    ("100 KB", 100 * 1024, "small"),
    ("100 KB", 100 * 1024, "echo"),
)
PATHS = {"small": "/score", "echo": "/echo"}
VARIANTS = ("bare", "obsml", "otel")
TARGET_ADDED_MEDIAN_US = {1024: 20.0, 100 * 1024: 40.0}


# --------------------------------------------------------------------------- the apps


def make_flask_app() -> Flask:
    """A minimal Flask model server; a fresh one per variant, since wrapping replaces ``wsgi_app``."""
    app = Flask("obsml_bench")

    @app.post("/score")
    def score() -> dict[str, Any]:
        data = request.get_data()
        return {"score": 0.5, "size": len(data)}

    @app.post("/echo")
    def echo() -> Response:
        return Response(request.get_data(), content_type="application/json")

    return app


def make_environ(path: str, body: bytes) -> Environ:
    """A fresh PEP 3333 environ, as a server (here: what gunicorn sets) builds for every request."""
    return {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "RAW_URI": path,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "SERVER_SOFTWARE": "obsml-bench/1.0",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "54321",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "obsml-bench/1.0",
        "HTTP_ACCEPT": "*/*",
        "HTTP_X_CORRELATION_ID": f"bench-{random.getrandbits(64):016x}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
    }


def _write(data: bytes) -> None:
    return None


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
    return _write


# --------------------------------------------------------------------------- driving


def run_block(app: WSGIApp, path: str, body: bytes, n: int, out: list[int]) -> None:
    """Serve ``n`` requests with ``app``, appending each one's duration in ns to ``out``."""
    clock = time.perf_counter_ns
    for _ in range(n):
        environ = make_environ(path, body)
        start = clock()
        result = app(environ, start_response)
        try:
            for _chunk in result:
                pass
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        out.append(clock() - start)


def serve_one(app: WSGIApp, path: str, body: bytes) -> tuple[str, bytes, str]:
    """One request, outside any timing: (status, response body, correlation id)."""
    environ = make_environ(path, body)
    seen: list[str] = []

    def remember(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        seen.append(status)
        return _write

    result = app(environ, remember)
    try:
        data = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return (seen[-1] if seen else "(no start_response)"), data, environ["HTTP_X_CORRELATION_ID"]


def check_case(apps: dict[str, Any], store: str, path: str, body: bytes) -> list[str]:
    """Problems with one request per variant and with obsml's span of it (empty when all is well)."""
    problems = []
    expected = None
    for variant in VARIANTS:
        status, data, correlation_id = serve_one(apps[variant], path, body)
        if not status.startswith("200"):
            problems.append(f"{variant}: status {status}")
        if expected is None:
            expected = data
        elif data != expected:
            problems.append(f"{variant}: response differs from bare ({len(data)} vs {len(expected)} bytes)")
        if variant == "obsml":
            obsml.flush(timeout=60)
            spans = [span for span in read_spans(store) if
                     span.get("attributes", {}).get("obsml.correlation_id") == correlation_id]
            if len(spans) != 1:
                problems.append(f"obsml: {len(spans)} spans for the checked request")
                continue
            attributes = spans[0]["attributes"]
            for direction, size in (("request", len(body)), ("response", len(data))):
                got = attributes.get(f"obsml.{direction}.body.size")
                if got != size:
                    problems.append(f"obsml: span says {direction} body size {got}, sent {size}")
    return problems


def read_spans(store: str) -> list[dict[str, Any]]:
    spans = []
    for part in glob.glob(os.path.join(store, "traces", "**", "*.jsonl"), recursive=True):
        with open(part, "rb") as file:
            spans.extend(json.loads(line) for line in file.read().split(b"\n") if line)
    return spans


def run(
    rounds: int, requests: int, warmup: int, seed: int, cases: Sequence[tuple[str, int, str]] = CASES
) -> dict[tuple[str, str], Any]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="obsml-bench-") as store:
        bare_app = make_flask_app()
        obsml_app = make_flask_app()
        obsml_app.wsgi_app = obsml.ObsmlWSGIMiddleware(
            obsml_app.wsgi_app, service="bench", model="m", version="1", store=store
        )
        exporter = DiscardingExporter()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter))
        otel_app = make_flask_app()
        otel_app.wsgi_app = OpenTelemetryMiddleware(
            otel_app.wsgi_app, tracer_provider=provider, meter_provider=NoOpMeterProvider()
        )
        apps: dict[str, Any] = {"bare": bare_app, "obsml": obsml_app, "otel": otel_app}

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
            for label, size, response in cases:
                body = json_body(size)
                path = PATHS[response]
                n = block_size(requests, size)
                problems = check_case(apps, store, path, body)
                samples: dict[str, list[int]] = {v: [] for v in VARIANTS}
                e2e: dict[str, list[float]] = {v: [] for v in VARIANTS}  # ns per request, one per round
                for variant in VARIANTS:  # warm-up, discarded; in blocks the writer's queue holds, as timed
                    for _ in range(-(-block_size(warmup, size) // n)):
                        run_block(apps[variant], path, body, n, [])
                        settle(variant)
                clean_store(store)
                stats_before = obsml.stats()
                for _ in range(rounds):
                    order = list(VARIANTS)
                    rng.shuffle(order)
                    for variant in order:
                        gc.collect()
                        start = time.perf_counter_ns()
                        run_block(apps[variant], path, body, n, samples[variant])
                        settle(variant)
                        e2e[variant].append((time.perf_counter_ns() - start) / n)
                    clean_store(store)
                results[(label, response)] = (
                    size, samples, e2e, _stats_delta(stats_before, obsml.stats()), problems
                )
        finally:
            provider.shutdown()
            clean_store(store)
    return results


def summarize(results: dict[tuple[str, str], Any]) -> dict[str, Any]:
    """Per case and variant, in µs: min, median, p99 of the request path and end to end per request,
    each also as added over bare; obsml's counters; the pre-run check's problems."""
    us = 1e-3
    cases: dict[str, Any] = {}
    for (label, response), (size, samples, e2e, stats_delta, problems) in results.items():
        rows = {}
        for variant in VARIANTS:
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
        cases[f"{label}, {response}"] = {
            "label": label, "bytes": size, "response": response, "path": PATHS[response],
            "requests_per_variant": len(samples["bare"]), "variants": rows, "obsml_stats": stats_delta,
            "problems": problems,
        }
    return {"cases": cases}


def report(summary: dict[str, Any]) -> int:
    failed = False
    for cell in summary["cases"].values():
        rows = cell["variants"]
        bare = rows["bare"]
        shape = "request and response" if cell["response"] == "echo" else "request; small JSON response"
        print()
        print(
            f"== body {cell['label']} ({shape}), POST {cell['path']}, "
            f"{cell['requests_per_variant']} requests per variant =="
        )
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
        if cell["problems"]:
            failed = True
            print("check FAILED (one request per variant before timing): " + "; ".join(cell["problems"]))
        else:
            print("check: status 200 and same response for all variants; obsml span has both body sizes")
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
        "--check", action="store_true",
        help="exit with status 1 when obsml misses the added-median targets (or a pre-run check fails)",
    )
    parser.add_argument(
        "--sizes", type=parse_sizes, default=None,
        help="body sizes in bytes, comma-separated: same-size responses (POST /echo) only",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the summary as JSON to PATH")
    args = parser.parse_args(argv)
    if args.quick:
        rounds, requests, warmup = 3, 50, 50 if args.warmup is None else args.warmup
    else:
        rounds, requests, warmup = args.rounds, args.requests, 500 if args.warmup is None else args.warmup
    if rounds < 1 or requests < 1 or warmup < 0:
        parser.error("--rounds and --requests must be >= 1, --warmup >= 0")
    cases = CASES if args.sizes is None else tuple((label, size, "echo") for label, size in args.sizes)
    summary = summarize(run(rounds, requests, warmup, args.seed, cases))
    status = report(summary)
    if args.json:
        with open(args.json, "w") as file:
            json.dump(summary, file, indent=1)
    return status if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
