"""A bare PEP 3333 app under obsml, for servers started as subprocesses (OBSML_* from the environment)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from obsml import ObsmlWSGIMiddleware


def bare(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body = environ.get("PATH_INFO", "").encode("latin-1")
    start_response("200 OK", [("content-type", "text/plain"), ("content-length", str(len(body)))])
    return [body]


wsgi_app = ObsmlWSGIMiddleware(bare, service="shutdown")
