"""The credit model served with Flask under gunicorn and captured by obsml.

Run from the repository root::

    OBSML_STORE=./obsml-data gunicorn --workers 2 --preload examples.flask_credit.app:app

The same routes as the FastAPI example: ``GET /health``; ``POST /score`` with
``{"rows": [{...}, ...]}`` returning ``{"predictions": [...]}``; ``POST /score/stream``, the
same body answered as server-sent events by a generator, one ``data: {...}`` event per row.
The model is trained once, at import: with ``--preload`` gunicorn imports this module in its
master and forks the workers with the model already in memory. A row with a missing or
non-numeric feature makes the model code raise ``ValueError``; Flask turns it into a 500 as
in production, and obsml records the exception on the request's span (it listens to Flask's
``got_request_exception``), so the span holds what a real bug looks like. As in the FastAPI
example, each scored request's rows (floats, in ``FEATURES`` order) and predictions are collected
as model data (``obsml.Collector``) under the request's correlation id.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, request

from examples.credit_model import (
    FEATURES,
    MODEL_NAME,
    MODEL_VERSION,
    PREDICTIONS,
    SERVICE,
    score_matrix,
    train_model,
    validate_rows,
)
from obsml import Collector, ObsmlWSGIMiddleware

# The scoring code's own log lines: obsml keeps each with its request (`obsml logs --correlation-id`).
log = logging.getLogger("credit")
log.setLevel(logging.INFO)

STREAM_DELAY_S = 0.01  # between two events of /score/stream, as a slower model would

MODEL = train_model()

app = Flask(__name__)
app.wsgi_app = ObsmlWSGIMiddleware(app.wsgi_app, service=SERVICE, model=MODEL_NAME, version=MODEL_VERSION)
# Store, service and version come from the middleware serving the request.
inputs = Collector(MODEL_NAME, "inputs", FEATURES)
predictions = Collector(MODEL_NAME, "predictions", PREDICTIONS)


def _rows(body: Any) -> Any:
    if not isinstance(body, dict) or "rows" not in body:
        raise ValueError('expected a JSON object {"rows": [{...}, ...]}')
    return body["rows"]


def _score_and_collect(rows: Any) -> list[dict[str, Any]]:
    """The predictions of ``rows``; a bad row raises before anything is collected."""
    matrix = validate_rows(rows)
    answers = score_matrix(MODEL, matrix)
    seen = inputs.collect(matrix)  # under the correlation id of the request being served
    predictions.collect(answers, correlation_id=seen.correlation_id)
    approved = sum(answer["decision"] == "approve" for answer in answers)
    log.info("scored %d rows, %d approved", len(answers), approved)  # kept with the request (OBSML_LOG_LEVEL)
    return answers


@app.get("/health")
def health() -> dict[str, Any]:
    return {
        "status": "ok", "service": SERVICE, "model": MODEL_NAME, "version": MODEL_VERSION, "features": list(FEATURES),
    }


@app.post("/score")
def score() -> dict[str, Any]:
    answers = _score_and_collect(_rows(request.get_json(force=True)))
    return {"model": MODEL_NAME, "version": MODEL_VERSION, "predictions": answers}


@app.post("/score/stream")
def score_stream() -> Response:
    # Scored (and collected) before the stream starts: a bad row fails the request with a clean 500.
    answers = _score_and_collect(_rows(request.get_json(force=True)))

    def events() -> Iterator[str]:
        for index, answer in enumerate(answers):
            yield f"data: {json.dumps({'row': index, **answer})}\n\n"
            time.sleep(STREAM_DELAY_S)

    return Response(events(), mimetype="text/event-stream", headers={"cache-control": "no-cache"})
