"""The installed plugin behind a real uvicorn server: obsml finds it by its entry point and delivers to it."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import obsml
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


async def score(request: Request) -> Response:
    body = await request.body()
    return JSONResponse({"size": len(body)})


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 in a thread (as in obsml's tests/conftest.py)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            thread.join(0.01)
        host, port = sock.getsockname()
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def spans_by_correlation_id(database: Path, *ids: str) -> dict[str, tuple[Any, ...]]:
    """The spans of these requests. The client may see a response before its span reaches the
    writer, so flush and look again until all are in (or 30 s pass)."""
    deadline = time.monotonic() + 30
    while True:
        assert obsml.flush(30)
        found: dict[str, tuple[Any, ...]] = {}
        if database.exists():
            with sqlite3.connect(database) as connection:
                marks = ",".join("?" * len(ids))
                for row in connection.execute(
                    f"SELECT correlation_id, name, status, model_name, model_version, json FROM spans"
                    f" WHERE correlation_id IN ({marks})", ids,
                ):
                    found[row[0]] = row
            connection.close()
        if len(found) == len(ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def test_spans_and_an_offloaded_payload_reach_sqlite_through_the_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OBSML_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("OBSML_STRICT", "true")
    database = tmp_path / "obsml.db"
    store = f"sqlite://{database}"
    app = obsml.ObsmlMiddleware(
        Starlette(routes=[Route("/score", score, methods=["POST"])]),
        store=store, service="credit", model="best_model", version="10", flush_interval=0.05,
    )
    small, big = b'{"row": 1}', os.urandom(100 * 1024)
    with running_server(app) as url, httpx.Client(base_url=url) as client:
        for correlation_id, body in [("e2e-small", small), ("e2e-big", big)]:
            response = client.post("/score", content=body, headers={"x-correlation-id": correlation_id})
            assert response.json() == {"size": len(body)}
            assert response.headers["x-correlation-id"] == correlation_id

    spans = spans_by_correlation_id(database, "e2e-small", "e2e-big")
    assert sorted(spans) == ["e2e-big", "e2e-small"]
    assert {row[1:5] for row in spans.values()} == {("POST /score", "UNSET", "best_model", "10")}

    attributes = json.loads(spans["e2e-big"][5])["attributes"]
    uri = attributes["obsml.request.body.uri"]
    # obsml names an object by the store URL joined with its relative path (before any sink exists).
    assert uri.startswith(f"{store}/payloads/")
    relative = uri.removeprefix(f"{store}/")
    with sqlite3.connect(database) as connection:
        ((size, digest, data),) = connection.execute(
            "SELECT size, sha256, data FROM payloads WHERE relative = ?", (relative,)
        ).fetchall()
    connection.close()
    assert data == big
    assert size == len(big) == attributes["obsml.request.body.size"]
    assert digest == hashlib.sha256(big).hexdigest() == attributes["obsml.request.body.sha256"]
    assert json.loads(spans["e2e-small"][5])["attributes"]["obsml.request.body"] == small.decode()
    assert obsml.stats()["dropped"] == {}
