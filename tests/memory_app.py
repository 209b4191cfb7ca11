"""The app a uvicorn subprocess serves for the peak-memory tests (configured by OBSML_* variables).

Two doors to one echo app: ``/bare/…`` without obsml, anything else through it, so that one
process measures its own peak for a load first without obsml, then with it.
"""

from __future__ import annotations

from typing import Any

from obsml import ObsmlMiddleware


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream")]})
    await send({"type": "http.response.body", "body": b"".join(chunks)})


observed = ObsmlMiddleware(echo)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"].startswith("/bare/"):
        await echo(scope, receive, send)
    else:
        await observed(scope, receive, send)
