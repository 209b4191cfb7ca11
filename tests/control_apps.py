"""Apps served by real servers in tests/test_control.py, configured by OBSML_* variables only.

Each answers with its pid and the rows its Collector handed on (0: collection switched off, or
the request sampled out); the ``x-correlation-id`` header is missing when obsml is switched off.
"""

from __future__ import annotations

import json
import os
from typing import Any

from obsml import Collector, ObsmlMiddleware, ObsmlWSGIMiddleware

inputs = Collector("best", "inputs", ["income"])  # the model of OBSML_MODEL in the tests


def answer() -> bytes:
    return json.dumps({"pid": os.getpid(), "rows": inputs.collect([[1000.5]]).rows}).encode()


async def score_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": answer()})


def score_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("content-type", "application/json")])
    return [answer()]


def asgi_app() -> ObsmlMiddleware:
    return ObsmlMiddleware(score_asgi)


def wsgi_app() -> ObsmlWSGIMiddleware:
    return ObsmlWSGIMiddleware(score_wsgi)
