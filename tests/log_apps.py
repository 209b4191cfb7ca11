"""Scoring code that logs and prints, under uvicorn (``asgi_app``) and gunicorn (``wsgi_app``).

obsml is configured through OBSML_* environment variables, as a deployment would. The app's
logging set-up is its own: the ``scoring`` logger lets INFO through, the root logger stays at
WARNING (obsml never changes it).
"""

from __future__ import annotations

import json
import logging
import sys
import threading

from flask import Flask
from flask import request as flask_request
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from obsml import ObsmlMiddleware, ObsmlWSGIMiddleware

scoring_log = logging.getLogger("scoring")
scoring_log.setLevel(logging.INFO)
logging.getLogger("urllib3").setLevel(logging.DEBUG)  # chatty, and never the app's log lines


def score(marker: str) -> dict[str, str]:
    """What the scoring code says: INFO, an ERROR with an exception and extra fields, a printed JSON line."""
    scoring_log.info("scoring %s", marker)
    try:
        raise KeyError(marker)
    except KeyError:
        # The URL's token is a credential (obsml's query keys): the stored message keeps its place only.
        scoring_log.exception("fell back for %s (https://features.local/v1?token=s3cret-%s&n=1)", marker, marker,
                              extra={"input": {"marker": marker, "rows": [1, 2]}})
    print(json.dumps({"input": marker, "output": 0.5}))
    scoring_log.debug("below the scoring logger's level: no record at all")
    logging.getLogger("obsml.example").warning("obsml's own logger: never recorded as the app's")
    logging.getLogger("urllib3.connectionpool").info("urllib3's logger: never recorded as the app's")
    thread = threading.Thread(target=scoring_log.warning, args=("from a thread of its own: outside the request",))
    thread.start()
    thread.join()
    return {"marker": marker}


def shout() -> str:
    """A printed line over obsml's limit, written in pieces, then a line with no JSON in it."""
    sys.stdout.write("x" * 10_000)
    print("y" * 30_000)
    print("{not json")
    return "ok"


def bad_format() -> str:
    scoring_log.error("bad %d format", "not a number")  # getMessage() raises: the record is kept all the same
    return "ok"


async def asgi_score(request: Request) -> Response:
    return JSONResponse(score(request.query_params["marker"]))


async def asgi_shout(request: Request) -> Response:
    return Response(shout())


async def asgi_bad_format(request: Request) -> Response:
    return Response(bad_format())


asgi_app = ObsmlMiddleware(Starlette(routes=[
    Route("/score", asgi_score), Route("/shout", asgi_shout), Route("/bad-format", asgi_bad_format),
]))

flask_app = Flask(__name__)


@flask_app.get("/score")
def flask_score() -> dict[str, str]:
    return score(flask_request.args["marker"])


@flask_app.get("/shout")
def flask_shout() -> str:
    return shout()


wsgi_app = ObsmlWSGIMiddleware(flask_app)

scoring_log.warning("loaded outside any request")  # after the middlewares: the handler is there, no request
