"""Apps as their authors wrote them, without obsml: `obsml run` and `obsml.gunicorn` add it.

Each echoes the request body, so a span's bodies can be checked against what was sent.
"""

from __future__ import annotations

import os

from fastapi import FastAPI, Request, Response
from flask import Flask
from flask import Response as FlaskResponse
from flask import request as flask_request

fastapi_app = FastAPI()


@fastapi_app.post("/echo")
async def fastapi_echo(request: Request) -> Response:
    return Response(await request.body(), media_type="application/json")


flask_app = Flask(__name__)


@flask_app.post("/echo")
def flask_echo() -> FlaskResponse:
    return FlaskResponse(flask_request.get_data(), content_type="application/json")


@flask_app.get("/pid")
def flask_pid() -> dict[str, int]:
    return {"pid": os.getpid()}


async def coroutine_app(scope: object, receive: object, send: object) -> None:
    """A bare ASGI app: detected by its coroutine function."""


def wsgi_function(environ: object, start_response: object) -> list[bytes]:
    """A bare WSGI app: detected by its two parameters."""
    return []


def ambiguous(scope: object, receive: object, send: object) -> object:
    """A plain function of three parameters: ASGI or not, only its author knows."""
    return None


not_an_app = 42
