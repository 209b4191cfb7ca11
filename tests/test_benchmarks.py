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


def test_the_redaction_benchmark_times_every_policy_at_both_sizes() -> None:
    # A smoke run: the writer-side cost of body redaction (issue 15); no timing is asserted.
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "redact_cost.py"), "--rounds", "20"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    for size in ("1 KB", "100 KB"):
        assert result.stdout.count(f"| {size} |") == 8  # four policies, with and without secrets
    assert "private temporary file" in result.stdout


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


def test_the_writer_cost_benchmark_reports_every_case_against_the_floor(tmp_path: Path) -> None:
    # A smoke run (issue 16): writer CPU per span and per body, the floor, the GIL wait; nothing asserted on time.
    import os

    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "writer_cost.py"), "--quick"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for case in ("1 KB JSON, default redaction", "1 KB JSON, redact_fields=none", "100 KB octet-stream",
                 "100 KB JSON, default redaction", "floor: sha256 + plain file write"):
        assert f"| {case} |" in result.stdout
    assert "span serialization alone: ReadableSpan + json.dumps (old)" in result.stdout
    assert "GIL wait of a serving thread" in result.stdout
    assert list(tmp_path.iterdir()) == []
