"""The filter on obsml's logger (obsml/_secrets.py): no credential and no raw control character
leaves in a line or a traceback obsml logs."""

from __future__ import annotations

import pytest

from obsml._stats import logger

FORGED = "[CRITICAL] forged: every model deleted"


def test_a_logged_traceback_keeps_its_frames_on_their_lines_and_each_exception_text_on_one(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "CANARY-account-key-77aa")
    try:
        try:
            raise KeyError(f"column\r\n{FORGED}\x1b[31m")
        except KeyError as exc:
            raise ValueError(f"key CANARY-account-key-77aa\n{FORGED}\u2028") from exc
    except ValueError:
        logger.error("obsml failed on %s", f"a name\n{FORGED}", exc_info=True)
    (record,) = caplog.records
    text = caplog.text
    assert record.getMessage() == f"obsml failed on a name\\n{FORGED}"
    assert not any(line.startswith(FORGED) for line in text.splitlines())
    assert "\x1b" not in text and "\r" not in text and "\u2028" not in text
    assert "CANARY-account-key-77aa" not in text
    assert f"ValueError: key [REDACTED]\\n{FORGED}\\u2028" in text.splitlines()
    assert "The above exception was the direct cause of the following exception:" in text.splitlines()
    assert sum(line.startswith("Traceback (most recent call last):") for line in text.splitlines()) == 2
