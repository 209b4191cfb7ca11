from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import read_spans

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_serves_the_example_and_summarises_what_the_store_holds(tmp_path: Path) -> None:
    store = tmp_path / "demo-store"
    result = subprocess.run(
        [sys.executable, "-m", "obsml.cli", "demo", "--store", str(store), "--requests", "12"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "requests captured" in result.stdout
    assert "!" not in "".join(line[:4] for line in result.stdout.splitlines())  # no mismatch lines
    spans = read_spans(store)
    routes = {span["attributes"].get("http.route") for span in spans}
    assert {"/score", "/score/stream"} <= routes
    assert any(span["status"]["code"] == "ERROR" for span in spans)
    assert any("obsml.request.body.uri" in span["attributes"] for span in spans)


def test_the_cli_without_a_command_prints_help_and_fails() -> None:
    result = subprocess.run([sys.executable, "-m", "obsml.cli"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "demo" in result.stdout + result.stderr
