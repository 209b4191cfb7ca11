"""Time to first byte of a streamed response through real servers: bare against obsml.

The app answers ``GET /stream`` with a first chunk at once, then pauses (``--pause``, 20 ms)
before the rest: a middleware that held the response back until the app finished would show
the pause in its time to first byte. Four servers run as subprocesses on 127.0.0.1, each with
one worker: uvicorn with the bare ASGI app and with ``ObsmlMiddleware``, gunicorn (sync) with
the bare WSGI app and with ``ObsmlWSGIMiddleware`` (default ``jsonl`` exporter, store in a
temporary directory). The client is a plain socket, a new connection per request (gunicorn's
sync worker closes each one); the time is from sending the request to receiving the first
chunk's bytes. Requests alternate between bare and obsml in a shuffled order.

Usage::

    python benchmarks/ttfb.py              # 200 requests per variant and server
    python benchmarks/ttfb.py --quick      # smoke run, a few seconds

The target (issue 16): obsml's median within 1 ms of bare's, per server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

FIRST = b"FIRST-CHUNK\n"
REST = b"rest of the stream\n" * 50
TARGET_ADDED_MEDIAN_MS = 1.0
HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------- the apps (imported by the servers)


def _pause() -> float:
    return float(os.environ.get("TTFB_PAUSE", "0.02"))


async def _stream_asgi(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[Any]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": FIRST, "more_body": True})
    await asyncio.sleep(_pause())
    await send({"type": "http.response.body", "body": REST})


def _stream_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield FIRST
    time.sleep(_pause())
    yield REST


def asgi_app() -> Any:
    """uvicorn's ``--factory``: the bare app, or with obsml when ``TTFB_VARIANT=obsml``."""
    if os.environ.get("TTFB_VARIANT") != "obsml":
        return _stream_asgi
    import obsml

    return obsml.ObsmlMiddleware(_stream_asgi, service="ttfb", model="m")


def wsgi_app() -> Any:
    """gunicorn's ``ttfb:wsgi_app()``: the bare app, or with obsml when ``TTFB_VARIANT=obsml``."""
    if os.environ.get("TTFB_VARIANT") != "obsml":
        return _stream_wsgi
    import obsml

    return obsml.ObsmlWSGIMiddleware(_stream_wsgi, service="ttfb", model="m")


# --------------------------------------------------------------------------- servers and client

SERVERS: dict[str, Callable[[int], list[str]]] = {
    "uvicorn": lambda port: [
        "-m", "uvicorn", "--factory", "ttfb:asgi_app", "--port", str(port), "--log-level", "warning",
        "--no-access-log", "--lifespan", "on",
    ],
    "gunicorn": lambda port: [
        "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1", "--log-level", "warning",
        "ttfb:wsgi_app()",
    ],
}
VARIANTS = ("bare", "obsml")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def running(server: str, variant: str, store: str, pause: float) -> Iterator[int]:
    port = free_port()
    env = {
        **os.environ, "TTFB_VARIANT": variant, "TTFB_PAUSE": str(pause), "OBSML_STORE": store,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
    }
    process = subprocess.Popen([sys.executable, *SERVERS[server](port)], cwd=HERE, env=env)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                first_byte(port)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{server} ({variant}) did not start") from None
                time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        process.wait(30)


def first_byte(port: int) -> tuple[float, float]:
    """One request: (seconds to the first chunk, seconds to the whole response)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        received = b""
        while FIRST not in received:
            data = sock.recv(65536)
            if not data:
                raise OSError("the connection closed before the first chunk")
            received += data
        first = time.perf_counter() - start
        while sock.recv(65536):
            pass
        return first, time.perf_counter() - start


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(requests: int, pause: float, seed: int) -> bool:
    rng = random.Random(seed)
    passed = True
    with tempfile.TemporaryDirectory(prefix="obsml-ttfb-") as store:
        for server in SERVERS:
            with ExitStack() as stack:
                ports = {variant: stack.enter_context(running(server, variant, store, pause)) for variant in VARIANTS}
                for port in ports.values():  # warm-up, discarded
                    for _ in range(5):
                        first_byte(port)
                firsts: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
                totals: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
                for _ in range(requests):
                    order = list(VARIANTS)
                    rng.shuffle(order)
                    for variant in order:
                        first, total = first_byte(ports[variant])
                        firsts[variant].append(first)
                        totals[variant].append(total)
            # The servers have stopped (and flushed): obsml's spans show it really captured them.
            spans = sum(
                part.read_bytes().count(b"\n") for part in Path(store).glob("traces/**/*.jsonl")
            )
            passed &= report(server, firsts, totals, pause)
            print(f"obsml spans in the store so far: {spans}")
    return passed


def report(server: str, firsts: dict[str, list[float]], totals: dict[str, list[float]], pause: float) -> bool:
    ms = 1e3
    print(f"\n== {server}: time to first byte of a streamed response (ms; the app then pauses {pause * ms:g} ms) ==")
    print(f"  {'variant':<7} {'min':>8} {'median':>8} {'p99':>8} {'added med':>10} {'whole med':>10}")
    bare = percentile(firsts["bare"], 0.5)
    for variant in VARIANTS:
        values = firsts[variant]
        median = percentile(values, 0.5)
        added = "-" if variant == "bare" else f"{(median - bare) * ms:+.3f}"
        print(
            f"  {variant:<7} {min(values) * ms:8.3f} {median * ms:8.3f} {percentile(values, 0.99) * ms:8.3f} "
            f"{added:>10} {percentile(totals[variant], 0.5) * ms:10.3f}"
        )
    added_ms = (percentile(firsts["obsml"], 0.5) - bare) * ms
    verdict = added_ms <= TARGET_ADDED_MEDIAN_MS
    outcome = "PASS" if verdict else "FAIL"
    print(f"target: obsml added median {added_ms:.3f} ms <= {TARGET_ADDED_MEDIAN_MS:g} ms -> {outcome}")
    return verdict


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--requests", type=int, default=200, help="requests per variant and server (default 200)")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds the app waits after its first chunk")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the variant shuffling")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 requests per variant and server")
    parser.add_argument("--check", action="store_true", help="exit with status 1 when obsml misses the target")
    args = parser.parse_args(argv)
    requests = 10 if args.quick else args.requests
    if requests < 1 or args.pause < 0:
        parser.error("--requests must be >= 1 and --pause >= 0")
    print(
        f"Python {platform.python_version()} | {platform.machine()} {os.cpu_count()} CPU "
        f"| requests/variant/server={requests} pause={args.pause}s seed={args.seed}"
    )
    passed = run(requests, args.pause, args.seed)
    return 1 if args.check and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
