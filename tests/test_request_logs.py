"""The scoring code's log lines and prints, under real uvicorn and gunicorn: in the store and at the collector."""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import read_spans
from otlp_receiver import OtlpReceiver, running_receiver
from servers import free_port, running_command, store_env

from obsml._request_logs import MAX_PRINT_LINE

MARKERS = [f"m{n:02d}" for n in range(20)]


def server_command(server: str, port: int) -> list[str]:
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "--port", str(port), "--log-level", "warning", "log_apps:asgi_app"]
    return [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "4",
            "--graceful-timeout", "30", "--log-level", "warning", "--no-control-socket", "log_apps:wsgi_app"]


def read_logs(store: Path) -> list[dict[str, Any]]:
    parts = sorted(store.glob("logs/*/*/*/*/*.jsonl"))
    return [json.loads(line) for part in parts for line in part.read_text().splitlines()]


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtlpReceiver]:
    for name in ("HEADERS", "LOGS_ENDPOINT", "TRACES_ENDPOINT", "COMPRESSION"):
        monkeypatch.delenv(f"OTEL_EXPORTER_OTLP_{name}", raising=False)
    with running_receiver() as receiver:
        yield receiver


def score_concurrently(url: str) -> None:
    def score(marker: str) -> None:
        response = httpx.get(f"{url}/score", params={"marker": marker}, headers={"x-correlation-id": marker},
                             timeout=30)
        assert response.json() == {"marker": marker}

    with ThreadPoolExecutor(len(MARKERS)) as pool:
        list(pool.map(score, MARKERS))
    assert httpx.get(f"{url}/shout", headers={"x-correlation-id": "shout"}, timeout=30).status_code == 200


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_each_requests_log_lines_and_prints_are_stored_and_exported_with_its_ids(
    server: str, store: Path, receiver: OtlpReceiver
) -> None:
    port = free_port()
    env = store_env(store, OBSML_EXPORTERS="jsonl,otlp", OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
                    OBSML_CAPTURE_PRINT="true")
    with running_command(server_command(server, port), port, store.parent / "server.log", env) as running:
        score_concurrently(running.url)
        assert running.stop() in (0, -signal.SIGTERM), running.log()[-3000:]  # uvicorn dies of the signal it handled
    output = running.log()
    assert '{"input": "m07", "output": 0.5}' in output  # prints still written through
    # A warning that no handler of the app takes is still printed (logging.lastResort), and not recorded.
    assert "loaded outside any request" in output and "from a thread of its own" in output

    spans = {span["attributes"]["obsml.correlation_id"]: span for span in read_spans(store)}
    stored = read_logs(store)
    received = receiver.wait_for_logs(len(stored))
    assert len(received) == len(stored) == 3 * len(MARKERS) + 2
    # Only the scoring code and its prints: nothing from obsml's, urllib3's loggers, other threads or start-up.
    assert {record["logger"] for record in stored} == {"scoring", "stdout"}
    assert "s3cret" not in json.dumps(stored) + json.dumps(received)  # a URL's token in a log message
    for marker in MARKERS:
        span = spans[marker]
        mine = [r for r in stored if r["attributes"]["obsml.correlation_id"] == marker]
        assert all(marker in json.dumps(r["body"]) for r in mine)  # never another request's line
        assert {(r["trace_id"], r["span_id"]) for r in mine} == {(span["trace_id"], span["span_id"])}
        info, error, printed = sorted(mine, key=lambda r: (r["logger"], r["severity_number"]))
        assert info["body"] == f"scoring {marker}" and info["severity_number"] == 9
        assert info["attributes"]["code.function.name"] == "score"
        assert info["attributes"]["obsml.service"] == "default"
        assert error["body"] == f"fell back for {marker} (https://features.local/v1?token=[REDACTED]&n=1)"
        assert error["severity_number"] == 17
        assert error["attributes"]["exception.type"] == "KeyError"
        assert error["attributes"]["exception.message"] == f"'{marker}'"
        assert "raise KeyError(marker)" in error["attributes"]["exception.stacktrace"]
        assert error["attributes"]["input"] == {"marker": marker, "rows": [1, 2]}
        assert printed["body"] == {"input": marker, "output": 0.5}  # JSON kept as structure
        assert printed["severity_text"] == "INFO"

        exported = [r for r in received if r["attributes"]["obsml.correlation_id"] == marker]
        assert {(r["trace_id"], r["span_id"]) for r in exported} == {(span["trace_id"], span["span_id"])}
        assert sorted(json.dumps(r["body"], sort_keys=True) for r in exported) == sorted(
            json.dumps(r["body"], sort_keys=True) for r in mine)
        exported_error = next(r for r in exported if r["severity_text"] == "ERROR")
        assert exported_error["attributes"]["exception.type"] == "KeyError"
        assert json.loads(exported_error["attributes"]["input"]) == {"marker": marker, "rows": [1, 2]}

    long_line, not_json = sorted((r for r in stored if r["attributes"]["obsml.correlation_id"] == "shout"),
                                 key=lambda r: len(r["body"]), reverse=True)
    assert long_line["body"] == "x" * 10_000 + "y" * (MAX_PRINT_LINE - 10_000)
    assert long_line["attributes"]["obsml.print.truncated_characters"] == 40_000 - MAX_PRINT_LINE
    assert not_json["body"] == "{not json"


@pytest.mark.parametrize(
    ("env", "spans"),
    [
        pytest.param({"OBSML_LOG_LEVEL": "off"}, len(MARKERS) + 1, id="log-level-off-print-capture-off"),
        pytest.param({"OBSML_SAMPLE_RATE": "0", "OBSML_CAPTURE_PRINT": "true"}, 0, id="sampled-out"),
    ],
)
def test_nothing_is_left_in_logs_when_off_or_sampled_out(store: Path, env: dict[str, str], spans: int) -> None:
    port = free_port()
    with running_command(server_command("uvicorn", port), port, store.parent / "server.log",
                         store_env(store, **env)) as running:
        score_concurrently(running.url)
        assert running.stop() in (0, -signal.SIGTERM), running.log()[-3000:]  # uvicorn dies of the signal it handled
    assert len(read_spans(store)) == spans
    assert not (store / "logs").exists()


def test_only_records_at_the_level_set_are_kept_and_a_bad_format_string_costs_nothing(store: Path) -> None:
    port = free_port()
    with running_command(server_command("uvicorn", port), port, store.parent / "server.log",
                         store_env(store, OBSML_LOG_LEVEL="error")) as running:
        httpx.get(f"{running.url}/score", params={"marker": "m1"}, headers={"x-correlation-id": "m1"}, timeout=30)
        httpx.get(f"{running.url}/bad-format", headers={"x-correlation-id": "bad"}, timeout=30)
        assert running.stop() in (0, -signal.SIGTERM), running.log()[-3000:]
    records = {record["attributes"]["obsml.correlation_id"]: record for record in read_logs(store)}
    assert len(read_logs(store)) == 2  # no INFO line, no print (capture off)
    assert records["m1"]["body"].startswith("fell back for m1 ") and records["m1"]["severity_text"] == "ERROR"
    assert records["bad"]["body"] == "bad %d format"
