"""Small real apps the tests serve under uvicorn (also importable by a uvicorn subprocess)."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

import obsml
from obsml import ObsmlMiddleware

# Set by a test once it has read the first streamed chunk; the stream's last chunk waits for it.
first_chunk_seen = threading.Event()
SESSION_COOKIE = "token=CANARY-set-cookie-3c4d"


async def echo(request: Request) -> Response:
    body = await request.body()
    headers = {"set-cookie": SESSION_COOKIE} if "x-give-cookie" in request.headers else None
    media = request.headers.get("content-type", "application/octet-stream")
    return Response(body, media_type=media, headers=headers)


async def digest(request: Request) -> Response:
    hasher, size = hashlib.sha256(), 0
    async for chunk in request.stream():
        hasher.update(chunk)
        size += len(chunk)
    return JSONResponse({"sha256": hasher.hexdigest(), "size": size})


def pattern(size: int) -> bytes:
    """``size`` bytes that are not all alike (so a hash tells a shifted or cut copy from the original)."""
    return (bytes(range(256)) * (size // 256 + 1))[:size]


async def sized(request: Request) -> Response:
    """A body of the size asked for, sent as one ASGI message (a normal non-streaming response)."""
    return Response(pattern(int(request.path_params["size"])), media_type="application/octet-stream")


async def whoami(request: Request) -> Response:
    """What obsml.current_request() tells the app's own code about the request being served."""
    ids = obsml.current_request()
    return JSONResponse(ids._asdict() if ids else None)


async def stream(request: Request) -> Response:
    async def events() -> Any:
        yield b"data: first\n\n"
        for _ in range(500):  # until the client has seen the first chunk, at most 10 s
            if first_chunk_seen.is_set():
                break
            await asyncio.sleep(0.02)
        yield b"data: released\n\n" if first_chunk_seen.is_set() else b"data: timed-out\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def endless(request: Request) -> Response:
    async def events() -> Any:
        for index in range(1000):
            yield f"data: {index}\n\n".encode()
            await asyncio.sleep(0.01)

    return StreamingResponse(events(), media_type="text/event-stream")


async def fail_before(request: Request) -> Response:
    raise RuntimeError("model exploded before answering")


async def fail_after_reading(request: Request) -> Response:
    await request.body()
    raise ValueError("row 3: income is not a number")


async def fail_during(request: Request) -> Response:
    async def chunks() -> Any:
        yield b"partial "
        raise RuntimeError("model exploded mid-stream")

    return StreamingResponse(chunks(), media_type="text/plain")


async def status(request: Request) -> Response:
    return PlainTextResponse("status", status_code=int(request.path_params["code"]))


async def file(request: Request) -> Response:
    """A file, as Starlette sends it: with ``http.response.pathsend`` when the scope offers it."""
    return FileResponse(request.query_params["path"], media_type="application/octet-stream")


class PathsendAnyway(FileResponse):
    """A file sent with ``http.response.pathsend`` even though the scope does not offer it."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        offered = {**scope, "extensions": {**scope.get("extensions", {}), "http.response.pathsend": {}}}
        await super().__call__(offered, receive, send)


async def file_by_path(request: Request) -> Response:
    return PathsendAnyway(request.query_params["path"], media_type="application/octet-stream")


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_text(f"echo:{text}")
    await websocket.close()


def make_app(**options: Any) -> Starlette:
    routes = [
        Route("/echo", echo, methods=["POST"]),
        Route("/whoami", whoami),
        Route("/bytes/{size:int}", sized),
        Route("/digest", digest, methods=["POST"]),
        Route("/stream", stream),
        Route("/endless", endless),
        Route("/fail/before", fail_before),
        Route("/fail/during", fail_during),
        Route("/fail/after-read", fail_after_reading, methods=["POST"]),
        Route("/status/{code:int}", status),
        Route("/file", file),
        Route("/file-by-path", file_by_path),
        WebSocketRoute("/ws", ws_echo),
    ]
    return Starlette(routes=routes, middleware=[Middleware(ObsmlMiddleware, **options)])


app = make_app(service="credit", model="best_model", version="10")
