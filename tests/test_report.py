"""``obsml report`` over stores written by the real middleware and Collector (tests/report_apps.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import drawn_on_a_terminal
from PIL import Image
from report_apps import reference_rows, write_store
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score

from obsml import modeldata
from obsml.cli import main


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("report")
    write_store(folder / "store")
    pd.DataFrame(reference_rows()).to_parquet(folder / "train.parquet")
    return folder


def report(store: Path, out: Path, *options: str) -> str:
    assert main(["report", "--store", str(store), "-o", str(out), *options]) == 0
    return out.read_text()


def section(document: str, title: str) -> str:
    """The HTML of one section, by its title."""
    match = re.search(rf"<h2>{re.escape(title)}</h2>(.*?)</section>", document, re.S)
    assert match, f"no section {title!r}"
    return match.group(1)


def test_the_report_has_every_section_with_plots_and_fetches_nothing(served: Path) -> None:
    document = report(served / "store", served / "report.html", "--reference", str(served / "train.parquet"))

    health = section(document, "Service health")
    assert "<td>RuntimeError</td><td>model not loaded</td><td class=\"n\">2</td>" in health
    assert re.search(r'<tr><td>2</td><td class="n">22</td>', health)  # version 2: 20 scored, 2 failed
    assert "<td>inputs.region</td>" in section(document, "Drift")
    sources = re.findall(r'(?:src|href)="([^"]*)"', document)
    assert sources and not [s for s in sources if "http" in s]
    assert not re.search(r"<(script|link)\b", document)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', document)
    assert len(images) >= 7  # health, 5 distributions, quality over time, label delay
    assert 30_000 < len(document) < 1_500_000


def test_quality_metrics_equal_scikit_learns_on_the_same_joined_rows(served: Path) -> None:
    document = report(served / "store", served / "quality.html", "--task", "classification")
    table = modeldata.joined(str(served / "store"), "credit")
    labelled = table[table["defaulted_labels"].notna()]
    truth = labelled["defaulted_labels"].astype(bool)
    predicted = labelled["defaulted_predictions"].astype(bool)
    expected = [
        accuracy_score(truth, predicted), precision_score(truth, predicted), recall_score(truth, predicted),
        roc_auc_score(truth, labelled["score"]),
    ]

    quality = section(document, "Quality with labels")

    cells = "".join(f'<td class="n">{value:.4g}</td>' for value in expected)
    assert f'<tr><td>all</td><td class="n">{len(labelled)}</td>{cells}</tr>' in quality
    assert "label defaulted_labels, prediction defaulted_predictions, score score" in quality
    assert "<h3>Label delay</h3>" in quality


def test_regression_quality_is_mae_and_rmse(served: Path) -> None:
    # The booleans scored as numbers: MAE is the error rate, RMSE its square root.
    document = report(served / "store", served / "regression.html", "--task", "regression")
    table = modeldata.joined(str(served / "store"), "credit")
    labelled = table[table["defaulted_labels"].notna()]
    errors = (labelled["defaulted_predictions"].astype(float) - labelled["defaulted_labels"].astype(float)).abs()

    quality = section(document, "Quality with labels")

    assert f'<td class="n">{errors.mean():.4g}</td><td class="n">{errors.pow(2).mean() ** 0.5:.4g}</td>' in quality


def test_an_empty_window_gives_a_clear_section_for_each_part(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    document = report(tmp_path / "store", tmp_path / "empty.html", "--reference", "14d..7d")

    assert "No request in this window" in section(document, "Service health")
    assert "No writer status in this window" in section(document, "Drops")
    assert "No outbound call in this window" in section(document, "Dependencies and error logs")
    assert "No model data in this window" in section(document, "Model data")
    assert "No labels in this window" in section(document, "Quality with labels")
    assert "No model data in this window" in section(document, "Drift")


def test_without_labels_or_a_reference_those_sections_say_so(tmp_path: Path) -> None:
    write_store(tmp_path / "store", labels=False)

    document = report(tmp_path / "store", tmp_path / "r.html")

    assert "No labels in this window" in section(document, "Quality with labels")
    assert "No reference: give --reference" in section(document, "Drift")
    assert "No reference given" in section(document, "Model data")
    assert "<td>inputs</td><td>income</td><td>numeric</td><td class=\"n\">800</td>" in section(document, "Model data")


def test_a_missing_extra_is_named_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)

    status = main(["report", "--store", str(tmp_path), "-o", str(tmp_path / "r.html")])

    assert status == 2
    assert capsys.readouterr().err == "obsml report: needs matplotlib: pip install 'obsml[report]'\n"
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium: make chromium installs it")
def test_the_report_opens_in_headless_chromium_and_shows_its_plots(served: Path, tmp_path: Path) -> None:
    page = served / "browser.html"
    report(served / "store", page, "--reference", str(served / "train.parquet"))
    shot = tmp_path / "shot.png"

    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--screenshot={shot}",
         "--window-size=1200,7000", page.as_uri()],
        env={**os.environ, "HOME": str(tmp_path)}, capture_output=True, timeout=120, check=True,
    )

    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)

    def near(colour: int) -> int:
        wanted = np.array([colour >> 16, (colour >> 8) & 0xFF, colour & 0xFF])
        return int((np.abs(pixels - wanted).sum(axis=1) < 30).sum())

    assert (pixels != 255).any(axis=1).sum() > len(pixels) // 100  # not blank
    # The distributions are drawn: the window's bars (#d9534f) beside the reference's (#9aa7b8).
    assert near(0xD9534F) > 1000 and near(0x9AA7B8) > 1000


def test_a_progress_bar_is_drawn_on_a_terminal_and_nothing_otherwise(served: Path, tmp_path: Path) -> None:
    command = [sys.executable, "-m", "obsml.cli", "report", "--store", str(served / "store"), "-o",
               str(tmp_path / "r.html")]
    piped = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    drawn = drawn_on_a_terminal(command)

    assert piped.stderr == "" and piped.stdout == f"obsml report: wrote {tmp_path / 'r.html'}\n"
    assert "obsml report: [" in drawn and "6/6 drift" in drawn


def test_with_several_models_the_report_says_which_it_shows_and_model_picks_another(tmp_path: Path) -> None:
    write_store(tmp_path / "store", model="credit")
    write_store(tmp_path / "store", model="fraud", labels=False, failures=0)

    chosen = report(tmp_path / "store", tmp_path / "chosen.html")
    fraud = report(tmp_path / "store", tmp_path / "fraud.html", "--model", "fraud")

    assert "2 models in this window; this report shows &#x27;credit&#x27;" in section(chosen, "Model data")
    assert "; model credit;" in chosen and "Quality with labels</h2><p class=\"note\">" in chosen
    assert "; model fraud;" in fraud and "No labelled row" in section(fraud, "Quality with labels")
    assert re.search(r'<tr><td>2</td><td class="n">20</td>', section(fraud, "Service health"))  # its requests only
