"""Azure ML's inference server (azmlinfsrv) under obsml, started as the README's recipe says."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("azureml_inference_server_http", reason="make test-integrations runs this, in its own venv")

import httpx
from model_servers import free_port, running_command, spans_by_correlation_id, store_env

pytestmark = pytest.mark.slow

# The README's recipe ("Model servers"), run as it is written.
RECIPE = 'GUNICORN_CMD_ARGS="-c python:obsml.integrations.azureml" azmlinfsrv --entry_script score.py'

SCORE_PY = textwrap.dedent('''
    import json

    def init():
        pass

    def run(raw_data):
        rows = json.loads(raw_data)["data"]
        if not rows:
            raise ValueError("no rows to score")
        return {"predictions": [sum(row) for row in rows]}
''')


def test_every_scoring_request_is_one_span_with_the_ids_the_server_answers(tmp_path: Path) -> None:
    (tmp_path / "score.py").write_text(SCORE_PY)
    store = tmp_path / "store"
    port = free_port()
    env = store_env(store, OBSML_STRICT="true", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    argv = ["bash", "-c", f"{RECIPE} --port {port}"]  # bash runs a lone command in its place: signals reach it
    asked = {  # the header a client sends, if any -> rows to score
        ("x-request-id", "scored-1"): [[1, 2]],
        ("x-request-id", "scored-2"): [[3, 4], [5, 6]],
        ("x-ms-client-request-id", "client-3"): [[7, 8]],
        ("x-request-id", "fails-4"): [],
        None: [[9, 10]],
    }
    answers: list[httpx.Response] = []
    with running_command(argv, port, tmp_path / "azmlinfsrv.log", env, cwd=tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for header, rows in asked.items():
                answers.append(client.post("/score", json={"data": rows}, headers=dict([header]) if header else {}))
        assert server.stop() == 0, server.log()

    assert [answer.status_code for answer in answers] == [200, 200, 200, 500, 200]
    spans = spans_by_correlation_id(store)
    assert len(spans) == len(asked)
    for (header, rows), answer in zip(asked.items(), answers, strict=True):
        correlation_id = answer.headers["x-correlation-id"]
        # The span, obsml's header and the server's own request id agree, whoever made the id up.
        assert answer.headers["x-request-id"] == correlation_id
        if header is not None:
            assert correlation_id == header[1]
        span = spans[correlation_id]
        attributes = span["attributes"]
        assert attributes["http.response.status_code"] == answer.status_code
        assert json.loads(attributes["obsml.request.body"]) == {"data": rows}
        assert attributes["obsml.response.body"] == answer.text
        if answer.status_code == 500:
            assert span["status"]["code"] == "ERROR"
            (event,) = span["events"]
            assert event["attributes"]["exception.type"] == "ValueError"
            assert event["attributes"]["exception.message"] == "no rows to score"
        else:
            assert span["events"] == []
    assert answers[2].headers["x-ms-client-request-id"] == "client-3"
