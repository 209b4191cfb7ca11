"""Real servers under load: throughput, p99 latency and server CPU per request, bare vs middleware.

Each server kind runs one process (tree) per variant, all started before the first measurement
and kept running; wrk (``wrk -t1 -c16 --latency``, POST of a JSON body, loopback only) then loads
them one at a time for ``--duration`` seconds, in ``--rounds`` rounds whose variant order is
shuffled. Per run: requests/s, p50 and p99 latency (wrk's), and the server's CPU time per request
(user + system of the server process and its workers, from ``/proc``). Reported per variant:
the median over rounds and the ratio to bare of the same server and size.

* ``uvicorn-httptools``, ``uvicorn-h11``: one uvicorn process, the raw ASGI echo app;
* ``gunicorn-sync``: 2 sync workers; ``gunicorn-gthread``: 2 workers x 4 threads; the Flask app.

Variants: bare, obsml (local store in a temporary directory, emptied between runs), otel, and,
under ``uvicorn-httptools`` at 1 KB only, the peers sentry and logfire (see ``asgi_overhead.py``) and
two references that split obsml's cost (``server_apps.py``): ``passthrough``, a middleware of the
same shape doing nothing, and ``obsml-unsampled``, obsml's request path with no span written.

Streaming: time to the first body byte of a chunked response (first chunk at once, the rest
20 ms later), bare vs obsml, under uvicorn-httptools and gunicorn-sync, one connection at a time.

Memory under sustained load (``--soak``, 300 s by default): obsml under uvicorn-httptools and wrk
at full load, 1 KB bodies, its RSS sampled every 5 s (the store's committed files deleted as they
come, so the disk does not fill). Flat: from the end of the run's first fifth to its end, RSS grows
by at most 8 MiB or 5%, whichever is larger.

    python benchmarks/server_load.py [--duration 6] [--rounds 3] [--soak 300] [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from asgi_overhead import clean_store, json_body, size_label

HERE = Path(__file__).resolve().parent
CONNECTIONS = 16
# server kind -> (interface, command after "python -m", with {port})
SERVERS: dict[str, tuple[str, list[str]]] = {
    "uvicorn-httptools": ("asgi", ["uvicorn", "--http", "httptools"]),
    "uvicorn-h11": ("asgi", ["uvicorn", "--http", "h11"]),
    "gunicorn-sync": ("wsgi", ["gunicorn", "-w", "2", "-k", "sync"]),
    "gunicorn-gthread": ("wsgi", ["gunicorn", "-w", "2", "-k", "gthread", "--threads", "4"]),
}
BASE_VARIANTS = ("bare", "obsml", "otel")
PEER_SERVER = "uvicorn-httptools"
PEER_VARIANTS = ("sentry", "logfire", "passthrough", "obsml-unsampled")
SWEEP_SERVERS = ("uvicorn-httptools", "gunicorn-sync")  # other body sizes, and time to first byte


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(kind: str, app: str, port: int) -> list[str]:
    interface, args = SERVERS[kind]
    if interface == "asgi":
        return [sys.executable, "-m", *args, f"server_apps:{app}", "--app-dir", str(HERE), "--host", "127.0.0.1",
                "--port", str(port), "--no-access-log", "--log-level", "warning", "--lifespan", "off"]
    return [sys.executable, "-m", *args, "--chdir", str(HERE), "--bind", f"127.0.0.1:{port}",
            "--log-level", "warning", "--no-control-socket", f"server_apps:{app}"]


class Server:
    """One server process (tree) on 127.0.0.1 serving one variant; its log in ``folder``."""

    def __init__(self, kind: str, variant: str, app: str, folder: Path) -> None:
        self.kind, self.variant, self.port = kind, variant, free_port()
        self.store = folder / f"store-{kind}-{variant}"
        self.log = folder / f"{kind}-{variant}-{app}.log"
        env = {**os.environ, "OBSML_BENCH_VARIANT": variant, "OBSML_BENCH_STORE": str(self.store)}
        with open(self.log, "wb") as log:  # its own session: on a hung stop, the whole group is killed
            self.process = subprocess.Popen(
                server_command(kind, app, self.port), env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} ({self.variant}) exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                if self.kind.startswith("gunicorn"):
                    time.sleep(0.5)  # the master listens before its workers have imported the app
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.kind} ({self.variant}) did not listen within {timeout:.0f} s")

    def _tree(self) -> Iterator[int]:
        """The server process and all its descendants (those alive now)."""
        pending = [self.process.pid]
        while pending:
            pid = pending.pop()
            yield pid
            with contextlib.suppress(OSError):
                for task in Path(f"/proc/{pid}/task").iterdir():
                    pending.extend(int(child) for child in (task / "children").read_text().split())

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process and all its descendants, now."""
        ticks = 0
        for pid in self._tree():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text()
                fields = stat[stat.rindex(")") + 2:].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        """Resident memory of the server process and all its descendants, now."""
        total = 0
        for pid in self._tree():
            with contextlib.suppress(OSError, KeyError):
                fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
                total += int(fields["VmRSS"].split()[0]) * 1024
        return total

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(40)  # gunicorn's graceful timeout is 30 s
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@contextlib.contextmanager
def running(kind: str, variants: Sequence[str], app: str, folder: Path) -> Iterator[dict[str, Server]]:
    servers: dict[str, Server] = {}
    try:
        for variant in variants:
            servers[variant] = Server(kind, variant, app, folder)
        for variant in variants:
            for attempt in range(3):
                try:
                    servers[variant].wait_ready()
                    break
                except RuntimeError:
                    # The free port can be taken by another process before the server binds it
                    # (the machine is shared): start it again on another one.
                    if attempt == 2 or servers[variant].process.poll() is None:
                        raise
                    servers[variant] = Server(kind, variant, app, folder)
        yield servers
    finally:
        for server in servers.values():
            server.stop()


# --------------------------------------------------------------------------- wrk

UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk_script(folder: Path, size: int) -> Path:
    body = json_body(size).decode()
    script = folder / f"post-{size}.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.body = [[{body}]]\n'
    )
    return script


def parse_wrk(output: str) -> dict[str, float]:
    def latency(q: str) -> float:
        match = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        return float(match.group(1)) * UNITS[match.group(2)] if match else float("nan")

    requests = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not requests or not rate:
        raise RuntimeError(f"wrk printed no totals:\n{output}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return {
        "requests": int(requests.group(1)), "rps": float(rate.group(1)),
        "p50_ms": latency("50"), "p99_ms": latency("99"),
        "socket_errors": errors, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def wrk_command(server: Server, script: Path, duration: int, path: str) -> list[str]:
    return ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration}s", "--latency", "--timeout", "10s",
            "-s", str(script), f"http://127.0.0.1:{server.port}{path}"]


def load(server: Server, script: Path, duration: int, path: str) -> dict[str, float]:
    command = wrk_command(server, script, duration, path)
    load_average = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    cpu_before = server.cpu_seconds()
    output = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    cpu = server.cpu_seconds() - cpu_before
    result = parse_wrk(output)
    result["cpu_us_per_request"] = cpu / max(1, result["requests"]) * 1e6
    result["load_average_1min"] = load_average
    return result


def measure_server(
    kind: str, variants: Sequence[str], sizes: Sequence[int], duration: int, warmup: int, rounds: int,
    folder: Path, rng: random.Random,
) -> dict[str, Any]:
    path = "/echo" if SERVERS[kind][0] == "wsgi" else "/score"
    cells: dict[str, Any] = {}
    with running(kind, variants, "wsgi_app" if SERVERS[kind][0] == "wsgi" else "asgi_app", folder) as servers:
        for size in sizes:
            script = wrk_script(folder, size)
            runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
            for variant in variants if warmup else ():
                load(servers[variant], script, warmup, path)
            for _ in range(rounds):
                order = list(variants)
                rng.shuffle(order)
                for variant in order:
                    clean_store(str(servers[variant].store))
                    runs[variant].append(load(servers[variant], script, duration, path))
                    print(f"  {kind} {size_label(size)} {variant}: {runs[variant][-1]}", flush=True)
            cells[size_label(size)] = summarize_cell(size, runs)
        for server in servers.values():
            clean_store(str(server.store))
    return cells


def summarize_cell(size: int, runs: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for variant, results in runs.items():
        rows[variant] = {
            key: statistics.median(r[key] for r in results)
            for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request")
        }
        rows[variant]["errors"] = sum(r["socket_errors"] + r["non_2xx"] for r in results)
        rows[variant]["runs"] = results
    bare = rows["bare"]
    for row in rows.values():
        row["rps_ratio"] = row["rps"] / bare["rps"]
        row["p99_ratio"] = row["p99_ms"] / bare["p99_ms"]
        row["cpu_ratio"] = row["cpu_us_per_request"] / bare["cpu_us_per_request"]
        row["cpu_added_us"] = row["cpu_us_per_request"] - bare["cpu_us_per_request"]
    return {"bytes": size, "variants": rows}


# --------------------------------------------------------------------------- time to first byte


def first_byte(port: int, body: bytes) -> tuple[float, float]:
    """(ms to the first byte of the response body, ms to the end), over a fresh connection."""
    request = (
        b"POST /stream HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.perf_counter()
        sock.sendall(request)
        received, first = b"", None
        while chunk := sock.recv(65536):
            received += chunk
            if first is None and len(received) > received.find(b"\r\n\r\n") + 4 > 3:
                first = time.perf_counter() - start
        end = time.perf_counter() - start
    if not received.startswith(b"HTTP/1.1 200") or first is None:
        raise RuntimeError(f"unexpected streamed response: {received[:200]!r}")
    return first * 1e3, end * 1e3


def measure_ttfb(kind: str, requests: int, folder: Path, rng: random.Random) -> dict[str, Any]:
    app = "wsgi_stream" if SERVERS[kind][0] == "wsgi" else "asgi_stream"
    body = json_body(1024)
    samples: dict[str, list[tuple[float, float]]] = {"bare": [], "obsml": []}
    with running(kind, tuple(samples), app, folder) as servers:
        for variant in samples:
            for _ in range(5):
                first_byte(servers[variant].port, body)
        for _ in range(requests):
            order = list(samples)
            rng.shuffle(order)
            for variant in order:
                samples[variant].append(first_byte(servers[variant].port, body))
        for server in servers.values():
            clean_store(str(server.store))
    rows = {
        variant: {
            "ttfb_median_ms": statistics.median(s[0] for s in values),
            "ttfb_p99_ms": sorted(s[0] for s in values)[int(0.99 * (len(values) - 1))],
            "total_median_ms": statistics.median(s[1] for s in values),
        }
        for variant, values in samples.items()
    }
    rows["obsml"]["ttfb_added_ms"] = rows["obsml"]["ttfb_median_ms"] - rows["bare"]["ttfb_median_ms"]
    return {"requests_per_variant": requests, "variants": rows}


# --------------------------------------------------------------------------- memory under sustained load

SOAK_SAMPLE_S = 5
# Flat: from the end of the first fifth of the run (allocator and caches warmed up) to the end, the
# server's resident memory grows by at most this much (the larger of the two).
SOAK_FLAT_BYTES, SOAK_FLAT_SHARE = 8 * 1024 * 1024, 0.05


def prune_store(root: Path) -> None:
    """Delete the part and payload files obsml committed, so that a long run does not fill the disk:
    never a hidden temporary file a writer still fills, nor a folder, nor ``_obsml/``."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = [name for name in dirs if name != "_obsml"]
        for name in files:
            if not name.startswith("."):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


def measure_soak(kind: str, seconds: int, folder: Path) -> dict[str, Any]:
    """obsml's server under wrk at full load for ``seconds`` (1 KB bodies): its RSS every few seconds.

    The store's committed files are deleted every sample (the disk would fill); the verdict is on
    the growth from the end of the run's first fifth to its end."""
    path = "/echo" if SERVERS[kind][0] == "wsgi" else "/score"
    with running(kind, ("obsml",), "wsgi_app" if SERVERS[kind][0] == "wsgi" else "asgi_app", folder) as servers:
        server = servers["obsml"]
        command = wrk_command(server, wrk_script(folder, 1024), seconds, path)
        samples: list[tuple[float, int]] = [(0.0, server.rss_bytes())]
        start = time.monotonic()
        with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as wrk:
            while wrk.poll() is None:
                time.sleep(min(SOAK_SAMPLE_S, max(0.1, seconds - (time.monotonic() - start))))
                samples.append((time.monotonic() - start, server.rss_bytes()))
                prune_store(server.store)
            output = wrk.stdout.read() if wrk.stdout else ""
        prune_store(server.store)
    result = parse_wrk(output)
    warm = next((rss for at, rss in samples if at >= seconds / 5), samples[-1][1])
    growth = samples[-1][1] - warm
    allowed = max(SOAK_FLAT_BYTES, int(warm * SOAK_FLAT_SHARE))
    return {
        "seconds": seconds, "rps": result["rps"], "p99_ms": result["p99_ms"],
        "errors": result["socket_errors"] + result["non_2xx"],
        "rss_start_mib": samples[0][1] / 2**20, "rss_warm_mib": warm / 2**20, "rss_end_mib": samples[-1][1] / 2**20,
        "rss_max_mib": max(rss for _, rss in samples) / 2**20, "growth_after_warmup_mib": growth / 2**20,
        "allowed_growth_mib": allowed / 2**20, "flat": growth <= allowed,
        "samples": [(round(at, 1), round(rss / 2**20, 1)) for at, rss in samples],
    }


# --------------------------------------------------------------------------- running


def run(
    duration: int, warmup: int, rounds: int, sizes: Sequence[int], sweep_sizes: Sequence[int],
    servers: Sequence[str], ttfb_requests: int, seed: int, soak: int = 0,
) -> dict[str, Any]:
    rng = random.Random(seed)
    result: dict[str, Any] = {
        "connections": CONNECTIONS, "duration_s": duration, "rounds": rounds, "servers": {}, "ttfb": {},
    }
    with tempfile.TemporaryDirectory(prefix="obsml-server-load-") as temporary:
        folder = Path(temporary)
        for kind in servers:
            variants = BASE_VARIANTS + (PEER_VARIANTS if kind == PEER_SERVER else ())
            result["servers"][kind] = measure_server(
                kind, variants, sizes, duration, warmup, rounds, folder, rng
            )
        for kind in (kind for kind in SWEEP_SERVERS if kind in servers):
            more = [size for size in sweep_sizes if size not in sizes]
            if more:  # other sizes: the base variants only, one round of at most 5 s each
                result["servers"][kind].update(
                    measure_server(kind, BASE_VARIANTS, more, min(duration, 5), warmup, 1, folder, rng)
                )
        for kind in (kind for kind in SWEEP_SERVERS if kind in servers):
            result["ttfb"][kind] = measure_ttfb(kind, ttfb_requests, folder, rng)
        if soak and PEER_SERVER in servers:
            result["soak"] = {PEER_SERVER: measure_soak(PEER_SERVER, soak, folder)}
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--duration", type=int, default=6, help="seconds of wrk per run (default 6)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds at 1 KB (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 s runs, 1 KB only, one round")
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated server kinds (default: all)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--soak", type=int, default=300,
        help=f"seconds of full load on obsml under {PEER_SERVER}, its RSS sampled (default 300; 0: none)",
    )
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    args = parser.parse_args(argv)
    servers = args.servers.split(",")
    if unknown := set(servers) - set(SERVERS):
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}; known: {', '.join(SERVERS)}")
    if args.quick:
        settings = {"duration": 1, "warmup": 0, "rounds": 1, "sweep_sizes": (), "ttfb_requests": 10, "soak": 5}
    else:
        settings = {
            "duration": args.duration, "warmup": 1, "rounds": args.rounds,
            "sweep_sizes": (200, 100 * 1024, 1024 * 1024), "ttfb_requests": 100, "soak": args.soak,
        }
    result = run(
        sizes=(1024,), servers=servers, seed=args.seed, **settings
    )
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
