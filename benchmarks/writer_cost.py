"""What the background writer costs in CPU: per 1 KB span, and per 100 KB body against its floor (issue 16).

In process, no server. ``N`` requests go through :class:`obsml.ObsmlMiddleware` (awaited directly
on one asyncio loop, the default ``jsonl`` exporter, a store in a temporary directory), then
``obsml.flush()``; the writer thread's own CPU time (``time.pthread_getcpuclockid`` of the
``obsml-writer`` thread) over that block, divided by ``N``, is the writer's cost per request:
the capture turned into a span, serialized, its part file written, and at 100 KB the two
payload files (request and response bodies) hashed and written.

The floor of a 100 KB body is measured in the same run, on the same disk: ``sha256`` of the
bytes plus a plain ``open(..., "wb").write(...)`` of them to a new file in one folder; the
ratio reported is the writer's extra CPU per body at 100 KB (its cost there less its cost at
1 KB, split over the two bodies) against that floor.

    .venv/bin/python benchmarks/writer_cost.py [--requests 5000] [--rounds 5] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import shutil
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from hashlib import sha256
from typing import Any

import obsml

Message = MutableMapping[str, Any]


async def echo_app(scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Message]], send: Any) -> None:
    """Reads the whole body and answers with a JSON body of the same size."""
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def request_scope(size: int) -> dict[str, Any]:
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/predict", "raw_path": b"/predict", "query_string": b"", "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"), (b"user-agent", b"writer-cost/1.0"),
            (b"content-type", b"application/json"), (b"content-length", str(size).encode()),
        ],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }


def json_body(size: int) -> bytes:
    filler = "x" * max(0, size - 14)
    return f'{{"features":"{filler}"}}'.encode()[:size].ljust(size, b" ")


async def run_block(app: Any, size: int, body: bytes, n: int) -> None:
    scope = request_scope(size)

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


def writer_clock() -> int:
    thread = next(t for t in threading.enumerate() if t.name == "obsml-writer")
    assert thread.ident is not None
    return time.pthread_getcpuclockid(thread.ident)


def writer_cpu_per_request(app: Any, size: int, n: int, store: str) -> float:
    """Microseconds of the writer thread's CPU per request, for a block of ``n`` requests and the flush."""
    body = json_body(size)
    asyncio.run(run_block(app, size, body, 10))  # the writer thread starts, folders are made
    obsml.flush()
    clock = writer_clock()
    before = time.clock_gettime_ns(clock)
    asyncio.run(run_block(app, size, body, n))
    obsml.flush()
    used = time.clock_gettime_ns(clock) - before
    for top in ("traces", "payloads"):  # outside the timing: the next round starts on an empty disk
        shutil.rmtree(os.path.join(store, top), ignore_errors=True)
    return used / n / 1000


def floor_per_body(size: int, n: int, folder: str) -> float:
    """The floor of one body: sha256 and a plain write of the same bytes to a new file (µs of CPU)."""
    data = os.urandom(size)
    os.makedirs(folder, exist_ok=True)
    start = time.thread_time_ns()
    for i in range(n):
        sha256(data).hexdigest()
        with open(f"{folder}/{i}.json", "wb") as file:
            file.write(data)
    used = time.thread_time_ns() - start
    shutil.rmtree(folder)
    return used / n / 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="profile the writer thread (cProfile) at 1 KB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        os.environ["OBSML_STORE"] = store
        os.environ["OBSML_STATUS"] = "false"
        os.environ["OBSML_QUEUE_MAX_ITEMS"] = str(max(10000, 4 * args.requests))
        os.environ["OBSML_QUEUE_MAX_BYTES"] = str(1 << 30)
        app = obsml.ObsmlMiddleware(echo_app)
        if args.profile:
            profile_writer(app, args.requests)
            return 0
        results: dict[str, list[float]] = {"1 KB": [], "100 KB": [], "floor": []}
        for _ in range(args.rounds):
            results["1 KB"].append(writer_cpu_per_request(app, 1024, args.requests, store))
            results["100 KB"].append(writer_cpu_per_request(app, 100 * 1024, max(10, args.requests // 10), store))
            results["floor"].append(floor_per_body(100 * 1024, max(10, args.requests // 10), f"{tmp}/floor"))
        small, large, floor = (sorted(v)[len(v) // 2] for v in results.values())
        per_body = (large - small) / 2
        print(f"writer CPU per request, 1 KB bodies (span built, serialized, part file written): {small:.1f} µs")
        print(f"writer CPU per request, 100 KB bodies (also 2 payload files): {large:.1f} µs")
        print(f"floor per 100 KB body (sha256 + plain file write): {floor:.1f} µs")
        print(f"writer CPU per 100 KB body beyond the span: {per_body:.1f} µs = {per_body / floor:.2f}x the floor")
        print(f"(medians of {args.rounds} rounds; {args.requests} requests per 1 KB round)")
    return 0


def profile_writer(app: Any, n: int) -> None:
    """cProfile of the writer thread's jobs at 1 KB (the profiler is set on that thread only)."""
    profiler = cProfile.Profile()
    asyncio.run(run_block(app, 1024, json_body(1024), 10))
    obsml.flush()
    from obsml import _pipeline

    writer = next(iter(_pipeline._PIPELINES.values())).writer
    started = threading.Event()

    def enable() -> None:
        profiler.enable()
        started.set()

    class _Enable:
        nbytes = 0

        def run(self) -> None:
            enable()

    class _Disable:
        nbytes = 0

        def run(self) -> None:
            profiler.disable()

    writer.submit(_Enable(), force=True)
    started.wait()
    asyncio.run(run_block(app, 1024, json_body(1024), n))
    obsml.flush()
    writer.submit(_Disable(), force=True)
    obsml.flush()
    pstats.Stats(profiler).sort_stats(os.environ.get("SORT", "cumulative")).print_stats(30)


if __name__ == "__main__":
    raise SystemExit(main())
