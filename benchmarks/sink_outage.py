"""In-process benchmark of obsml while its remote sink is down: latency and memory.

Two claims, measured the way ``asgi_overhead.py`` measures (its app and helpers are reused:
ASGI callables awaited directly on one asyncio loop, no server, no HTTP client):

1. **Latency**: requests with a dead sink take the same time, within noise, as with a healthy
   one. Three variants run in interleaved rounds, the order shuffled every round:

   * ``bare``    - the echo app alone (reference);
   * ``healthy`` - obsml over a sink plugin that accepts every put after a short sleep (2 ms,
     like a network round trip);
   * ``dead``    - obsml over a sink plugin whose put always raises ``ConnectionError``.

   Each request is timed with ``perf_counter_ns``; per body size (1 KB, 100 KB) the table shows
   median and p99, "added" over bare, and dead / healthy. After each block, outside the timing,
   the healthy variant is flushed and delivered; the dead one only flushed into its spool, which
   keeps growing all phase long (its bound is raised so that it never fills here).

2. **Memory**: with the sink dead, a burst far beyond the bounds (default 20,000 requests of
   100 KB in and out, fresh bytes per request, as fast as the loop goes) leaves memory bounded:
   RSS (``/proc/self/statm``) and the tracemalloc peak stop growing at about the writer's queue
   bound (``queue_max_bytes``, 64 MiB by default) plus write buffers, the spool on disk stops at
   ``spool_max_bytes`` (64 MiB here), and what does not fit is counted in ``obsml.stats()`` as
   dropped (``spool_full``, ``queue_full``), never held.

The sinks are a real plugin: a dist-info with an ``obsml.sinks`` entry point and a small
module, written to a temporary directory put on ``sys.path``; the spool is in a temporary
directory too. Everything is delivered (the dead sink revived) and deleted at the end.

Usage::

    python benchmarks/sink_outage.py                 # 30 rounds x 200 requests, burst of 20,000
    python benchmarks/sink_outage.py --rounds 10 --requests 100 --burst 5000
    python benchmarks/sink_outage.py --quick         # smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import math
import os
import platform
import random
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

from asgi_overhead import (
    Receive,
    Scope,
    Send,
    _stats_delta,
    discard,
    echo_app,
    json_body,
    make_scope,
    percentile,
    receiver,
    run_block,
)

import obsml

SIZES = (("1 KB", 1024), ("100 KB", 100 * 1024))
VARIANTS = ("bare", "healthy", "dead")
MIB = 1024 * 1024
SCHEME = "obsmlbench"
PLUGIN_MODULE = "obsml_bench_outage_sink"
# Latency verdict: dead is "within noise" of healthy unless the whole 95% confidence interval of
# the per-round paired difference (dead - healthy) lies above this many µs, or this fraction of
# healthy's added time, whichever is larger (i.e. unless dead is measurably and materially slower).
TOLERANCE_US, TOLERANCE_FRACTION = 1.0, 0.05
# Memory verdict: RSS growth at most queue_max_bytes (body bytes waiting) + queue_max_items x
# ITEM_OVERHEAD (a waiting capture's own objects: headers, ids, tees) + this slack (write buffers,
# allocator, tracemalloc's own bookkeeping), and at most this much growth over the burst's second half.
ITEM_OVERHEAD, RSS_SLACK, RSS_LATE_GROWTH = 4 * 1024, 32 * MIB, 8 * MIB


# --------------------------------------------------------------------------- the sink plugin


class HealthySink(obsml.Sink):
    """Accepts every object: reads it whole, then sleeps like a network round trip."""

    puts = 0

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def put(self, relative: str, data: BinaryIO, size: int) -> None:
        data.read(size)
        time.sleep(self.delay)
        HealthySink.puts += 1


class DeadSink(obsml.Sink):
    """Refuses every object while ``down`` (revived only at the end, to empty the spool)."""

    down = True
    refused = 0

    def put(self, relative: str, data: BinaryIO, size: int) -> None:
        if DeadSink.down:
            DeadSink.refused += 1
            raise ConnectionError("sink unreachable (benchmark outage)")
        data.read(size)


PLUGIN_SOURCE = '''"""Written by benchmarks/sink_outage.py: its sink plugin's entry point."""
FACTORIES = {}  # store URL host -> a function returning an obsml.Sink, filled in by the benchmark


def make_sink(url, *, settings):
    return FACTORIES[url.partition("://")[2].split("/", 1)[0]]()
'''


def install_sink_plugin(site: Path, sink_delay: float) -> None:
    """A dist-info registering ``obsmlbench://<host>`` in ``obsml.sinks``, and its module, on sys.path."""
    (site / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE)
    dist = site / "obsml_bench_outage_sink-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: obsml-bench-outage-sink\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[obsml.sinks]\n{SCHEME} = {PLUGIN_MODULE}:make_sink\n")
    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    module = importlib.import_module(PLUGIN_MODULE)
    module.FACTORIES.update(healthy=lambda: HealthySink(sink_delay), dead=DeadSink, burst=DeadSink)


# --------------------------------------------------------------------------- measuring


async def fresh_echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Like ``echo_app``, but answers with a copy: request and response bodies are distinct objects."""
    message = await receive()
    body = memoryview(message["body"]).tobytes()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def disk_bytes(root: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):  # delivered or renamed meanwhile
                total += os.stat(os.path.join(folder, name)).st_size
    return total


def dropped(reason: str) -> int:
    return sum(obsml.stats()["dropped"].get(reason, {}).values())  # type: ignore[attr-defined]


def median_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Median and a distribution-free ~95% confidence interval (order statistics, sign test)."""
    ordered = sorted(values)
    n = len(ordered)
    k = 0  # the largest k with P(Binomial(n, 1/2) < k) <= 0.025
    while sum(math.comb(n, i) for i in range(k + 1)) / 2**n <= 0.025:
        k += 1
    low, high = (ordered[k - 1], ordered[n - k]) if k else (ordered[0], ordered[-1])
    return percentile(ordered, 50), low, high


def latency_phase(
    loop: asyncio.AbstractEventLoop, apps: dict[str, Any], pipelines: dict[str, Any],
    rounds: int, requests: int, warmup: int, rng: random.Random,
) -> dict[str, Any]:
    def settle(variant: str) -> None:
        if variant == "healthy" and not pipelines["healthy"].flush(300):
            print("warning: the healthy sink did not get everything in time", file=sys.stderr)
        elif variant == "dead" and not pipelines["dead"].writer.flush(120):
            print("warning: obsml's writer did not finish in time", file=sys.stderr)

    results = {}
    for label, size in SIZES:
        body = json_body(size)
        for variant in VARIANTS:
            loop.run_until_complete(run_block(apps[variant], size, body, warmup, []))
            settle(variant)
        stats_before = obsml.stats()
        per_round: dict[str, list[list[int]]] = {v: [] for v in VARIANTS}
        for _ in range(rounds):
            order = list(VARIANTS)
            rng.shuffle(order)
            for variant in order:
                gc.collect()
                block: list[int] = []
                loop.run_until_complete(run_block(apps[variant], size, body, requests, block))
                settle(variant)
                per_round[variant].append(block)
        results[label] = (per_round, _stats_delta(stats_before, obsml.stats()))
    return results


def report_latency(results: dict[str, Any], spool_bytes: int) -> bool:
    us = 1e-3
    verdicts, passed = [], True
    for label, _size in SIZES:
        per_round, stats_delta = results[label]
        pooled = {v: sorted(ns for block in per_round[v] for ns in block) for v in VARIANTS}
        med = {v: percentile(pooled[v], 50) * us for v in VARIANTS}
        p99 = {v: percentile(pooled[v], 99) * us for v in VARIANTS}
        print()
        print(f"== body {label} (request and response), {len(pooled['bare'])} requests per variant ==")
        print(f"  {'variant':<8} {'median':>9} {'p99':>9} {'added med':>10} {'added p99':>10}")
        for v in VARIANTS:
            added = ("-", "-") if v == "bare" else (f"{med[v] - med['bare']:+.2f}", f"{p99[v] - p99['bare']:+.2f}")
            print(f"  {v:<8} {med[v]:9.2f} {p99[v]:9.2f} {added[0]:>10} {added[1]:>10}")
        added_h = (med["healthy"] - med["bare"], p99["healthy"] - p99["bare"])
        added_d = (med["dead"] - med["bare"], p99["dead"] - p99["bare"])
        print(
            f"  dead / healthy: added median {added_d[0] / added_h[0]:.2f}, added p99 {added_d[1] / added_h[1]:.2f}; "
            f"total median {med['dead'] / med['healthy']:.2f}, total p99 {p99['dead'] / p99['healthy']:.2f}"
        )
        line = []
        for name, q, healthy_added in (("median", 50, added_h[0]), ("p99", 99, added_h[1])):
            diffs = [
                (percentile(sorted(d), q) - percentile(sorted(h), q)) * us
                for d, h in zip(per_round["dead"], per_round["healthy"], strict=True)
            ]
            mid, low, high = median_ci(diffs)
            tolerance = max(TOLERANCE_US, TOLERANCE_FRACTION * abs(healthy_added))
            ok = low <= tolerance
            passed &= ok
            print(
                f"  per-round dead - healthy {name}: {mid:+.2f} µs, 95% CI [{low:+.2f}, {high:+.2f}] "
                f"over {len(diffs)} rounds -> {'within noise' if ok else 'SLOWER'} (tolerance {tolerance:.2f} µs)"
            )
            line.append(f"{name} {mid:+.2f} µs [{low:+.2f}, {high:+.2f}]")
        verdicts.append(f"{label}: " + ", ".join(line))
        drops = stats_delta.get("dropped") or {}
        print(
            f"  obsml stats (timed rounds, both pipelines): captured={stats_delta.get('requests_captured', 0)} "
            f"spooled={stats_delta.get('objects_spooled', 0)} sink_retries={stats_delta.get('sink_retries', 0)} "
            f"dropped={drops or 0}"
        )
    print(
        f"\nhealthy sink accepted {HealthySink.puts} objects; dead sink refused {DeadSink.refused} puts; "
        f"dead spool on disk after the phase: {spool_bytes / MIB:.1f} MiB"
    )
    print(
        f"VERDICT latency with a dead sink within noise of a healthy one: {'PASS' if passed else 'FAIL'} "
        f"(dead - healthy, per-round median and 95% CI; {'; '.join(verdicts)})"
    )
    return passed


def burst_phase(loop: asyncio.AbstractEventLoop, app: Any, n: int) -> bool:
    pipeline, settings = app.capturer.pipeline, app.capturer.settings
    spool_root = pipeline.store.delivery.spool.root
    queue_max_bytes, queue_max_items, spool_max_bytes = (
        settings.queue_max_bytes, settings.queue_max_items, settings.spool_max_bytes
    )
    template = json_body(100 * 1024)
    marks = {max(1, round(n * i / 20)) for i in range(1, 21)}
    rows: list[tuple[str, float, int, int, int, int, int, int, int]] = []
    full0, qfull0, stats0 = dropped("spool_full"), dropped("queue_full"), obsml.stats()
    gc.collect()
    tracemalloc.start()
    rss0 = rss_bytes()
    start = time.perf_counter()

    def sample(label: str) -> None:
        current, peak = tracemalloc.get_traced_memory()
        rows.append((
            label, time.perf_counter() - start, rss_bytes(), current, peak, pipeline.writer.pending(),
            disk_bytes(spool_root), dropped("spool_full") - full0, dropped("queue_full") - qfull0,
        ))

    async def drive() -> None:
        for i in range(1, n + 1):
            body = memoryview(template).tobytes()  # a fresh body, as a server reads it
            await app(make_scope(len(body)), receiver(body), discard)
            if i in marks:
                sample(str(i))

    sample("0")
    loop.run_until_complete(drive())
    sent_s = time.perf_counter() - start
    if not pipeline.writer.flush(300):
        print("warning: obsml's writer did not finish the burst in time", file=sys.stderr)
    gc.collect()
    sample("settled")
    tracemalloc.stop()
    drops = _stats_delta(stats0, obsml.stats())["dropped"]

    volume = n * 2 * len(template)
    print(
        f"\n== burst: {n} requests of 100 KB in and out (fresh bytes), sink dead, tracemalloc on ==\n"
        f"  sent in {sent_s:.2f} s ({n / sent_s:,.0f} req/s, {volume / sent_s / MIB:,.0f} MiB/s of bodies); "
        f"{volume / MIB:,.0f} MiB of bodies = {volume / (queue_max_bytes + spool_max_bytes):.1f} x "
        f"(queue_max_bytes {queue_max_bytes / MIB:.0f} MiB + spool_max_bytes {spool_max_bytes / MIB:.0f} MiB); "
        f"queue_max_items {queue_max_items}"
    )
    print(
        f"  {'requests':>8} {'s':>6} {'RSS MiB':>8} {'+RSS':>7} {'tm cur':>7} {'tm peak':>7} {'queued':>7} "
        f"{'spool MiB':>9} {'spool_full':>10} {'queue_full':>10}"
    )
    for label, t, rss, current, peak, queued, spool, full, qfull in rows:
        print(
            f"  {label:>8} {t:6.2f} {rss / MIB:8.1f} {(rss - rss0) / MIB:+7.1f} {current / MIB:7.1f} "
            f"{peak / MIB:7.1f} {queued:7d} {spool / MIB:9.1f} {full:10d} {qfull:10d}"
        )
    growth = max(r[2] for r in rows) - rss0
    mid = next(r for r in rows if r[0] == str(min(m for m in marks if m >= n // 2)))
    last = [r for r in rows if r[0] != "settled"][-1]
    late = last[2] - mid[2]
    late_requests = int(last[0]) - int(mid[0])
    spool_peak = max(r[6] for r in rows)
    tm_peak = max(r[4] for r in rows)
    queued_peak = max(r[5] for r in rows)
    bound = queue_max_bytes + queue_max_items * ITEM_OVERHEAD + RSS_SLACK
    memory_ok = growth <= bound and late <= RSS_LATE_GROWTH
    spool_ok = spool_peak <= spool_max_bytes
    print(
        f"  RSS growth: max {growth / MIB:+.1f} MiB (bound: queue bytes {queue_max_bytes / MIB:.0f} + items "
        f"{queue_max_items * ITEM_OVERHEAD / MIB:.0f} + slack {RSS_SLACK / MIB:.0f} MiB), "
        f"{late / MIB:+.1f} MiB over the last {late_requests} requests "
        f"({late / max(1, late_requests):+.0f} B/request); tracemalloc peak {tm_peak / MIB:.1f} MiB; "
        f"writer queue peak {queued_peak} items (queue_max_items {queue_max_items})"
    )
    print(f"  dropped during the burst (reason/kind): {drops or 0}")
    print(
        f"VERDICT memory bounded under the burst with the sink down: {'PASS' if memory_ok and spool_ok else 'FAIL'} "
        f"(RSS {growth / MIB:+.1f} MiB max <= {bound / MIB:.0f}, {late / MIB:+.1f} MiB in the second half "
        f"<= {RSS_LATE_GROWTH / MIB:.0f}; spool {spool_peak / MIB:.1f} <= {spool_max_bytes / MIB:.0f} MiB on disk; "
        f"dropped spool_full={rows[-1][7]} queue_full={rows[-1][8]})"
    )
    return memory_ok and spool_ok


# --------------------------------------------------------------------------- running


def run(rounds: int, requests: int, warmup: int, burst: int, spool_max_mib: int, sink_ms: float, seed: int) -> int:
    rng = random.Random(seed)
    loop = asyncio.new_event_loop()
    print(
        f"obsml {obsml.__version__} | Python {platform.python_version()} "
        f"({platform.python_implementation()}) | {platform.machine()} {os.cpu_count()} CPU "
        f"| rounds={rounds} requests/round/variant={requests} warmup={warmup} burst={burst} "
        f"healthy sink {sink_ms:g} ms/put | seed={seed}"
    )
    with tempfile.TemporaryDirectory(prefix="obsml-sink-outage-") as temporary:
        site, spool_dir = Path(temporary, "site"), Path(temporary, "spool")
        site.mkdir()
        install_sink_plugin(site, sink_ms / 1000)
        # The latency phase's dead spool must never fill (that would drop instead of writing).
        latency_bound = 2 * (warmup + rounds * requests) * 2 * sum(size for _, size in SIZES) + 256 * MIB
        common = {"service": "bench", "model": "m", "version": "1", "spool_dir": str(spool_dir)}
        apps: dict[str, Any] = {"bare": echo_app}
        for variant in ("healthy", "dead"):
            apps[variant] = obsml.ObsmlMiddleware(
                echo_app, store=f"{SCHEME}://{variant}", spool_max_bytes=latency_bound, **common
            )
        burst_app = obsml.ObsmlMiddleware(
            fresh_echo_app, store=f"{SCHEME}://burst", spool_max_bytes=spool_max_mib * MIB, **common
        )
        pipelines = {v: apps[v].capturer.pipeline for v in ("healthy", "dead")}
        pipelines["burst"] = burst_app.capturer.pipeline
        try:
            results = latency_phase(loop, apps, pipelines, rounds, requests, warmup, rng)
            latency_ok = report_latency(results, disk_bytes(pipelines["dead"].store.delivery.spool.root))
            memory_ok = burst_phase(loop, burst_app, burst)
        finally:
            DeadSink.down = False  # deliver (and discard) everything, so nothing waits at exit
            for pipeline in pipelines.values():
                if not pipeline.flush(120):
                    print("warning: a spool was not emptied in time", file=sys.stderr)
                pipeline.writer.close(5)
                pipeline.store.delivery.close(5)
            loop.close()
            sys.path.remove(str(site))
    return 0 if latency_ok and memory_ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    parser.add_argument("--requests", type=int, default=200, help="requests per variant per round (default 200)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up requests per variant (default 500)")
    parser.add_argument("--burst", type=int, default=None, help="requests of 100 KB in the burst (default 20000)")
    parser.add_argument("--spool-max-mib", type=int, default=64, help="spool_max_bytes in the burst (default 64)")
    parser.add_argument("--sink-ms", type=float, default=2.0, help="the healthy sink's sleep per put (default 2)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the variant shuffling")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rounds x 50 requests, burst of 2000")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when a verdict is FAIL")
    args = parser.parse_args(argv)
    if args.quick:
        rounds, requests, warmup, burst = 3, 50, 50, 2000
    else:
        rounds, requests, warmup, burst = args.rounds, args.requests, 500, 20000
    warmup = warmup if args.warmup is None else args.warmup
    burst = burst if args.burst is None else args.burst
    if rounds < 1 or requests < 1 or warmup < 0 or burst < 20 or args.spool_max_mib < 1 or args.sink_ms < 0:
        parser.error("--rounds, --requests, --spool-max-mib >= 1, --warmup, --sink-ms >= 0, --burst >= 20")
    status = run(rounds, requests, warmup, burst, args.spool_max_mib, args.sink_ms, args.seed)
    return status if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
