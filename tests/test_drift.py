"""``obsml drift`` over a store written by the real middleware and Collector (tests/report_apps.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from report_apps import reference_rows, write_store

from obsml.cli import main


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store whose income moved up by 1.5 standard deviations and whose region has a new value, west."""
    folder = tmp_path_factory.mktemp("drift")
    write_store(folder / "store")
    pd.DataFrame(reference_rows()).to_parquet(folder / "train.parquet")
    pd.DataFrame(reference_rows()).to_csv(folder / "train.csv", index=False)
    return folder


def drift(folder: Path, capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, str, str]:
    status = main(["drift", "--store", str(folder / "store"), *options])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("reference", [pytest.param("train.parquet", id="parquet"),
                                       pytest.param("train.csv", id="csv")])
def test_a_shifted_feature_and_a_new_category_are_flagged_and_an_unshifted_one_is_not(
    shifted: Path, capsys: pytest.CaptureFixture[str], reference: str
) -> None:
    status, out, _ = drift(shifted, capsys, "--reference", str(shifted / reference), "--format", "json")

    rows = {row["feature"]: row for row in map(json.loads, out.splitlines())}
    assert status == 1
    assert set(rows) == {"income", "age", "region"}  # the predictions are not in the training data
    income, age, region = rows["income"], rows["age"], rows["region"]
    assert (income["kind"], income["test"], income["drifted"]) == ("numeric", "ks", True)
    assert income["psi"] > 0.2 and income["p_value"] < 0.01  # PSI and KS both
    assert (age["kind"], age["drifted"]) == ("numeric", False)
    assert age["psi"] < 0.1 and age["p_value"] > 0.05  # PSI and KS both
    assert (region["kind"], region["test"], region["drifted"]) == ("categorical", "chi2", True)
    assert region["p_value"] < 0.01 and region["psi"] > 0.2
    assert list(rows) == ["region", "income", "age"]  # by severity: drifted first, largest PSI first
    assert set(income) == {"feature", "identifier", "kind", "psi", "test", "statistic", "p_value", "drifted",
                           "window_rows", "reference_rows"}
    assert income["window_rows"] == 800 and income["reference_rows"] == 3000


def test_the_window_against_itself_flags_nothing_and_exits_0(shifted: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = drift(shifted, capsys, "--reference", "1h..0s")

    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["FEATURE", "KIND", "PSI", "TEST", "STATISTIC", "P-VALUE", "DRIFTED"]
    # every column of inputs and predictions, compared with the same rows: nothing moved
    assert sorted(line.split()[0] for line in lines[1:]) == [
        "inputs.age", "inputs.income", "inputs.region", "predictions.defaulted", "predictions.score"]
    assert all(line.split()[-1] == "no" for line in lines[1:])


def test_a_higher_psi_threshold_and_a_lower_p_threshold_let_a_small_shift_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_store(tmp_path / "store", shift=1_000, new_region=False)
    pd.DataFrame(reference_rows()).to_parquet(tmp_path / "train.parquet")
    reference = ["--reference", str(tmp_path / "train.parquet"), "--format", "json"]

    strict, _, _ = drift(tmp_path, capsys, *reference, "--threshold-psi", "0.001")
    lenient, out, _ = drift(tmp_path, capsys, *reference, "--threshold-psi", "5", "--threshold-p", "1e-12")

    assert (strict, lenient) == (1, 0)
    assert not any(json.loads(line)["drifted"] for line in out.splitlines())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(["--reference", "nowhere.parquet"], "no such file: nowhere.parquet", id="missing-file"),
        pytest.param(["--reference", "train.txt"], "neither a period", id="unknown-suffix"),
        pytest.param(["--reference", "1h..2h"], "START before END", id="backwards-period"),
    ],
)
def test_a_bad_reference_is_a_usage_error_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    status, _, err = drift(tmp_path, capsys, *options)

    assert status == 2 and message in err and len(err.splitlines()) == 1


def test_without_a_reference_argparse_refuses_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = drift(tmp_path, capsys)

    assert status == 2 and "--reference" in err


def test_a_window_without_model_data_flags_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pd.DataFrame(reference_rows()).to_parquet(tmp_path / "train.parquet")
    (tmp_path / "store").mkdir()

    status, out, err = drift(tmp_path, capsys, "--reference", str(tmp_path / "train.parquet"))

    assert (status, out) == (0, "")
    assert "no model data to compare in this window" in err


def test_a_reference_period_without_rows_is_an_error_not_a_pass(
    shifted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = drift(shifted, capsys, "--reference", "14d..7d")

    assert (status, out) == (2, "")
    assert err == "obsml drift: the reference 14d..7d has no rows of the window's columns\n"
