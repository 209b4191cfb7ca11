from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from obsml import ConfigError, ObsmlMiddleware, PluginImportError, Settings
from obsml._registry import _INSTALL_HINTS


async def app(scope: object, receive: object, send: object) -> None:
    return None


def test_keyword_arguments_win_over_the_environment_which_wins_over_defaults() -> None:
    env = {"OBSML_INLINE_LIMIT": "1000", "OBSML_SAMPLE_RATE": "0.25", "OBSML_EXPORTERS": "console, jsonl"}
    settings = Settings.load(env, inline_limit=10)
    assert (settings.inline_limit, settings.sample_rate, settings.exporters) == (10, 0.25, ("console", "jsonl"))
    assert Settings.load({}).inline_limit == 65536


def test_redact_query_is_a_comma_list_of_keys_compared_in_lower_case() -> None:
    assert Settings.load({"OBSML_REDACT_QUERY": " Team_Secret , x-sas,"}).redact_query == ("team_secret", "x-sas")
    assert Settings.load({}, redact_query=["SAS"]).redact_query == ("sas",)


@pytest.mark.parametrize(
    ("env", "options", "message"),
    [
        pytest.param(
            {"OBSML_INLINE_LIMIT": "abc"}, {}, "OBSML_INLINE_LIMIT='abc' is not valid: expected an integer", id="int"
        ),
        pytest.param(
            {"OBSML_SAMPLE_RATE": "2"}, {}, "OBSML_SAMPLE_RATE='2' is not valid: expected a number from 0 to 1", id="r"
        ),
        pytest.param({"OBSML_SAMPLE_RATE": "nan"}, {}, "OBSML_SAMPLE_RATE", id="rate-nan"),
        pytest.param({}, {"sample_rate": -0.1}, "sample_rate=-0.1 is not valid", id="rate-keyword"),
        pytest.param({"OBSML_ENABLED": "maybe"}, {}, "expected true or false", id="enabled"),
        pytest.param({}, {"model": "../etc"}, "model='../etc' is not valid", id="model-path"),
        pytest.param({}, {"version": ".."}, "version='..' is not valid", id="version-dots"),
        pytest.param({"OBSML_CORRELATION_HEADERS": ""}, {}, "one or more HTTP header names", id="no-headers"),
        pytest.param({"OBSML_REDACT_HEADERS": "x-bad header"}, {}, "OBSML_REDACT_HEADERS", id="header-space"),
        pytest.param({"OBSML_REDACT_QUERY": "sig,a=b"}, {}, "OBSML_REDACT_QUERY='sig,a=b'", id="query-key"),
        pytest.param({}, {"inline_limt": 5}, "unknown obsml setting(s) inline_limt", id="typo"),
        pytest.param({"OBSML_EXPORTERS": "Jsonl"}, {}, "OBSML_EXPORTERS='Jsonl' is not valid", id="exporter-case"),
    ],
)
def test_a_bad_setting_fails_with_its_name_and_the_accepted_values(
    env: dict[str, str], options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.load(env, **options)
    assert message in str(caught.value)


def test_an_unknown_exporter_fails_at_start_up_and_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(_INSTALL_HINTS, "example_backend", "pip install obsml-example-backend")
    expected = (
        r"unknown exporter 'example_backend' \(available: [^)]*console, jsonl[^)]*otlp[^)]*\)"
        r".*obsml-example-backend"
    )
    with pytest.raises(PluginImportError, match=expected):
        ObsmlMiddleware(app, exporters="jsonl,example_backend", store="memory://x")
    with pytest.raises(PluginImportError, match=r"entry-point group 'obsml\.exporters'"):
        ObsmlMiddleware(app, exporters="nosuch", store="memory://x")


def test_the_settings_repr_never_shows_the_store_url() -> None:
    settings = Settings.load({}, store="abfs://models?sig=CANARY-sas")
    assert "CANARY" not in repr(settings)
    with pytest.raises(ConfigError) as caught:
        Settings.load({"OBSML_STORE": "abfs://c\x01?sig=CANARY-sas"})
    assert "CANARY" not in str(caught.value)


def test_uvicorn_refuses_to_start_an_app_with_a_bad_setting(tmp_path: Path) -> None:
    env = {**os.environ, "OBSML_STORE": str(tmp_path / "store"), "OBSML_INLINE_LIMIT": "abc"}
    tests = Path(__file__).parent
    result = subprocess.run(
        [sys.executable, "-m", "uvicorn", "apps:app", "--app-dir", str(tests), "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "OBSML_INLINE_LIMIT='abc' is not valid: expected an integer number of bytes >= 0" in result.stderr
    assert "Application startup failed" in result.stderr


def test_a_store_nothing_handles_says_what_to_install_without_echoing_the_url() -> None:
    with pytest.raises(ConfigError) as caught:
        ObsmlMiddleware(lambda *a: None, store="nosuch://container/x?sig=CANARY-sas-41")
    message = str(caught.value)
    assert "nosuch://" in message and "obsml.sinks" in message
    assert "CANARY" not in message
