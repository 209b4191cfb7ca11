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
``got_request_exception``), so the span holds what a real bug looks like.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask, Response, request

from examples.credit_model import FEATURES, MODEL_NAME, MODEL_VERSION, score_rows, train_model, validate_rows
from obsml import ObsmlWSGIMiddleware

STREAM_DELAY_S = 0.01  # between two events of /score/stream, as a slower model would

MODEL = train_model()

app = Flask(__name__)
app.wsgi_app = ObsmlWSGIMiddleware(app.wsgi_app, service="credit", model=MODEL_NAME, version=MODEL_VERSION)


def _rows(body: Any) -> Any:
    if not isinstance(body, dict) or "rows" not in body:
        raise ValueError('expected a JSON object {"rows": [{...}, ...]}')
    return body["rows"]


@app.get("/health")
def health() -> dict[str, Any]:
    return {"status": "ok", "model": MODEL_NAME, "version": MODEL_VERSION, "features": list(FEATURES)}


@app.post("/score")
def score() -> dict[str, Any]:
    rows = _rows(request.get_json(force=True))
    return {"model": MODEL_NAME, "version": MODEL_VERSION, "predictions": score_rows(MODEL, rows)}


@app.post("/score/stream")
def score_stream() -> Response:
    rows = _rows(request.get_json(force=True))
    validate_rows(rows)  # a bad row fails the request before the stream starts: a clean 500

    def events() -> Iterator[str]:
        for index, row in enumerate(rows):
            (prediction,) = score_rows(MODEL, [row])
            yield f"data: {json.dumps({'row': index, **prediction})}\n\n"
            time.sleep(STREAM_DELAY_S)

    return Response(events(), mimetype="text/event-stream", headers={"cache-control": "no-cache"})
