"""Apps that hand obsml text from the request, served by real servers in tests/test_hostile.py.

Each collects the request's JSON rows with a Collector that has no feature names: rows whose
columns differ are refused, and obsml logs the refusal with the column names the client chose.
obsml is configured through OBSML_* environment variables (the servers are subprocesses).
"""

from __future__ import annotations

import json
from typing import Any

from obsml import Collector, ObsmlMiddleware, ObsmlWSGIMiddleware

rows = Collector("credit", "inputs")


def _collect(body: bytes) -> bytes:
    collected = rows.collect(json.loads(body))
    return json.dumps({"rows": collected.rows}).encode()


def collect_wsgi(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    answer = _collect(environ["wsgi.input"].read(length))
    start_response("200 OK", [("content-type", "application/json")])
    return [answer]


async def collect_asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    answer = _collect(body)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": answer})


wsgi_app = ObsmlWSGIMiddleware(collect_wsgi)
asgi_app = ObsmlMiddleware(collect_asgi)
