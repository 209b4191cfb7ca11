from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_the_overhead_benchmark_runs_all_three_variants_at_both_sizes() -> None:
    # A smoke run: the numbers are for people (and the issue notes), never asserted in tests.
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "asgi_overhead.py"), "--quick"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for size in ("1 KB", "100 KB"):
        assert f"== body {size}" in result.stdout
    rows = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert rows.count("otel") == rows.count("bare") == 4  # two tables per size
    assert "obsml stats (timed rounds): captured=" in result.stdout


def test_the_wsgi_overhead_benchmark_runs_all_three_variants_in_every_case() -> None:
    # A smoke run of the Flask (WSGI) counterpart; again, no timing is asserted.
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "wsgi_overhead.py"), "--quick"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for size in ("1 KB", "100 KB"):
        assert result.stdout.count(f"== body {size}") == 2  # small JSON response and same-size response
    rows = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert rows.count("otel") == rows.count("bare") == 8  # two tables per case, four cases
    assert result.stdout.count("obsml stats (timed rounds): captured=") == 4
    assert "check FAILED" not in result.stdout


def test_the_sink_outage_benchmark_measures_both_claims_and_leaves_nothing_behind(tmp_path: Path) -> None:
    # A smoke run: healthy / dead sink / bare in both sizes, then the burst with the sink down.
    import os
    import re

    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "sink_outage.py"), "--quick"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    for size in ("1 KB", "100 KB"):
        assert f"== body {size}" in result.stdout
    rows = re.findall(r"^  (bare|healthy|dead) +\d", result.stdout, re.MULTILINE)  # the latency tables' rows
    assert rows.count("healthy") == rows.count("dead") == rows.count("bare") == 2  # one table per size
    assert "== burst: 2000 requests" in result.stdout
    assert result.stdout.count("VERDICT ") == 2
    assert list(tmp_path.iterdir()) == []  # plugin, spool: all in a temporary directory, removed


def test_the_query_scale_benchmark_agrees_with_raw_duckdb_and_leaves_nothing_behind(tmp_path: Path) -> None:
    # A smoke run on 5,000 spans: obsml query and both raw DuckDB reads must count the same statuses.
    import os

    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "query_scale.py"), "--quick"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "== whole day: 5,000 spans, 2 rounds" in result.stdout
    assert "== one hour: 208 spans, 2 rounds" in result.stdout  # 5,000 over 24 hours: the first 8 hours get 209
    assert list(tmp_path.iterdir()) == []


def test_the_time_to_first_byte_benchmark_runs_both_servers_and_obsml_captures_their_requests() -> None:
    # A smoke run through real uvicorn and gunicorn subprocesses; no timing is asserted.
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "ttfb.py"), "--quick", "--pause", "0.002"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for server in ("uvicorn", "gunicorn"):
        assert f"== {server}: time to first byte" in result.stdout
    rows = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]  # the tables' rows
    assert rows.count("bare") == rows.count("obsml") == 2
    spans = [int(line.rsplit(" ", 1)[1]) for line in result.stdout.splitlines() if line.startswith("obsml spans")]
    assert len(spans) == 2 and 0 < spans[0] < spans[1]  # each server's obsml variant wrote its spans
