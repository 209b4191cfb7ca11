from __future__ import annotations

import time
from pathlib import Path

import httpx
from apps import make_app
from conftest import read_spans, running_server

import obsml
from obsml._parts import MAX_BYTES
from obsml._pipeline import pipeline_for

OPTIONS = {"service": "credit", "model": "best_model", "version": "10"}


def test_a_part_file_is_written_once_its_spans_pass_8_mib_without_waiting_for_the_interval(store: Path) -> None:
    options = {"store": str(store), "flush_interval": 3600, **OPTIONS}
    body = b"j" * 60_000  # inline both ways: a span line of about 120 KB
    with running_server(make_app(**options)) as url, httpx.Client(base_url=url) as client:
        for index in range(100):
            client.post("/echo", content=body, headers={"x-correlation-id": f"line-{index}"})
        writer = pipeline_for(obsml.Settings.load(**options)).writer
        deadline = time.monotonic() + 30
        while writer.pending() and time.monotonic() < deadline:  # every span exported, nothing flushed
            time.sleep(0.02)
        parts = sorted(store.glob("traces/*/*/*/*/*.jsonl"))
        assert parts, "no part file before the interval, though the batch passed 8 MiB"
        largest_line = max(len(line) for part in parts for line in part.read_bytes().split(b"\n"))
        assert all(part.stat().st_size < MAX_BYTES + largest_line + 1 for part in parts)
    ids = sorted(span["attributes"]["obsml.correlation_id"] for span in read_spans(store))
    assert ids == sorted(f"line-{index}" for index in range(100))  # the rest at shutdown, each once
