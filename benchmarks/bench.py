"""``make bench``: every benchmark in one run, written to ``benchmarks/results/<date>-<host>.{json,md,png}``.

Runs, each as its own process (the peers configure process-wide state): the in-process ASGI
benchmark (``asgi_overhead.py``, with Sentry and Logfire as peers) and WSGI benchmark
(``wsgi_overhead.py``) at 200 B, 1 KB, 100 KB and 1 MB; the server benchmark with wrk
(``server_load.py``: uvicorn httptools and h11, gunicorn sync and gthread; streaming time to
first byte); the sink-outage benchmark (``sink_outage.py``) and the collector's cost
(``collect_overhead.py``); the request logs' and the dependency instrumentation's cost
(``log_cost.py``, ``dependency_cost.py``). Records the machine (CPU model, cores, load average at
start and end) and the versions of everything measured. ``--quick`` is a smoke run of the whole, under a minute.

    python benchmarks/bench.py [--quick] [--out benchmarks/results]
    python benchmarks/bench.py --steps asgi,server --servers uvicorn-httptools --out /tmp/b   # a part of it
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SIZES = "200,1024,102400,1048576"
PACKAGES = (
    "obsml", "starlette", "fastapi", "uvicorn", "httptools", "h11", "gunicorn", "flask", "opentelemetry-sdk",
    "opentelemetry-instrumentation-asgi", "opentelemetry-instrumentation-wsgi", "sentry-sdk", "logfire",
    "fsspec", "duckdb", "pyarrow", "pandas", "matplotlib",
)


def steps(quick: bool, scratch: Path, servers: str | None) -> dict[str, list[str]]:
    """Each step's arguments; the ones writing JSON write it to ``scratch/<step>.json``."""
    if quick:
        inprocess, server, outage, collect = ["--quick"], ["--quick"], ["--quick"], ["--rounds", "50"]
    else:
        inprocess = ["--rounds", "10", "--requests", "200"]
        server, collect = ["--duration", "6", "--rounds", "3"], ["--rounds", "1000"]
        outage = ["--rounds", "10", "--requests", "100"]  # and its default burst, 20,000 requests
    return {
        "asgi": ["asgi_overhead.py", *inprocess, "--sizes", SIZES, "--peers", "--json", str(scratch / "asgi.json")],
        "wsgi": ["wsgi_overhead.py", *inprocess, "--sizes", SIZES, "--json", str(scratch / "wsgi.json")],
        "server": ["server_load.py", *server, *(["--servers", servers] if servers else []),
                   "--json", str(scratch / "server.json")],
        "sink_outage": ["sink_outage.py", *outage],
        "collector": ["collect_overhead.py", *collect],
        # Issue 18: what the request logs and the dependency instrumentation cost a request.
        "logs": ["log_cost.py", *(["--quick"] if quick else [])],
        "dependencies": ["dependency_cost.py", *(["--quick"] if quick else [])],
    }


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    return {
        "host": socket.gethostname(), "cpu_model": model, "cores": os.cpu_count(),
        "load_average_start": list(os.getloadavg()), "kernel": platform.release(), "machine": platform.machine(),
    }


def versions() -> dict[str, str]:
    found = {"python": f"{platform.python_version()} ({platform.python_implementation()})"}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True)
    found["wrk"] = (wrk.stdout + wrk.stderr).split(" [", 1)[0].removeprefix("wrk ").strip() or "unknown"
    return found


def run_step(name: str, argv: list[str], scratch: Path) -> dict[str, Any]:
    print(f"\n######## {name}: {' '.join(argv)}", flush=True)
    start = time.monotonic()
    process = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], capture_output=True, text=True)
    print(process.stdout, end="", flush=True)
    print(process.stderr, end="", file=sys.stderr, flush=True)
    step: dict[str, Any] = {"command": argv, "seconds": round(time.monotonic() - start, 1),
                            "exit_status": process.returncode}
    json_file = scratch / f"{name}.json"
    if json_file.exists():
        step["results"] = json.loads(json_file.read_text())
    elif name == "sink_outage":
        step["verdicts"] = re.findall(r"^VERDICT (.*)$", process.stdout, re.MULTILINE)
        step["dead_vs_healthy"] = re.findall(r"^  (dead / healthy: .*)$", process.stdout, re.MULTILINE)
    elif name == "collector":
        step["rows"] = [
            dict(zip(("format", "input", "collect_median_p99_us", "writer_us_per_row"), cells, strict=True))
            for cells in re.findall(r"^\| (\w+) \| ([^|]+?) \| ([\d.]+ / [\d.]+) \| ([\d.]+) \|$",
                                    process.stdout, re.MULTILINE)
        ]
    elif name in ("logs", "dependencies"):  # their own summary, as printed
        step["output"] = [line for line in process.stdout.splitlines() if line.strip()]
    if process.returncode:
        step["stderr_tail"] = process.stderr[-2000:]
    return step


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke run of every step, under a minute")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="folder of the results")
    parser.add_argument(
        "--steps",
        help="comma-separated steps to run (default: all): asgi,wsgi,server,sink_outage,collector,logs,dependencies",
    )
    parser.add_argument("--servers", help="comma-separated server kinds for the server step (default: all)")
    args = parser.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
    result: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"), "quick": args.quick,
        "machine": machine(), "versions": versions(), "steps": {},
    }
    with tempfile.TemporaryDirectory(prefix="obsml-bench-all-") as scratch:
        planned = steps(args.quick, Path(scratch), args.servers)
        chosen = args.steps.split(",") if args.steps else list(planned)
        if unknown := set(chosen) - set(planned):
            parser.error(f"unknown steps: {', '.join(sorted(unknown))}")
        for name in chosen:
            result["steps"][name] = run_step(name, planned[name], Path(scratch))
    result["machine"]["load_average_end"] = list(os.getloadavg())
    result["seconds"] = round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1)

    from bench_report import markdown, plot  # matplotlib only once everything has run

    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{started:%Y-%m-%d}-{result['machine']['host']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, stem.with_suffix(".png"))
    stem.with_suffix(".md").write_text(markdown(result, stem.with_suffix(".png").name))
    print(f"\nwritten: {stem}.json, .md, .png ({result['seconds']:.0f} s)")
    failed = [name for name, step in result["steps"].items() if step["exit_status"]]
    if failed:
        print(f"steps that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
