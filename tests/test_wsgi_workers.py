"""gunicorn's forked workers: each writes its own part files, and a graceful stop loses nothing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from conftest import load_every_worker, read_spans, running_gunicorn

REQUESTS = 60


@pytest.mark.parametrize(
    ("options", "warm_up"),
    [
        pytest.param(("--workers", "2"), False, id="sync"),
        pytest.param(("--workers", "2", "--preload"), False, id="sync-preload"),
        pytest.param(("--workers", "2", "--worker-class", "gthread", "--threads", "4", "--preload"), True,
                     id="gthread-preload-warm-up"),
    ],
)
def test_every_request_is_in_the_store_exactly_once_after_sigterm(
    tmp_path: Path, options: tuple[str, ...], warm_up: bool
) -> None:
    store = tmp_path / "store"
    # The app also sets up its own OpenTelemetry provider, before the fork when preloaded.
    env = {"WSGI_APPS_SPAN_LOG": str(tmp_path / "app-spans"), "WSGI_APPS_WARM_UP": "1" if warm_up else ""}
    with running_gunicorn("wsgi_apps:flask_app", store, *options, env=env) as server:
        master_pid = server.process.pid

        worker_pids, sent = load_every_worker(server.url, REQUESTS)
        assert server.stop() == 0

    assert len(worker_pids) == 2, "the load should have reached both workers"
    spans = read_spans(store)
    ids = Counter(span["attributes"]["obsml.correlation_id"] for span in spans)
    expected = [f"row-{row}" for row in range(sent)] + (["warm-up"] if warm_up else [])
    assert ids == Counter(expected)  # each exactly once
    part_pids = {int(part.name.split("-")[0]) for part in store.glob("traces/*/*/*/*/*.jsonl")}
    # Each worker wrote its own part files; the master only what it captured itself.
    assert part_pids == worker_pids | ({master_pid} if warm_up else set())
    assert not list(store.rglob(".*.tmp"))

    # The application's own provider saw every span too, once, in the worker that served it.
    logged = Counter(line for log in tmp_path.glob("app-spans-*") for line in log.read_text().splitlines())
    assert logged == ids
    assert {int(log.name.rsplit("-", 1)[1]) for log in tmp_path.glob("app-spans-*")} == part_pids
