"""KServe's ModelServer with two workers under obsml (obsml.integrations.kserve), as the README says."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("kserve", reason="make test-integrations runs this, in its own venv")

import httpx
from model_servers import free_port, running_command, spans_by_correlation_id, store_env

pytestmark = pytest.mark.slow

# The README's recipe ("Model servers"): the model's script, instrumented at its top.
MODEL_PY = textwrap.dedent('''
    import kserve
    from obsml.integrations import kserve as obsml_kserve

    obsml_kserve.instrument()


    class Adder(kserve.Model):
        def __init__(self):
            super().__init__("adder")
            self.ready = True

        def predict(self, payload, headers=None):
            rows = payload["instances"]
            if not rows:
                raise ValueError("no rows to score")
            return {"predictions": [sum(row) for row in rows]}


    if __name__ == "__main__":
        kserve.ModelServer().start([Adder()])
''')


def test_every_request_to_either_worker_is_one_span_and_a_generic_500_keeps_its_body(tmp_path: Path) -> None:
    (tmp_path / "model.py").write_text(MODEL_PY)
    store = tmp_path / "store"
    port = free_port()
    argv = [sys.executable, "model.py", "--http_port", str(port), "--grpc_port", str(free_port()),
            "--enable_grpc", "false", "--workers", "2"]
    asked = {"one": [[1, 2]], "two": [[3, 4], [5, 6]], "three": [[7]], "empty": [], "four": [[8, 9]], "five": [[0]]}
    answers: dict[str, httpx.Response] = {}
    with running_command(argv, port, tmp_path / "kserve.log", store_env(store, OBSML_STRICT="true"),
                         cwd=tmp_path) as server:
        for correlation_id, rows in asked.items():
            with httpx.Client(base_url=server.url, timeout=60) as client:  # a connection each: either worker
                answers[correlation_id] = client.post(
                    "/v1/models/adder:predict", json={"instances": rows}, headers={"x-correlation-id": correlation_id}
                )
        assert server.stop() == 0, server.log()

    assert {name: answer.status_code for name, answer in answers.items()} == {
        name: 500 if name == "empty" else 200 for name in asked
    }
    assert answers["two"].json() == {"predictions": [7, 11]}
    spans = spans_by_correlation_id(store)
    assert sorted(spans) == sorted(asked)
    for correlation_id, rows in asked.items():
        span, answer = spans[correlation_id], answers[correlation_id]
        assert answer.headers["x-correlation-id"] == correlation_id
        attributes = span["attributes"]
        assert attributes["http.response.status_code"] == answer.status_code
        assert json.loads(attributes["obsml.request.body"]) == {"instances": rows}
        assert attributes["obsml.response.body"] == answer.text
    assert json.loads(spans["empty"]["attributes"]["obsml.response.body"]) == {"error": "ValueError : no rows to score"}
    (event,) = spans["empty"]["events"]
    assert event["attributes"]["exception.type"] == "ValueError"
    assert [spans[name]["events"] for name in asked if name != "empty"] == [[]] * (len(asked) - 1)
