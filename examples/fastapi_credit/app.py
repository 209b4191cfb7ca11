"""The credit model served with FastAPI and captured by obsml.

Run from the repository root::

    OBSML_STORE=./obsml-data uvicorn examples.fastapi_credit.app:app

Routes: ``GET /health``; ``POST /score`` with ``{"rows": [{...}, ...]}`` returning
``{"predictions": [...]}``; ``POST /score/stream``, the same body answered as server-sent
events, one ``data: {...}`` event per row. A row with a missing or non-numeric feature makes
the model code raise ``ValueError``, which is left to escape as a 500 (what a real bug looks
like to obsml): the bodies are read with ``await request.json()`` rather than a pydantic model
so that FastAPI's own validation never turns it into a 422.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from examples.credit_model import FEATURES, MODEL_NAME, MODEL_VERSION, score_rows, train_model, validate_rows
from obsml import ObsmlMiddleware

STREAM_DELAY_S = 0.01  # between two events of /score/stream, as a slower model would


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.model = train_model()
    yield


app = FastAPI(title="credit scoring", lifespan=lifespan)
app.add_middleware(ObsmlMiddleware, service="credit", model=MODEL_NAME, version=MODEL_VERSION)


def _rows(body: Any) -> Any:
    if not isinstance(body, dict) or "rows" not in body:
        raise ValueError('expected a JSON object {"rows": [{...}, ...]}')
    return body["rows"]


@app.get("/health")
async def health() -> dict[str, Any]:
    return {"status": "ok", "model": MODEL_NAME, "version": MODEL_VERSION, "features": list(FEATURES)}


@app.post("/score")
async def score(request: Request) -> dict[str, Any]:
    rows = _rows(await request.json())
    predictions = score_rows(request.app.state.model, rows)
    return {"model": MODEL_NAME, "version": MODEL_VERSION, "predictions": predictions}


@app.post("/score/stream")
async def score_stream(request: Request) -> StreamingResponse:
    rows = _rows(await request.json())
    validate_rows(rows)  # a bad row fails the request before the stream starts: a clean 500
    model = request.app.state.model

    async def events() -> AsyncIterator[str]:
        for index, row in enumerate(rows):
            (prediction,) = score_rows(model, [row])
            yield f"data: {json.dumps({'row': index, **prediction})}\n\n"
            await asyncio.sleep(STREAM_DELAY_S)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"cache-control": "no-cache"})
