"""How fast ``obsml query`` reads a large store, next to DuckDB reading the same files by hand.

Synthesizes a store in the real layout (``traces/<yyyy>/<mm>/<dd>/<hh>/<writer-id>-<seq>.jsonl``, one
UTC day, each hour's spans spread over ``--writers`` writers in part files of at most ``--part-spans``
spans, as the writer cuts them; about 1 KB a span, 3% 4xx/5xx), written from a template, not through
the middleware. Then, in interleaved rounds, each a whole process (Python start-up and imports
included, as a user runs it), over the whole day and over one hour of it:

* ``obsml``: ``obsml query "select status_code, count(*) from spans group by 1" --format csv``
  (with ``--since``/``--until`` for the hour);
* ``raw json``: DuckDB's ``read_json`` over the same files (globbed; the hour's folder for the hour)
  with every top-level key declared and ``attributes`` as JSON, the status code extracted from it:
  the same information the ``spans`` view reads;
* ``raw struct``: the same with ``attributes`` declared as a struct of the status code alone: the
  fastest read by hand, for a query that knows the one key it needs.

    .venv/bin/python benchmarks/query_scale.py                      # 1,000,000 spans, 5 rounds
    .venv/bin/python benchmarks/query_scale.py --spans 200000 --rounds 3
    .venv/bin/python benchmarks/query_scale.py --quick              # smoke run, 5,000 spans

Targets (issue 14): obsml within 1.3x of the raw read, one hour of a 1M-span day under 1 s.
The store is a temporary directory, removed at the end (``--store DIR`` keeps and reuses one).
"""

from __future__ import annotations

import argparse
import glob
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

DAY = datetime(2026, 11, 2, tzinfo=timezone.utc)
HOUR = 12  # the hour timed alone
SQL = "select status_code, count(*) from spans group by 1"
TOP_LEVEL = (
    "name: 'VARCHAR', trace_id: 'VARCHAR', span_id: 'VARCHAR', parent_span_id: 'VARCHAR', kind: 'VARCHAR', "
    "start_time: 'TIMESTAMPTZ', end_time: 'TIMESTAMPTZ', duration_ms: 'DOUBLE', "
    "status: 'STRUCT(code VARCHAR, description VARCHAR)', events: 'JSON', resource: 'JSON', "
    "dropped_attributes: 'BIGINT'"
)
RAW = {
    "raw json": (
        "select json_extract_string(attributes, '$.\"http.response.status_code\"')::INTEGER, count(*) "
        "from read_json(files, format='newline_delimited', columns={" + TOP_LEVEL + ", attributes: 'JSON'}) group by 1"
    ),
    "raw struct": (
        "select attributes.\"http.response.status_code\", count(*) from read_json(files, format='newline_delimited', "
        "columns={" + TOP_LEVEL + ", attributes: 'STRUCT(\"http.response.status_code\" INTEGER)'}) group by 1"
    ),
}
RAW_SCRIPT = """
import glob, sys, duckdb
files = sorted(glob.glob(sys.argv[1]))
for row in sorted(duckdb.sql(sys.argv[2].replace("files", repr(files))).fetchall()):
    print(*row, sep=",")
"""

SPAN = (
    '{"name":"POST /score","trace_id":"%(trace)s","span_id":"%(span)s","parent_span_id":null,"kind":"SERVER",'
    '"start_time":"%(start)s","end_time":"%(end)s","duration_ms":%(ms).3f,'
    '"status":{"code":"%(code)s","description":%(description)s},'
    '"attributes":{"http.request.method":"POST","url.path":"/score","url.scheme":"http",'
    '"network.protocol.version":"1.1","client.address":"10.0.%(a)d.%(b)d","client.port":%(port)d,'
    '"server.address":"credit.internal","server.port":8000,"http.route":"/score","obsml.service":"credit",'
    '"obsml.model.name":"best_model","obsml.model.version":"10","obsml.correlation_id":"%(correlation)s",'
    '"obsml.correlation_id.source":"x-correlation-id","http.response.status_code":%(status)d,'
    '"user_agent.original":"python-httpx/0.28.1","obsml.request.body.size":%(size)d,'
    '"obsml.request.body":"{\\"income\\": %(income).1f, \\"age\\": %(age)d, \\"debt_ratio\\": 0.31}",'
    '"obsml.request.body.encoding":"utf-8","obsml.response.body.size":29,'
    '"obsml.response.body":"{\\"approved\\": true, \\"p\\": 0.81}","obsml.response.body.encoding":"utf-8",'
    '"obsml.response.time_to_first_byte_ms":%(ttfb).3f},"events":[],'
    '"resource":{"service.name":"credit","telemetry.sdk.language":"python"},"dropped_attributes":0}\n'
)


def synthesize(root: str, spans: int, writers: int, part_spans: int) -> tuple[int, int]:
    """``spans`` spans over the 24 hours of DAY; returns (part files, bytes)."""
    rng = random.Random(14)
    files = size = 0
    for hour in range(24):
        start = DAY + timedelta(hours=hour)
        count = spans // 24 + (1 if hour < spans % 24 else 0)
        lines: list[list[str]] = [[] for _ in range(writers)]
        for n in range(count):
            at = start + timedelta(seconds=3600 * n / count)
            ms = rng.uniform(2, 40)
            status = 200 if rng.random() > 0.03 else rng.choice((400, 422, 500))
            lines[n % writers].append(SPAN % {
                "trace": f"{rng.getrandbits(128):032x}", "span": f"{rng.getrandbits(64):016x}",
                "start": at.isoformat(), "end": (at + timedelta(milliseconds=ms)).isoformat(), "ms": ms,
                "code": "ERROR" if status >= 500 else "UNSET",
                "description": '"ValueError: income must be a number"' if status >= 500 else "null",
                "a": rng.randrange(256), "b": rng.randrange(256), "port": rng.randrange(1024, 65536),
                "correlation": f"{rng.getrandbits(128):032x}", "status": status, "size": rng.randrange(50, 60),
                "income": rng.uniform(10, 200), "age": rng.randrange(18, 80),
                "ttfb": ms * 0.9,
            })  # fmt: skip
        folder = os.path.join(root, "traces", f"{start:%Y/%m/%d/%H}")
        os.makedirs(folder, exist_ok=True)
        for writer, written in enumerate(lines):
            for first in range(0, len(written), part_spans):
                text = "".join(written[first:first + part_spans])
                name = f"{4000 + writer}-{writer:08x}-{first // part_spans + 1:06d}.jsonl"
                with open(os.path.join(folder, name), "w") as file:
                    file.write(text)
                files += 1
                size += len(text)
    return files, size


def commands(root: str) -> dict[str, dict[str, list[str]]]:
    hour = DAY + timedelta(hours=HOUR)
    window = ["--since", hour.isoformat(), "--until", (hour + timedelta(hours=1)).isoformat()]
    obsml = [sys.executable, "-m", "obsml.cli", "query", SQL, "--store", root, "--format", "csv"]
    every, one = os.path.join(root, "traces", "*", "*", "*", "*", "*.jsonl"), os.path.join(
        root, "traces", f"{hour:%Y/%m/%d/%H}", "*.jsonl")
    return {
        "whole day": {"obsml": obsml, **{name: [sys.executable, "-c", RAW_SCRIPT, every, sql]
                                          for name, sql in RAW.items()}},
        "one hour": {"obsml": obsml + window, **{name: [sys.executable, "-c", RAW_SCRIPT, one, sql]
                                                 for name, sql in RAW.items()}},
    }


def counts(output: str) -> dict[int, int]:
    """``status,count`` lines (a csv header skipped) as a dict."""
    found = {}
    for line in output.splitlines():
        status, _, n = line.partition(",")
        if status.isdigit():
            found[int(status)] = int(n)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--writers", type=int, default=4, help="writers (processes) per hour (default 4)")
    parser.add_argument("--part-spans", type=int, default=1000, help="spans per part file at most (default 1000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--store", help="synthesize here (kept), or reuse the store already there")
    parser.add_argument("--quick", action="store_true", help="5,000 spans, 2 rounds: a smoke run")
    args = parser.parse_args()
    spans, rounds = (5_000, 2) if args.quick else (args.spans, args.rounds)
    root = args.store or tempfile.mkdtemp(prefix="obsml-query-scale-")
    try:
        if not glob.glob(os.path.join(root, "traces", "*")):
            started = time.perf_counter()
            files, size = synthesize(root, spans, args.writers, args.part_spans)
            print(f"synthesized {spans:,} spans in {files:,} part files, {size / 1e9:.2f} GB "
                  f"({size / spans:.0f} bytes a span), in {time.perf_counter() - started:.1f} s")
        else:
            print(f"reusing the store in {root}")
        return run(commands(root), rounds)
    finally:
        if not args.store:
            shutil.rmtree(root, ignore_errors=True)


def run(plan: dict[str, dict[str, list[str]]], rounds: int) -> int:
    failed = False
    for window, variants in plan.items():
        times: dict[str, list[float]] = {name: [] for name in variants}
        results: dict[str, dict[int, int]] = {}
        for _ in range(rounds):
            for name, command in variants.items():  # interleaved: a drift of the machine hits every variant
                started = time.perf_counter()
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                times[name].append(time.perf_counter() - started)
                if done.returncode != 0:
                    print(f"{name} failed:\n{done.stderr}", file=sys.stderr)
                    return 1
                results[name] = counts(done.stdout)
        if len({tuple(sorted(found.items())) for found in results.values()}) != 1:
            print(f"{window}: the variants disagree: {results}", file=sys.stderr)
            failed = True
        total = sum(results["obsml"].values())
        print(f"\n== {window}: {total:,} spans, {rounds} rounds (whole processes, seconds)")
        print(f"  {'variant':<11} {'min':>7} {'median':>7}  obsml / it (medians)")
        obsml_median = statistics.median(times["obsml"])
        for name, samples in times.items():
            median = statistics.median(samples)
            ratio = "" if name == "obsml" else f"{obsml_median / median:.2f}x"
            print(f"  {name:<11} {min(samples):7.3f} {median:7.3f}  {ratio}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
