"""A BentoML service under obsml (obsml.integrations.bentoml), served as the README's recipe says."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("bentoml", reason="make test-integrations runs this, in its own venv")

import httpx
from model_servers import free_port, running_command, spans_by_correlation_id

pytestmark = pytest.mark.slow

# The README's recipe ("Model servers"): the service's module, instrumented after the class.
SERVICE_PY = textwrap.dedent('''
    import bentoml
    from obsml.integrations import bentoml as obsml_bentoml


    @bentoml.service
    class Adder:
        @bentoml.api
        def predict(self, rows: list[list[float]]) -> list[float]:
            if not rows:
                raise ValueError("no rows to score")
            return [sum(row) for row in rows]


    obsml_bentoml.instrument(Adder)
''')


def test_every_request_is_one_span_in_bentomls_trace_and_the_store_does_not_follow_the_working_dir(
    tmp_path: Path,
) -> None:
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / "service.py").write_text(SERVICE_PY)
    port = free_port()
    env = {"BENTOML_HOME": str(tmp_path / "bentoml-home"), "OBSML_FLUSH_INTERVAL": "0.1", "OBSML_STRICT": "true",
           "BENTOML_DO_NOT_TRACK": "true", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env = {**{k: v for k, v in os.environ.items() if k != "OBSML_STORE"}, **env}
    argv = ["bentoml", "serve", "service:Adder", "--working-dir", "project", "--port", str(port)]
    asked: dict[str, object] = {"one": [[1, 2]], "two": [[3, 4], [5, 6]], "empty": [], "not-rows": "x", "three": [[7]]}
    answers: dict[str, httpx.Response] = {}
    with running_command(argv, port, tmp_path / "bentoml.log", env, cwd=tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for correlation_id, rows in asked.items():
                answers[correlation_id] = client.post(
                    "/predict", json={"rows": rows}, headers={"x-correlation-id": correlation_id}
                )
        assert server.stop() in (0, -signal.SIGTERM), server.log()

    assert {name: answer.status_code for name, answer in answers.items()} == {
        **dict.fromkeys(asked, 200), "empty": 500, "not-rows": 400,
    }
    assert answers["two"].json() == [7, 11]
    assert not (tmp_path / "project" / "obsml-data").exists()
    spans = spans_by_correlation_id(tmp_path / "bentoml-home" / "obsml-data")
    assert sorted(spans) == sorted(asked)
    for correlation_id, rows in asked.items():
        span, answer = spans[correlation_id], answers[correlation_id]
        attributes = span["attributes"]
        assert attributes["http.response.status_code"] == answer.status_code
        assert json.loads(attributes["obsml.request.body"]) == {"rows": rows}
        assert attributes["obsml.response.body"] == answer.text
        # BentoML's span for the request (its id in X-BentoML-Request-ID) is obsml's parent.
        assert span["parent_span_id"] == answer.headers["x-bentoml-request-id"]
    (event,) = spans["empty"]["events"]  # BentoML answered it with a 500 of its own
    assert event["attributes"]["exception.type"] == "ValueError"
    assert event["attributes"]["exception.message"] == "no rows to score"
    assert [spans[name]["events"] for name in asked if name != "empty"] == [[]] * (len(asked) - 1)  # a 400 too
