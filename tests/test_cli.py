from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import body_bytes, read_spans

from obsml import modeldata

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 100


def joined_table_printed(out: str) -> list[dict[str, str]]:
    """The rows of the table the demo printed under "Model data", by column name."""
    lines = out.split("Model data (", 1)[1].splitlines()
    start = next(n for n, line in enumerate(lines) if line.split()[:1] == ["correlation_id"])
    names = lines[start].split()
    return [dict(zip(names, line.split(), strict=True)) for line in lines[start + 1:] if line.strip()]


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

    # The model data: the head of inputs ⋈ predictions ⋈ labels, each label beside its own input row.
    table_lines = result.stdout.split("Model data (", 1)[1].splitlines()[2:]
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
