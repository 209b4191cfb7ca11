"""Apps that collect model data inside their requests, served by real servers in tests/test_collector.py.

obsml is configured through OBSML_* environment variables (gunicorn), or by the test (uvicorn).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import obsml
from obsml import Collector, ObsmlWSGIMiddleware

inputs = Collector("credit", "inputs", ["income", "age"])
predictions = Collector("credit", "predictions", ["approved"])


def meet(folder: str) -> None:
    """Wait until two processes are in this call (each leaves its pid in ``folder``), for at most 30 s."""
    Path(folder, str(os.getpid())).touch()
    deadline = time.monotonic() + 30
    while len(os.listdir(folder)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)


def score_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    # ?meet=<folder>: a sync worker busy here cannot take the other request, so both workers collect at once.
    for folder in parse_qs(environ.get("QUERY_STRING", "")).get("meet", []):
        meet(folder)
    collected = inputs.collect([[1000.5, 41]])
    predictions.collect([[True]], correlation_id=collected.correlation_id)
    start_response("200 OK", [("content-type", "application/json")])
    return [json.dumps(collected._asdict()).encode()]


wsgi_app = ObsmlWSGIMiddleware(score_wsgi)


async def score_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    collected = inputs.collect([[1000.5, 41]])
    predictions.collect([[True]], correlation_id=collected.correlation_id)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(collected._asdict()).encode()})


def asgi_app(store: str) -> Any:
    return obsml.ObsmlMiddleware(score_asgi, store=store, service="scoring", version="7", flush_interval=0.1)
