"""A model-server process for test_delivery_azure: ``apps.make_app`` under a real uvicorn on 127.0.0.1,
sending itself traffic. The store, the spool and the credentials come from the environment
(``OBSML_STORE``, ``OBSML_SPOOL_DIR``, ``AZURE_STORAGE_CONNECTION_STRING``).

``python spool_worker.py serve LABEL``: prints ``ready`` once serving, then posts requests to itself
until it is killed (correlation ids ``LABEL-<n>``), printing nothing more.

``python spool_worker.py recover LABEL``: serves, posts one request, flushes (delivery included, 60 s),
stops the server gracefully and prints ``obsml.stats()`` as JSON before exiting normally.

``python spool_worker.py canary LABEL``: like ``recover`` with a short flush (the sink may refuse
everything) and every logger at DEBUG on stderr; prints the reprs of the obsml objects it reaches.

Bodies over the inline limit are self-checking: 64 hex digits of the sha256 of the bytes after them,
so any payload blob can be checked whole without knowing which span it belongs to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import socket
import sys
import threading
from typing import Any

import httpx
import uvicorn
from apps import make_app

import obsml

OPTIONS = {"service": "credit", "model": "best_model", "version": "10", "flush_interval": 0.1}


def self_checking_body(rng: random.Random, size: int) -> bytes:
    rest = rng.randbytes(size - 64)
    return hashlib.sha256(rest).hexdigest().encode() + rest


def body_is_whole(data: bytes) -> bool:
    return len(data) >= 64 and hashlib.sha256(data[64:]).hexdigest().encode() == data[:64]


def body_for(rng: random.Random, n: int) -> bytes:
    if n % 2:
        return self_checking_body(rng, rng.randint(66_000, 150_000))
    return json.dumps({"row": n, "income": rng.randint(1, 10**6)}).encode()


def serve(app: Any) -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", ws="wsproto"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise SystemExit("uvicorn did not start")
        thread.join(0.01)
    host, port = sock.getsockname()
    return server, thread, f"http://{host}:{port}"


def post(client: httpx.Client, correlation_id: str, body: bytes) -> None:
    headers = {"x-correlation-id": correlation_id, "content-type": "application/octet-stream"}
    response = client.post("/echo", content=body, headers=headers)
    if (response.status_code, response.content) != (200, body):
        raise SystemExit(f"{correlation_id}: unexpected response {response.status_code}")


def reachable_reprs(app: Any) -> list[str]:
    """repr() of every obsml object reachable from the pipelines and the app's middleware, and of their attributes."""
    from obsml._pipeline import _PIPELINES

    seen: set[int] = set()
    out: list[str] = []

    def walk(value: Any, depth: int) -> None:
        if id(value) in seen or depth > 4:
            return
        seen.add(id(value))
        out.append(repr(value))
        if type(value).__module__.startswith("obsml"):
            for attribute in getattr(value, "__dict__", {}).values():
                walk(attribute, depth + 1)

    for pipeline in list(_PIPELINES.values()):
        walk(pipeline, 0)
    layer = getattr(app, "middleware_stack", None)
    while layer is not None:
        walk(layer, 0)
        layer = getattr(layer, "app", None)
    return out


def main() -> None:
    mode, label = sys.argv[1], sys.argv[2]
    if mode == "canary":
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
    rng = random.Random(label)
    app = make_app(**OPTIONS)
    server, thread, url = serve(app)
    with httpx.Client(base_url=url, timeout=30) as client:
        if mode == "serve":
            print("ready", flush=True)
            n = 0
            while True:
                post(client, f"{label}-{n}", body_for(rng, n))
                n += 1
        for n in range(2 if mode == "recover" else 4):
            post(client, f"{label}-{n}", body_for(rng, n + 1))
    flushed = obsml.flush(60 if mode == "recover" else 2)
    server.should_exit = True
    thread.join(30)
    result: dict[str, Any] = {"flushed": flushed, "stats": obsml.stats()}
    if mode == "canary":
        result["reprs"] = reachable_reprs(app)
        result["settings"] = repr(obsml.Settings.load())
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    main()
