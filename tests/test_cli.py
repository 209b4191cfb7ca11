from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import body_bytes, read_spans

from obsml import modeldata

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 100


def joined_table_printed(out: str) -> list[dict[str, str]]:
    """The rows of the table the demo printed under "Model data", by column name."""
    lines = out.split("Model data (", 1)[1].splitlines()
    start = next(n for n, line in enumerate(lines) if line.split()[:1] == ["correlation_id"])
    names = lines[start].split()
    table = itertools.takewhile(str.strip, lines[start + 1:])  # the table ends at the first blank line
    return [dict(zip(names, line.split(), strict=True)) for line in table]


def test_the_demo_serves_the_example_and_summarises_what_the_store_holds(tmp_path: Path) -> None:
    store = tmp_path / "demo-store"
    result = subprocess.run(
        [sys.executable, "-m", "obsml.cli", "demo", "--store", str(store), "--requests", "12"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, env={**os.environ, "COLUMNS": str(WIDTH)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "requests captured" in result.stdout
    assert "!" not in "".join(line[:4] for line in result.stdout.splitlines())  # no mismatch lines
    spans = read_spans(store)
    routes = {span["attributes"].get("http.route") for span in spans}
    assert {"/score", "/score/stream"} <= routes
    assert any(span["status"]["code"] == "ERROR" for span in spans)
    assert any("obsml.request.body.uri" in span["attributes"] for span in spans)
    # Then an HTML report of the run, beside the store.
    report = tmp_path / "obsml-report.html"
    assert f"\n  {report}\n" in result.stdout and "Quality with labels" in report.read_text()
    # It ends with three commands to copy; the query one reads what the demo just wrote.
    *_, logs, query, timeline = result.stdout.splitlines()
    assert logs == f"  obsml logs --errors --store {shlex.quote(str(store))}"
    command = shlex.split(query)
    assert command[:2] == ["obsml", "query"] and command[-2:] == ["--store", str(store)]
    ran = subprocess.run([sys.executable, "-m", "obsml.cli", *command[1:]], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert ran.returncode == 0, ran.stderr
    by_route = Counter({(line.split()[0], line.split()[1]): int(line.split()[2])
                        for line in ran.stdout.splitlines()[2:-1]})
    assert by_route == Counter((span["attributes"].get("http.route"),
                                str(span["attributes"].get("http.response.status_code"))) for span in spans)
    # The logs one lists the failures the demo sent, one line each, newest first.
    listed = subprocess.run([sys.executable, "-m", "obsml.cli", *shlex.split(logs)[1:]], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    failed = [span for span in spans if span["status"]["code"] == "ERROR"
              or span["attributes"].get("http.response.status_code", 0) >= 500]
    lines = listed.stdout.splitlines()
    assert len(lines) == len(failed) and [line.split()[0] for line in lines] == sorted(
        (line.split()[0] for line in lines), reverse=True)
    for span in failed:
        [line] = [line for line in lines if f" {span['attributes']['obsml.correlation_id']} " in line]
        assert all(event["attributes"]["exception.type"] in line for event in span["events"][:1])

    # The timeline one shows an answered request and the scoring code's log line under it.
    shown = subprocess.run([sys.executable, "-m", "obsml.cli", *shlex.split(timeline)[1:]], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert shown.returncode == 0, shown.stderr
    request, *entries = shown.stdout.splitlines()
    assert " 200 " in request and shlex.split(timeline)[3] in request
    assert len(entries) == 1 and "INFO" in entries[0] and "credit: scored " in entries[0], shown.stdout

    # The model data: the head of inputs ⋈ predictions ⋈ labels, each label beside its own input row.
    table_lines = list(itertools.takewhile(str.strip, result.stdout.split("Model data (", 1)[1].splitlines()[2:]))
    assert table_lines and all(len(line) <= WIDTH for line in table_lines), result.stdout
    printed = joined_table_printed(result.stdout)
    assert len(printed) == 12 and {"row", "income", "decision", "defaulted"} <= set(printed[0]), result.stdout
    inputs = modeldata.read(str(store), "best_model", "inputs").set_index(["correlation_id", "row"])
    labels = modeldata.read(str(store), "best_model", "labels").set_index(["correlation_id", "row"])
    sent = {span["attributes"]["obsml.correlation_id"]: span for span in spans}
    for line in printed:
        key = (line["correlation_id"], int(line["row"]))
        rows_sent = json.loads(body_bytes(sent[key[0]], "request"))["rows"]
        assert float(line["income"]) == inputs.loc[key, "income"] == rows_sent[key[1]]["income"]
        label = str(labels.loc[key, "defaulted"]) if key in labels.index else "-"
        assert line["defaulted"] == label, (line, label)
    assert {line["defaulted"] for line in printed} >= {"-", "False"}  # labels for some requests only


def test_the_wsgi_demo_serves_the_flask_example_from_two_gunicorn_workers(tmp_path: Path) -> None:
    store = tmp_path / "demo-store"
    result = subprocess.run(
        [sys.executable, "-m", "obsml.cli", "demo", "--wsgi", "--store", str(store), "--requests", "20"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "examples.flask_credit.app:app under gunicorn (2 workers)" in out
    assert "!" not in "".join(line[:4] for line in out.splitlines())  # no mismatch lines
    assert re.search(r"requests captured +21 ", out), out  # 20 sent + 1 health check
    assert re.search(r"failures +2 +\(status >= 500 or ERROR; 2 bad-input requests sent\)", out), out
    # Each worker wrote its own part files (named <pid>-<hex>-<seq>.jsonl); 20 sequential requests
    # all land on one worker only very rarely (the two workers race for each new connection).
    per_pid = {pid: int(n) for pid, n in re.findall(r"pid (\d+): (\d+) spans", out)}
    assert re.search(r"server processes +2 ", out) and len(per_pid) == 2, out
    assert sum(per_pid.values()) == 21
    assert {part.name.split("-")[0] for part in store.glob("traces/*/*/*/*/*.jsonl")} == set(per_pid)
    spans = read_spans(store)
    assert {"/score", "/score/stream"} <= {span["attributes"].get("http.route") for span in spans}
    failed = [span for span in spans if span["status"]["code"] == "ERROR"]
    assert [event["attributes"]["exception.type"] for span in failed for event in span["events"]] == ["ValueError"] * 2
    assert re.search(r"(\d+) input rows of 18 scored requests, \1 with their prediction", out), out


def test_the_cli_without_a_command_prints_help_and_fails() -> None:
    result = subprocess.run([sys.executable, "-m", "obsml.cli"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "demo" in result.stdout + result.stderr


def test_the_command_line_starts_without_duckdb_pandas_fsspec_or_opentelemetry() -> None:
    # `obsml --help` stays quick: the commands import what they need when they run.
    heavy = ("duckdb", "pandas", "pyarrow", "fsspec", "adlfs", "opentelemetry.sdk")
    script = ("import sys; from obsml.cli import build_parser; build_parser(); "
              f"print([module for module in {heavy!r} if module in sys.modules])")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("command", [
    ["retention", "--older-than", "30d"], ["compact"], ["export", "{tmp}/copy"],
    ["query", "select 1"], ["logs"], ["status"], ["report", "-o", "{tmp}/report.html"],
])
def test_a_mistyped_store_is_one_line_and_exit_2_not_an_empty_store(tmp_path: Path, command: list[str]) -> None:
    from obsml.cli import main

    argv = [part.format(tmp=tmp_path) for part in command] + ["--store", str(tmp_path / "obsml-dta")]
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        code = main(argv)
    assert (code, out.getvalue()) == (2, "")
    assert err.getvalue().endswith(f"cannot read {tmp_path / 'obsml-dta'}: no store there\n")
    assert err.getvalue().count("\n") == 1
    assert sorted(os.listdir(tmp_path)) == []  # nothing made: neither the store nor the copy
