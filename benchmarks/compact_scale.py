"""What ``obsml compact`` does to a week of spans: bytes on disk and ``obsml query`` time, before and after.

Synthesizes a week (7 UTC days from 2026-11-02) of spans in the real layout with
``query_scale.synthesize`` (each hour's spans over ``--writers`` writers, part files of at most
``--part-spans`` spans, about 1 KB a span), copies it, and compacts the copy as a user would
(``obsml compact``, then ``obsml compact --grace 0s`` to delete the replaced part files). Then, in
interleaved rounds, each a whole process (Python start-up and imports included), the same
``obsml query`` over both stores: the whole week, one day, one hour. Prints the bytes under
``traces/`` of each, the compaction's time, and the query times (min and median), checking that
both stores give the same answers.

    .venv/bin/python benchmarks/compact_scale.py                      # 1,000,000 spans, 3 rounds
    .venv/bin/python benchmarks/compact_scale.py --quick              # smoke run, 7,000 spans

The stores are in a temporary directory, removed at the end (``--keep DIR`` keeps them there).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import query_scale

DAYS = 7
QUERIES = {
    "status counts": "select status_code, count(*) from spans group by 1 order by 1",
    "p95 by route": "select route, round(quantile_cont(duration_ms, 0.95), 6) from spans group by 1 order by 1",
}


def synthesize_week(root: str, spans: int, writers: int, part_spans: int) -> tuple[int, int]:
    """``spans`` spans over DAYS days; returns (part files, bytes)."""
    files = size = 0
    first = query_scale.DAY
    try:
        for day in range(DAYS):
            # query_scale.synthesize writes the 24 hours of its module's DAY: one day at a time.
            query_scale.DAY = first + timedelta(days=day)
            made, written = query_scale.synthesize(root, spans // DAYS + (1 if day < spans % DAYS else 0), writers,
                                                   part_spans)
            files, size = files + made, size + written
    finally:
        query_scale.DAY = first
    return files, size


def disk_bytes(root: str) -> tuple[int, int]:
    """(files, bytes) under ``root/traces``."""
    found = [os.path.join(folder, name) for folder, _, names in os.walk(os.path.join(root, "traces")) for name in names]
    return len(found), sum(os.path.getsize(path) for path in found)


def obsml(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "obsml.cli", *arguments]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--writers", type=int, default=4, help="writers (processes) per hour (default 4)")
    parser.add_argument("--part-spans", type=int, default=1000, help="spans per part file at most (default 1000)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", metavar="DIR", help="make the stores here and keep them")
    parser.add_argument("--quick", action="store_true", help="7,000 spans, 1 round: a smoke run")
    args = parser.parse_args()
    spans, rounds = (7_000, 1) if args.quick else (args.spans, args.rounds)
    folder = args.keep or tempfile.mkdtemp(prefix="obsml-compact-scale-")
    parts, compacted = os.path.join(folder, "parts"), os.path.join(folder, "compacted")
    try:
        print(f"load average at start: {' '.join(f'{n:.2f}' for n in os.getloadavg())}")
        started = time.perf_counter()
        files, size = synthesize_week(parts, spans, args.writers, args.part_spans)
        print(f"synthesized {spans:,} spans over {DAYS} days in {files:,} part files, {size / 1e9:.2f} GB, "
              f"in {time.perf_counter() - started:.1f} s")
        shutil.copytree(parts, compacted)
        started = time.perf_counter()
        done = subprocess.run(obsml("compact", "--store", compacted), capture_output=True, text=True, check=False)
        took = time.perf_counter() - started
        if done.returncode != 0:
            print(f"obsml compact failed:\n{done.stderr}", file=sys.stderr)
            return 1
        print(f"obsml compact: {took:.1f} s; {done.stdout.strip()}")
        subprocess.run(obsml("compact", "--store", compacted, "--grace", "0s"), capture_output=True, check=True)
        for name, root in (("part files", parts), ("compacted", compacted)):
            count, total = disk_bytes(root)
            print(f"  {name:<11} {count:6,} files {total / 1e6:10.1f} MB under traces/")
        return run(parts, compacted, rounds)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


def run(parts: str, compacted: str, rounds: int) -> int:
    day = query_scale.DAY + timedelta(days=3)
    hour = day + timedelta(hours=query_scale.HOUR)
    windows = {
        "week": [],
        "one day": ["--since", day.isoformat(), "--until", (day + timedelta(days=1)).isoformat()],
        "one hour": ["--since", hour.isoformat(), "--until", (hour + timedelta(hours=1)).isoformat()],
    }
    failed = False
    for query, sql in QUERIES.items():
        for window, options in windows.items():
            times: dict[str, list[float]] = {"part files": [], "compacted": []}
            answers: dict[str, str] = {}
            for _ in range(rounds):
                for name, root in (("part files", parts), ("compacted", compacted)):  # interleaved
                    command = obsml("query", sql, "--store", root, "--format", "csv", *options)
                    started = time.perf_counter()
                    done = subprocess.run(command, capture_output=True, text=True, check=False)
                    times[name].append(time.perf_counter() - started)
                    if done.returncode != 0:
                        print(f"{name} failed:\n{done.stderr}", file=sys.stderr)
                        return 1
                    answers[name] = done.stdout
            if answers["part files"] != answers["compacted"]:
                print(f"{query}, {window}: the stores disagree:\n{answers}", file=sys.stderr)
                failed = True
            medians = {name: statistics.median(samples) for name, samples in times.items()}
            print(f"\n== {query}, {window}: {rounds} rounds (whole processes, seconds)")
            for name, samples in times.items():
                speedup = medians["part files"] / medians[name]
                ratio = "" if name == "part files" else f"  part files / compacted: {speedup:.2f}x"
                print(f"  {name:<11} min {min(samples):7.3f}  median {medians[name]:7.3f}{ratio}")
    print(f"\nload average at end: {' '.join(f'{n:.2f}' for n in os.getloadavg())}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
