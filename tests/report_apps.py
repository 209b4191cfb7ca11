"""A scoring app under ObsmlMiddleware whose Collectors write the model data tests/test_report.py and
tests/test_drift.py read back; the traffic goes through httpx's ASGITransport, in process.

Each request scores a batch of rows drawn from seeded distributions (the window: ``income`` shifted
by ``shift``, ``age`` not, ``region`` with ``west`` when ``new_region``); labels arrive afterwards,
as a batch job would collect them. :func:`reference_rows` draws the training data's distributions.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np

import obsml

FEATURES = ["income", "age", "region"]
REQUESTS = 20
ROWS = 40  # per request


def reference_rows(n: int = 3000, seed: int = 1) -> dict[str, Any]:
    """Training data: income ~ N(50000, 10000), age ~ N(40, 10), region north or south."""
    rng = np.random.default_rng(seed)
    return {
        "income": rng.normal(50_000, 10_000, n), "age": rng.normal(40, 10, n),
        "region": rng.choice(["north", "south"], n),
    }


def write_store(store: Path, *, shift: float = 15_000, new_region: bool = True, labels: bool = True,
                model: str = "credit", version: str = "2", failures: int = 2) -> None:
    """Serve REQUESTS scoring requests (``failures`` of them raising) and collect their rows and labels."""
    where = {"store": str(store), "service": "scoring", "version": version}
    inputs = obsml.Collector(model, "inputs", FEATURES, **where)
    predictions = obsml.Collector(model, "predictions", ["defaulted", "score"], **where)
    rng = np.random.default_rng(7)
    truth: dict[str, list[bool]] = {}

    async def score(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/fail":
            raise RuntimeError("model not loaded")
        regions = ["north", "south", "west"] if new_region else ["north", "south"]
        rows = [[float(rng.normal(50_000 + shift, 10_000)), float(rng.normal(40, 10)), str(rng.choice(regions))]
                for _ in range(ROWS)]
        scores = [float(rng.random()) for _ in rows]
        collected = inputs.collect(rows)
        predictions.collect([[s >= 0.5, s] for s in scores], correlation_id=collected.correlation_id)
        # The truth agrees with the score most of the time: quality metrics between 0.5 and 1.
        truth[collected.correlation_id] = [bool(rng.random() < (0.8 if s >= 0.5 else 0.25)) for s in scores]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": json.dumps({"id": collected.correlation_id}).encode()})

    app = obsml.ObsmlMiddleware(score, store=str(store), service="scoring", model=model, version=version,
                                flush_interval=0.1)

    async def traffic() -> None:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://scoring") as client:
            for _ in range(REQUESTS):
                assert (await client.post("/score", json={})).status_code == 200
            for _ in range(failures):
                assert (await client.post("/fail", json={})).status_code == 500

    asyncio.run(traffic())
    if labels:
        collector = obsml.Collector(model, "labels", ["defaulted"], **where)
        for correlation_id, values in truth.items():
            collector.collect([[value] for value in values], correlation_id=correlation_id)
    assert obsml.flush(10)
