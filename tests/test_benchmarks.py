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


def test_the_report_scale_benchmark_writes_a_report_and_leaves_nothing_behind(tmp_path: Path) -> None:
    # A smoke run on 20,000 spans and rows (issue 19): the report is written; nothing asserted on time.
    import json
    import os

    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "report_scale.py"), "--quick"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    measured = json.loads(result.stdout.splitlines()[-1])
    assert (measured["spans"], measured["rows"]) == (20_000, 20_000) and measured["report_kb"] > 50
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


def test_the_log_cost_benchmark_reports_every_case(tmp_path: Path) -> None:
    # A smoke run (issue 18): the request-path cost of a log line and a print; nothing asserted on time.
    import os

    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "log_cost.py"), "--quick"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for case in ("request, no log line, bridge off", "request, no log line, bridge on",
                 "logger.info, no handler (app's own cost)", "logger.info, bridge on", "print(), captured"):
        assert f"| {case} |" in result.stdout
    assert "bridge cost on the request path: per request with no log line" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_make_bench_quick_writes_the_json_the_table_and_the_plot_with_every_number_in_them(tmp_path: Path) -> None:
    # The whole `make bench` harness as a smoke run: files and numbers present, their values never asserted.
    import json
    import math
    import os

    out, scratch = tmp_path / "results", tmp_path / "scratch"
    scratch.mkdir()
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench.py"), "--quick", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [written] = out.glob("*.json")
    data = json.loads(written.read_text())
    assert data["machine"]["cpu_model"] and data["machine"]["cores"] >= 1
    assert len(data["machine"]["load_average_start"]) == len(data["machine"]["load_average_end"]) == 3
    for package in ("python", "obsml", "starlette", "uvicorn", "gunicorn", "opentelemetry-sdk", "duckdb", "wrk"):
        assert data["versions"][package]

    def numbers(row: dict[str, float], *keys: str) -> bool:
        return all(math.isfinite(row[key]) for key in keys)

    steps = data["steps"]
    assert {name: step["exit_status"] for name, step in steps.items()} == dict.fromkeys(
        ("asgi", "wsgi", "server", "sink_outage", "collector", "logs", "dependencies"), 0
    )
    asgi, wsgi = steps["asgi"]["results"], steps["wsgi"]["results"]
    sizes = ["200 B", "1 KB", "100 KB", "1 MB"]
    assert list(asgi["sizes"]) == [cell["label"] for cell in wsgi["cases"].values()] == sizes
    for cell in asgi["sizes"].values():
        assert set(cell["variants"]) | set(asgi["peers_missing"]) == {"bare", "obsml", "otel", "sentry", "logfire"}
        assert all(numbers(row, "added_min_us", "added_median_us", "added_e2e_us") for row in cell["variants"].values())
    for cell in wsgi["cases"].values():
        assert list(cell["variants"]) == ["bare", "obsml", "otel"]
        assert all(numbers(row, "added_min_us", "added_median_us", "added_e2e_us") for row in cell["variants"].values())
    server = steps["server"]["results"]
    assert list(server["servers"]) == ["uvicorn-httptools", "uvicorn-h11", "gunicorn-sync", "gunicorn-gthread"]
    for kind, cells in server["servers"].items():
        variants = cells["1 KB"]["variants"]
        peers = {"sentry", "logfire", "passthrough", "obsml-unsampled"} if kind == "uvicorn-httptools" else set()
        assert set(variants) == {"bare", "obsml", "otel"} | peers
        assert all(numbers(row, "rps_ratio", "p99_ratio", "cpu_us_per_request") for row in variants.values())
    for cell in server["ttfb"].values():
        assert all(numbers(row, "ttfb_median_ms", "ttfb_p99_ms") for row in cell["variants"].values())
    soak = server["soak"]["uvicorn-httptools"]  # RSS under sustained load, sampled while wrk runs
    assert len(soak["samples"]) >= 2 and numbers(soak, "rps", "rss_end_mib", "growth_after_warmup_mib")
    assert soak["errors"] == 0
    assert len(steps["sink_outage"]["verdicts"]) == 2 and len(steps["collector"]["rows"]) == 6

    table = written.with_suffix(".md").read_text()
    for needle in ("| 1 MB |", "| gunicorn-gthread | 1 KB | obsml |", "Time to first byte", "Versions: ", "VERDICT",
                   "Memory under sustained load", "RSS flat over",
                   "per log line", "one requests call, obsml's instrumentation"):
        assert needle.lower() in table.lower()
    assert f"]({written.with_suffix('.png').name})" in table
    assert written.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert list(scratch.iterdir()) == []  # servers' stores, wrk scripts: all in temporary directories, removed


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


def test_the_dependency_cost_benchmark_runs_every_variant_and_obsml_records_every_call() -> None:
    # A smoke run (issue 18): it asserts itself that obsml's variant recorded each call; no timing is asserted.
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "dependency_cost.py"), "--quick"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("no outbound call,") == 2
    assert result.stdout.count("one requests call,") == 3
