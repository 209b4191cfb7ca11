"""Helpers of the model servers' integration tests (tests/integrations/test_*.py).

Each test module runs in a virtual environment of its own (`make test-integrations`), with
``--confcutdir=tests/integrations``: tests/conftest.py needs the main test extra. In the main
suite each module is skipped, saying why, as its server is not installed there.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

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

