"""How long ``obsml report`` takes, and how much memory, over a week of a busy model (issue 19).

Synthesizes a store in the real layout, written from templates, not through the middleware: spans
as benchmarks/query_scale.py writes them (its template, about 1 KB a span), spread over the 168
hours of one week, and model data as the Collector writes jsonl part files
(``modeldata/<service>/<model>/<version>/<identifier>/<yyyy>/<mm>/<dd>/<writer>-<seq>.jsonl``):
``--rows`` input rows (income, age, region), as many predictions, and labels for a tenth of them.
The income drifts upwards over the week. Then it runs, as a user would (a whole process),

    obsml report --since <week start> --until <week end> --reference <first day> -o report.html

and prints its wall time and peak RSS (the child's ``ru_maxrss``).

    .venv/bin/python benchmarks/report_scale.py                 # 1,000,000 spans and rows
    .venv/bin/python benchmarks/report_scale.py --quick         # smoke run, 20,000 of each

Targets (issue 19): under 60 s and under 2 GB on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from query_scale import SPAN  # the span template of the query benchmark

WEEK = datetime(2026, 11, 2, tzinfo=timezone.utc)
HOURS = 7 * 24
PART_ROWS = 1000  # rows (or spans) per part file at most, as the writer cuts them
ROWS_FOLDER = "modeldata/credit/best_model/10"


def spans(root: str, count: int, rng: random.Random) -> None:
    for hour in range(HOURS):
        start = WEEK + timedelta(hours=hour)
        n_hour = count // HOURS + (1 if hour < count % HOURS else 0)
        lines = []
        for n in range(n_hour):
            at = start + timedelta(seconds=3600 * n / max(n_hour, 1))
            ms = rng.uniform(2, 40)
            status = 200 if rng.random() > 0.03 else rng.choice((400, 422, 500))
            lines.append(SPAN % {
                "trace": f"{rng.getrandbits(128):032x}", "span": f"{rng.getrandbits(64):016x}",
                "start": at.isoformat(), "end": (at + timedelta(milliseconds=ms)).isoformat(), "ms": ms,
                "code": "ERROR" if status >= 500 else "UNSET",
                "description": '"ValueError: income must be a number"' if status >= 500 else "null",
                "a": rng.randrange(256), "b": rng.randrange(256), "port": rng.randrange(1024, 65536),
                "correlation": f"{rng.getrandbits(128):032x}", "status": status, "size": rng.randrange(50, 60),
                "income": rng.uniform(10, 200), "age": rng.randrange(18, 80), "ttfb": ms * 0.9,
            })  # fmt: skip
        _write(os.path.join(root, "traces", f"{start:%Y/%m/%d/%H}"), lines)


def model_data(root: str, count: int, rng: random.Random) -> None:
    per_day = count // 7
    for day in range(7):
        start = WEEK + timedelta(days=day)
        inputs, predictions, labels = [], [], []
        for n in range(per_day):
            at = (start + timedelta(seconds=86400 * n / per_day)).isoformat()
            correlation = f"{rng.getrandbits(64):016x}"
            ids = f'"correlation_id":"{correlation}","row":0,"trace_id":null,"span_id":null,"collected_at":"{at}"'
            income = rng.gauss(50_000 + 2_000 * day, 10_000)
            inputs.append(f'{{"income":{income:.1f},"age":{rng.randint(18, 80)},'
                          f'"region":"{rng.choice(("north", "south", "east"))}",{ids},"schema":"s1"}}\n')
            score = rng.random()
            predictions.append(f'{{"defaulted":{"true" if score >= 0.5 else "false"},"score":{score:.4f},{ids},'
                               '"schema":"s2"}\n')
            if n % 10 == 0:
                truth = "true" if rng.random() < (0.8 if score >= 0.5 else 0.2) else "false"
                labels.append(f'{{"defaulted":{truth},{ids},"schema":"s3"}}\n')
        for identifier, lines in (("inputs", inputs), ("predictions", predictions), ("labels", labels)):
            _write(os.path.join(root, ROWS_FOLDER, identifier, f"{start:%Y/%m/%d}"), lines)


def _write(folder: str, lines: list[str]) -> None:
    os.makedirs(folder, exist_ok=True)
    for first in range(0, len(lines), PART_ROWS):
        with open(os.path.join(folder, f"4000-0000abcd-{first // PART_ROWS + 1:06d}.jsonl"), "w") as file:
            file.write("".join(lines[first:first + PART_ROWS]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--rows", type=int, default=1_000_000, help="input rows (and as many predictions)")
    parser.add_argument("--store", help="synthesize here (kept), or reuse the store already there")
    parser.add_argument("--quick", action="store_true", help="20,000 spans and rows: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.spans = args.rows = 20_000
    root = args.store or tempfile.mkdtemp(prefix="obsml-report-scale-")
    try:
        if not os.path.isdir(os.path.join(root, "traces")):
            began = time.perf_counter()
            rng = random.Random(19)
            spans(root, args.spans, rng)
            model_data(root, args.rows, rng)
            print(f"synthesized {args.spans:,} spans and {args.rows:,} input rows in "
                  f"{time.perf_counter() - began:.0f} s", file=sys.stderr)
        output = os.path.join(root, "report.html")
        command = [
            sys.executable, "-m", "obsml.cli", "report", "--store", root, "--since", WEEK.isoformat(),
            "--until", (WEEK + timedelta(days=7)).isoformat(), "-o", output,
            "--reference", f"{WEEK.isoformat()}..{(WEEK + timedelta(days=1)).isoformat()}",
        ]
        began = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - began
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kilobytes on Linux
        result = {"spans": args.spans, "rows": args.rows, "wall_s": round(seconds, 1), "peak_rss_mb": round(peak_mb),
                  "report_kb": round(os.path.getsize(output) / 1024)}
        print(json.dumps(result))
        print(f"obsml report of {args.spans:,} spans and {args.rows:,} rows: {seconds:.1f} s, peak RSS "
              f"{peak_mb:,.0f} MB (targets: 60 s, 2,048 MB)", file=sys.stderr)
    finally:
        if not args.store:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
