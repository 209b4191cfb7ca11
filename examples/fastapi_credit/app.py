"""The credit model served with FastAPI and captured by obsml.

Run from the repository root::

    OBSML_STORE=./obsml-data uvicorn examples.fastapi_credit.app:app

Routes: ``GET /health``; ``POST /score`` with ``{"rows": [{...}, ...]}`` returning
``{"predictions": [...]}``; ``POST /score/stream``, the same body answered as server-sent
events, one ``data: {...}`` event per row. The rows of each scored request, as the model saw
them (floats, in ``FEATURES`` order), and its predictions are collected as model data
(``obsml.Collector``) under the request's correlation id, for ``obsml.modeldata`` to read back
and join with labels known later. A row with a missing or non-numeric feature makes the model
code raise ``ValueError``, which is left to escape as a 500 (what a real bug looks
like to obsml): the bodies are read with ``await request.json()`` rather than a pydantic model
so that FastAPI's own validation never turns it into a 422.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

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
from obsml import Collector, ObsmlMiddleware

# The scoring code's own log lines: obsml keeps each with its request (`obsml logs --correlation-id`).
log = logging.getLogger("credit")
log.setLevel(logging.INFO)

STREAM_DELAY_S = 0.01  # between two events of /score/stream, as a slower model would


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.model = train_model()
    yield


app = FastAPI(title="credit scoring", lifespan=lifespan)
app.add_middleware(ObsmlMiddleware, service=SERVICE, model=MODEL_NAME, version=MODEL_VERSION)
# Store, service and version come from the middleware serving the request.
inputs = Collector(MODEL_NAME, "inputs", FEATURES)
predictions = Collector(MODEL_NAME, "predictions", PREDICTIONS)


def _rows(body: Any) -> Any:
    if not isinstance(body, dict) or "rows" not in body:
        raise ValueError('expected a JSON object {"rows": [{...}, ...]}')
    return body["rows"]


def _score_and_collect(model: Any, rows: Any) -> list[dict[str, Any]]:
    """The predictions of ``rows``; a bad row raises before anything is collected."""
    matrix = validate_rows(rows)
    answers = score_matrix(model, matrix)
    seen = inputs.collect(matrix)  # under the correlation id of the request being served
    predictions.collect(answers, correlation_id=seen.correlation_id)
    approved = sum(answer["decision"] == "approve" for answer in answers)
    log.info("scored %d rows, %d approved", len(answers), approved)  # kept with the request (OBSML_LOG_LEVEL)
    return answers


@app.get("/health")
async def health() -> dict[str, Any]:
    return {
        "status": "ok", "service": SERVICE, "model": MODEL_NAME, "version": MODEL_VERSION, "features": list(FEATURES),
    }


@app.post("/score")
async def score(request: Request) -> dict[str, Any]:
    rows = _rows(await request.json())
    answers = _score_and_collect(request.app.state.model, rows)
    return {"model": MODEL_NAME, "version": MODEL_VERSION, "predictions": answers}


@app.post("/score/stream")
async def score_stream(request: Request) -> StreamingResponse:
    rows = _rows(await request.json())
    # Scored (and collected) before the stream starts: a bad row fails the request with a clean 500.
    answers = _score_and_collect(request.app.state.model, rows)

    async def events() -> AsyncIterator[str]:
        for index, answer in enumerate(answers):
            yield f"data: {json.dumps({'row': index, **answer})}\n\n"
            await asyncio.sleep(STREAM_DELAY_S)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})
