"""What ``Collector.collect()`` costs on the request path, and per row on the writer thread.

In process, with a temporary local store. Request path: each ``collect()`` timed with
``perf_counter_ns`` (median and p99) for one 10-feature row and for a 1,000-row DataFrame of
10 columns, in each format. Writer side: a block of collects plus ``obsml.flush()``, minus the
request-path time, divided by the rows written.

    .venv/bin/python benchmarks/collect_overhead.py [--rounds 2000] [--check]

Targets: one row ≤ 10 µs, a 1,000-row DataFrame ≤ 1 ms (medians, jsonl).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from typing import Any

import pandas as pd

import obsml

FEATURES = [f"x{i}" for i in range(10)]


def _timed(collector: obsml.Collector, data: Any, rounds: int) -> tuple[float, float, float]:
    """Median and p99 of one collect() in µs, and the writer's cost per row in µs."""
    samples = []
    obsml.flush(60)
    block_start = time.perf_counter_ns()
    for _ in range(rounds):
        start = time.perf_counter_ns()
        collector.collect(data)
        samples.append(time.perf_counter_ns() - start)
    obsml.flush(600)
    block = time.perf_counter_ns() - block_start
    rows = rounds * (len(data) if isinstance(data, (list, pd.DataFrame)) else 1)
    samples.sort()
    writer_per_row = (block - sum(samples)) / rows / 1000
    return samples[len(samples) // 2] / 1000, samples[int(len(samples) * 0.99)] / 1000, writer_per_row


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    row = [[1, 2.5, True, "a", 4, 5.5, False, "b", 7, 8.25]]
    frame = pd.DataFrame([row[0]] * 1000, columns=FEATURES)
    missed = []
    print("| format | input | collect() median / p99 µs | writer µs per row |\n| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as store:
        for format in ("jsonl", "csv", "parquet"):
            for name, data, rounds, target in (
                ("one 10-feature row", row, args.rounds, 10.0),
                ("1,000-row DataFrame", frame, max(10, args.rounds // 100), 1000.0),
            ):
                collector = obsml.Collector("bench", f"{format}-{len(data)}", FEATURES, store=store, format=format)
                collector.collect(data)  # first use builds the destination
                median, p99, writer = _timed(collector, data, rounds)
                print(f"| {format} | {name} | {median:.1f} / {p99:.1f} | {writer:.2f} |")
                if format == "jsonl" and median > target:
                    missed.append(f"{name}: {median:.1f} µs > {target:g} µs")
        print(f"\nrows written: {obsml.stats().get('rows_collected')}, dropped: {obsml.stats()['dropped']}")
    for line in missed:
        print("missed:", line, file=sys.stderr)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
