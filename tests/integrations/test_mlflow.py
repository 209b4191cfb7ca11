"""MLflow's scoring server under obsml (obsml.integrations.mlflow), started as the README's recipe says."""

from __future__ import annotations

import json
import os
import signal
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("mlflow", reason="make test-integrations runs this, in its own venv")

import httpx
from model_servers import free_port, running_command, spans_by_correlation_id, store_env

pytestmark = pytest.mark.slow

# The README's recipe ("Model servers"), run as it is written.
RECIPE = "OBSML_MLFLOW_MODEL_URI=./model uvicorn obsml.integrations.mlflow:app"


def save_tiny_model(path: Path) -> None:
    """y = x1 + 2 x2, fitted on four rows, saved as MLflow saves a scikit-learn model."""
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    features = pd.DataFrame({"x1": [0.0, 1.0, 0.0, 1.0], "x2": [0.0, 0.0, 1.0, 1.0]})
    targets = pd.Series([0.0, 1.0, 2.0, 3.0])
    model = LinearRegression().fit(features, targets)
    with warnings.catch_warnings():  # MLflow warns about type hints of its own as it loads its modules
        warnings.simplefilter("ignore")
        mlflow.sklearn.save_model(model, str(path), signature=infer_signature(features, targets))


def test_every_scoring_request_is_one_span_with_mlflows_answer(tmp_path: Path) -> None:
    save_tiny_model(tmp_path / "model")
    store = tmp_path / "store"
    port = free_port()
    env = store_env(store, OBSML_STRICT="true", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    argv = ["bash", "-c", f"{RECIPE} --port {port}"]  # bash runs a lone command in its place: signals reach it
    asked = [  # correlation id, content type, body, the status MLflow answers
        ("split", "application/json", json.dumps({"dataframe_split": {"columns": ["x1", "x2"], "data": [[1, 1]]}}),
         200),
        ("records", "application/json", json.dumps({"dataframe_records": [{"x1": 2.0, "x2": 0.0}]}), 200),
        ("csv", "text/csv", "x1,x2\n0,1\n1,1\n", 200),
        ("not-json", "application/json", "{not json", 400),
        ("one-column", "application/json", json.dumps({"dataframe_records": [{"x1": 1.0}]}), 400),
    ]
    answers: list[httpx.Response] = []
    with running_command(argv, port, tmp_path / "uvicorn.log", env, cwd=tmp_path) as server:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for correlation_id, content_type, body, _ in asked:
                headers = {"x-correlation-id": correlation_id, "content-type": content_type}
                answers.append(client.post("/invocations", content=body, headers=headers))
        assert server.stop() in (0, -signal.SIGTERM), server.log()  # uvicorn ends by the signal it got

    assert [answer.status_code for answer in answers] == [status for *_, status in asked]
    assert [answer.json() for answer in answers[:3]] == [
        {"predictions": [pytest.approx(3.0)]}, {"predictions": [pytest.approx(2.0)]},
        {"predictions": [pytest.approx(2.0), pytest.approx(3.0)]},
    ]
    spans = spans_by_correlation_id(store)
    assert sorted(spans) == sorted(correlation_id for correlation_id, *_ in asked)
    for (correlation_id, _, body, status), answer in zip(asked, answers, strict=True):
        span = spans[correlation_id]
        attributes = span["attributes"]
        assert attributes["http.response.status_code"] == status
        assert attributes["obsml.request.body"] == body
        assert attributes["obsml.response.body"] == answer.text
    assert [spans[name]["events"] for name in ("split", "records", "csv", "not-json")] == [[], [], [], []]
    (event,) = spans["one-column"]["events"]  # the model refused it (its signature); MLflow answered 400
    assert event["attributes"]["exception.type"] == "mlflow.exceptions.MlflowException"
    assert "x2" in event["attributes"]["exception.message"], event  # the column the model was not given
