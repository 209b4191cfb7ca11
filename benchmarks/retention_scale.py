"""How long ``obsml retention`` takes to list and to delete, against the size of what it deletes.

Writes a store of ``--days`` days older than the limit, each hour with ``--files`` span part files
(and as many log part files) and each day with ``--payloads`` bodies, plus the current hour, through
fsspec (any URL: a directory by default, ``abfs://…`` with ``AZURE_STORAGE_CONNECTION_STRING``);
then times the dry run, the deletion (``--yes``), and a second run with nothing left to delete.

    .venv/bin/python benchmarks/retention_scale.py --days 30 --files 4 --payloads 200
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from contextlib import redirect_stdout
from datetime import datetime, timedelta, timezone

import fsspec

from obsml.cli import main

SPAN = b'{"name": "POST /score", "attributes": {"obsml.request.body": "' + b"x" * 900 + b'"}}\n'


def fill(url: str, days: int, files: int, payloads: int) -> int:
    """Objects older than 40 days (and one in the current hour); how many were written."""
    fs, root = fsspec.core.url_to_fs(url, **({} if "://" in url else {"auto_mkdir": True}))
    now = datetime.now(timezone.utc)
    objects: dict[str, bytes] = {f"{root}/traces/{now:%Y/%m/%d/%H}/1-cafe-000001.jsonl": SPAN}
    for day in range(days):
        start = (now - timedelta(days=40 + day)).replace(hour=0, minute=0, second=0, microsecond=0)
        for hour in range(24):
            folder = f"{start + timedelta(hours=hour):%Y/%m/%d/%H}"
            for top in ("traces", "logs"):
                for n in range(files):
                    objects[f"{root}/{top}/{folder}/1-cafe-{n:06d}.jsonl"] = SPAN * 50
        for n in range(payloads):
            objects[f"{root}/payloads/{start:%Y/%m/%d}/{n:032x}-{n:016x}-request.json"] = SPAN * 20
    fs.pipe(objects)  # adlfs puts a dict concurrently
    return len(objects)


def timed(*argv: str) -> tuple[float, str]:
    out = io.StringIO()
    began = time.perf_counter()
    with redirect_stdout(out):
        code = main(["retention", *argv])
    assert code == 0, out.getvalue()
    return time.perf_counter() - began, out.getvalue().splitlines()[-1]


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="an fsspec URL (default: a new temporary directory)")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--files", type=int, default=4, help="span (and log) part files per hour")
    parser.add_argument("--payloads", type=int, default=200, help="bodies per day")
    args = parser.parse_args()
    store = args.store or tempfile.mkdtemp(prefix="obsml-retention-")
    began = time.perf_counter()
    written = fill(store, args.days, args.files, args.payloads)
    filled = time.perf_counter() - began
    dry, listed = timed("--store", store, "--older-than", "30d")
    deleted, summary = timed("--store", store, "--older-than", "30d", "--yes")
    again, nothing = timed("--store", store, "--older-than", "30d", "--yes")
    print(json.dumps({
        "store": store.split("://")[0] if "://" in store else "local", "objects": written,
        "partitions": args.days * 49, "fill_s": round(filled, 2), "dry_run_s": round(dry, 2),
        "delete_s": round(deleted, 2), "second_run_s": round(again, 2), "dry_run": listed, "deleted": summary,
        "second_run": nothing,
    }, indent=2))


if __name__ == "__main__":
    main_()
