"""Model servers' integration tests, each in a virtual environment of its own (`make test-integrations`).

Run there with ``--confcutdir=tests/integrations``: tests/conftest.py needs the main test extra.
In the main suite each module is skipped, saying why, when its server is not installed.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import httpx

TESTS = Path(__file__).parent.parent
sys.path.insert(0, str(TESTS))  # tests/servers.py: real servers as subprocesses, stdlib only

from servers import free_port, running_command, store_env  # noqa: E402

from obsml._reader import StoreReader  # noqa: E402

__all__ = ["free_port", "read_spans", "running_command", "spans_by_correlation_id", "store_env"]


def read_spans(store: Path) -> list[dict[str, Any]]:
    return StoreReader.open(str(store)).spans()


def spans_by_correlation_id(store: Path) -> dict[str, dict[str, Any]]:
    """The store's spans by correlation id, each id once (a second span of a request fails)."""
    spans: dict[str, dict[str, Any]] = {}
    for span in read_spans(store):
        correlation_id = span["attributes"]["obsml.correlation_id"]
        assert correlation_id not in spans, f"two spans for {correlation_id}"
        spans[correlation_id] = span
    return spans


def wait_until_serving(url: str) -> None:
    """A port that accepts is not yet an app that answers (model servers load models first)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(url, timeout=5)
            return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
