"""obsml's request logs as Application Insights items: the core's bridge, this plugin's exporter only.

The scoring app of obsml's own tests (tests/log_apps.py: INFO, an ERROR with an exception, a printed
JSON line) under a real uvicorn subprocess, the real Azure exporter posting to the ingestion stand-in.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from ingestion import Ingestion

CORE_TESTS = Path(__file__).resolve().parents[3] / "tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_and_score(tmp_path: Path, ingestion: Ingestion, **env: str) -> Path:
    """One request to log_apps' /score under uvicorn, stopped with SIGTERM (obsml flushes at exit)."""
    port, store = free_port(), tmp_path / "store"
    command = [sys.executable, "-m", "uvicorn", "--port", str(port), "--log-level", "warning", "log_apps:asgi_app"]
    environment = {**os.environ, "OBSML_STORE": str(store), "OBSML_EXPORTERS": "jsonl,azure_monitor",
                   "APPLICATIONINSIGHTS_CONNECTION_STRING": ingestion.connection_string,
                   "OBSML_AZURE_MONITOR_STORAGE_DIR": str(tmp_path / "offline"), "OBSML_CAPTURE_PRINT": "true", **env}
    with open(tmp_path / "server.log", "wb") as log:
        process = subprocess.Popen(command, cwd=CORE_TESTS, env=environment, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        response = httpx.get(f"http://127.0.0.1:{port}/score", params={"marker": "m1"},
                             headers={"x-correlation-id": "m1"}, timeout=30)
        assert response.status_code == 200
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    return store


def stored(store: Path, folder: str) -> list[dict[str, Any]]:
    parts = sorted(store.glob(f"{folder}/*/*/*/*/*.jsonl"))
    return [json.loads(line) for part in parts for line in part.read_text().splitlines()]


def test_log_lines_and_a_printed_json_line_arrive_as_items_of_their_request(
    tmp_path: Path, ingestion: Ingestion
) -> None:
    store = serve_and_score(tmp_path, ingestion)
    (span,) = stored(store, "traces")
    messages = ingestion.wait_for(lambda: len(found := ingestion.of_type("MessageData")) >= 2 and found)
    (exception,) = ingestion.wait_for(lambda: ingestion.of_type("ExceptionData"))
    for item in [*messages, exception]:
        assert item["tags"]["ai.operation.id"] == span["trace_id"]
        assert item["tags"]["ai.operation.parentId"] == span["span_id"]
        assert item["data"]["baseData"]["properties"]["obsml.correlation_id"] == "m1"
    by_message = {item["data"]["baseData"]["message"]: item for item in messages}
    assert set(by_message) == {"scoring m1", json.dumps({"input": "m1", "output": 0.5})}  # the structure, as JSON
    assert by_message["scoring m1"]["data"]["baseData"]["severityLevel"] == 1  # Information
    (details,) = exception["data"]["baseData"]["exceptions"]
    assert details["typeName"] == "KeyError"
    assert details["message"] == "fell back for m1 (https://features.local/v1?token=[REDACTED]&n=1)"
    assert json.loads(exception["data"]["baseData"]["properties"]["input"]) == {"marker": "m1", "rows": [1, 2]}
    assert len(stored(store, "logs")) == 3  # the same records in the store


def test_the_plugins_own_level_keeps_the_lower_ones_out_of_application_insights_only(
    tmp_path: Path, ingestion: Ingestion
) -> None:
    store = serve_and_score(tmp_path, ingestion, OBSML_AZURE_MONITOR_LOG_LEVEL="ERROR")
    (exception,) = ingestion.wait_for(lambda: ingestion.of_type("ExceptionData"))
    assert exception["data"]["baseData"]["properties"]["obsml.correlation_id"] == "m1"
    assert ingestion.wait_for(lambda: ingestion.of_type("RequestData"))
    assert not ingestion.of_type("MessageData")  # INFO and the printed line (INFO) stay out
    assert len(stored(store, "logs")) == 3  # the store keeps them all (OBSML_LOG_LEVEL=info)


def test_with_the_plugins_level_off_nothing_but_requests_arrive(tmp_path: Path, ingestion: Ingestion) -> None:
    store = serve_and_score(tmp_path, ingestion, OBSML_AZURE_MONITOR_LOG_LEVEL="off")
    assert ingestion.wait_for(lambda: ingestion.of_type("RequestData"))
    assert not ingestion.of_type("MessageData") and not ingestion.of_type("ExceptionData")
    assert len(stored(store, "logs")) == 3
