"""``obsml export DEST``: the store's data objects copied, incrementally, to another fsspec URL (issue 20).

A run lists the source's data objects (``--include``, ``--since``), skips those the destination's
manifest holds with the same size and version, and copies the rest, a few at a time, recording each
once it is whole and checked there (``obsml._export_target``). An object an interrupted run wrote
but had not recorded is found there with the same size and sha256 and recorded without being
written again; a second run copies nothing. README: "Continuous export".
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any, TypeVar

from ._exceptions import ConfigError
from ._export_target import _WHOLE, Destination, ExportError, Listed, Manifest, _day_folders, _hash
from ._objects import one_line_error
from ._progress import Progress
from ._reader import StoreReader
from ._secrets import scrub

# What each --include name brings: the requests' log records go with their spans (they carry the
# spans' trace and span ids), model data with its offloaded media.
INCLUDES = {"traces": ("traces", "logs"), "payloads": ("payloads",), "modeldata": ("modeldata", "modeldata-media")}
_HOURLY = ("traces", "logs")  # <top>/<yyyy>/<mm>/<dd>/<hh>/<name>; the others end in <yyyy>/<mm>/<dd>/<name>
_MAX_FAILURES = 10  # then the run stops: a destination that fails this often is down
_THREADS = 8  # objects copied at once: a remote store's latency, not the bandwidth, bounds one at a time
_COMPACTION_MANIFEST = ".manifest.json"  # compacted-<id>.manifest.json (issue 20, item 4)
T = TypeVar("T")


@dataclass
class Tally:
    copied: int = 0
    copied_bytes: int = 0
    up_to_date: int = 0
    found: int = 0  # already whole at the destination (an interrupted run's), recorded without a rewrite
    vanished: int = 0  # listed, then gone from the source before it was read (compaction, retention)
    failed: int = 0


def run_export(
    source: str, destination: str, *, since: datetime | None, include: tuple[str, ...] = tuple(INCLUDES),
    out: IO[str] | None = None, err: IO[str] | None = None,
) -> int:
    """Copy ``source``'s data objects to ``destination``; 0 when it is up to date, 1 when an object
    failed (or another export holds the destination), 2 when a store cannot be opened or read."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        reader = StoreReader.open_existing(source)  # before the destination is made: a mistyped --store copies nothing
        target = Destination.open(destination)
    except ConfigError as exc:
        print(f"obsml export: {exc}", file=err)
        return 2
    shown = scrub(target.shown)
    # Listings of an earlier run in this process must not hide new objects (fsspec caches them).
    reader.fs.invalidate_cache()
    target.fs.invalidate_cache()
    try:
        with target.locked() as held:
            if not held:
                print(f"obsml export: another export to {shown} is running; nothing done", file=err)
                return 1
            manifest = Manifest.load(target, _tops(include), since)
            try:
                listed = [item for top in _tops(include) for item in _listed(reader, top, since)]
            except Exception as exc:  # whatever the filesystem raises (adlfs: the Azure SDK's errors)
                print(f"obsml export: cannot read {scrub(reader.shown())}: {_one_line(exc)}", file=err)
                return 2
            tally = _copy_all(reader, target, manifest, listed, err)
    except Exception as exc:  # the destination: its lock, its manifest (read or written)
        print(f"obsml export: cannot use the destination {shown}: {_one_line(exc)}", file=err)
        return 2
    summary = (f"obsml export: copied {tally.copied} objects ({_bytes(tally.copied_bytes)}) to {shown}, "
               f"{tally.up_to_date} up to date")
    summary += f", {tally.found} already there recorded" if tally.found else ""
    summary += f", {tally.vanished} gone from the source meanwhile" if tally.vanished else ""
    summary += f", {tally.failed} failed" if tally.failed else ""
    print(summary, file=out)
    return 1 if tally.failed else 0


def _copy_all(reader: StoreReader, target: Destination, manifest: Manifest, listed: list[Listed],
              err: IO[str]) -> Tally:
    tally = Tally()
    work = [item for item in listed if not manifest.up_to_date(item)]
    tally.up_to_date = len(listed) - len(work)
    # A compaction manifest goes after the Parquet file it names: a reader of the copy that sees it
    # reads that file (issue 20, item 4), so it must not arrive first, nor without it.
    first = [item for item in work if not item.path.endswith(_COMPACTION_MANIFEST)]
    last = [item for item in work if item.path.endswith(_COMPACTION_MANIFEST)]
    failed_folders: set[str] = set()
    progress = Progress("obsml export", len(work), err)
    total_bytes, done_bytes = sum(item.size for item in work), 0
    pool = ThreadPoolExecutor(_THREADS, thread_name_prefix="obsml-export")
    try:
        for phase in (first, last):
            for item, outcome in _in_order(pool, lambda item: _copy_one(reader, target, manifest, item), phase,
                                           blocked=failed_folders if phase is last else set()):
                if isinstance(outcome, BaseException):
                    if isinstance(outcome, FileNotFoundError) and _source_gone(reader, item):
                        tally.vanished += 1
                    else:
                        tally.failed += 1
                        failed_folders.add(item.path.rpartition("/")[0])
                        _report(progress, err, f"{item.path}: {_one_line(outcome)}")
                else:
                    copied, digest = outcome
                    manifest.add(item, digest)
                    tally.copied += copied
                    tally.found += not copied
                    tally.copied_bytes += item.size if copied else 0
                done_bytes += item.size
                progress.step(f"{_bytes(done_bytes)} of {_bytes(total_bytes)}")
                manifest.flush_if_due()
                if tally.failed >= _MAX_FAILURES:
                    _report(progress, err, f"{tally.failed} objects failed: stopping")
                    return tally
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        progress.close()
        manifest.flush()
    return tally


def _in_order(pool: ThreadPoolExecutor, copy: Callable[[Listed], T], items: list[Listed], *, blocked: set[str],
              ) -> Iterator[tuple[Listed, T | BaseException]]:
    """``copy`` of each item, run by the pool a few ahead (objects in flight, not the whole list), in order.

    An item of a folder in ``blocked`` is not copied: a compaction manifest whose Parquet file failed
    must not arrive without it.
    """
    window: deque[tuple[Listed, Future[T]]] = deque()
    for n, item in enumerate(items, 1):
        if item.path.rpartition("/")[0] in blocked:
            window.append((item, _failed(ExportError("not copied: an object of its folder failed"))))
        else:
            window.append((item, pool.submit(copy, item)))
        while window and (len(window) >= 4 * _THREADS or n == len(items)):
            done, future = window.popleft()
            exc = future.exception()
            yield done, (exc if exc is not None else future.result())


def _failed(exc: Exception) -> Future[Any]:
    future: Future[Any] = Future()
    future.set_exception(exc)
    return future


def _copy_one(reader: StoreReader, target: Destination, manifest: Manifest, item: Listed) -> tuple[bool, str]:
    """Make ``item`` whole at the destination (on a pool thread): (whether it was written, its sha256).

    Not written when it is there already with the same bytes: copied by an interrupted run, which
    had not recorded it yet. The caller records it.
    """
    source = f"{reader.root}/{item.path}"
    if target.size_of(item.path) == item.size:
        digest = _hash(reader.fs, source, item.size)
        known = manifest.records.get(item.path)
        if (known is not None and known["sha256"] == digest) or (
            digest == _hash(target.fs, target.path(item.path), item.size)
        ):
            return False, digest
    if item.size <= _WHOLE:  # one GET and one PUT rather than a file's HEAD, GET, and upload of blocks
        return True, target.write(item, reader.fs.cat_file(source))
    with reader.fs.open(source, "rb") as file:
        return True, target.write(item, file)


def _tops(include: tuple[str, ...]) -> list[str]:
    return [top for name in include for top in INCLUDES[name]]


def _listed(reader: StoreReader, top: str, since: datetime | None) -> Iterator[Listed]:
    """The objects under ``top`` (with ``since``: in date partitions that end after it), hidden ones never."""
    folders = [top] if since is None else list(_day_folders(reader, top, since.date()))
    prefix = f"{reader.root}/"
    for folder in folders:
        try:
            found = reader.fs.find(f"{reader.root}/{folder}", detail=True)
        except FileNotFoundError:
            continue
        for path, info in sorted(found.items()):
            relative = path[len(prefix):] if path.startswith(prefix) else path
            if info.get("type") == "directory" or any(part.startswith(".") for part in relative.split("/")):
                continue  # a writer's temporary (.<name>.<host>-<pid>-<rand>.tmp): not whole yet
            if since is not None and top in _HOURLY and not _hour_ends_after(relative, since):
                continue
            version = info.get("etag") or info.get("mtime") or info.get("last_modified") or info.get("created")
            yield Listed(relative, int(info["size"]), str(version or ""))


def _hour_ends_after(relative: str, since: datetime) -> bool:
    parts = relative.split("/")  # top, yyyy, mm, dd, hh, name
    if len(parts) != 6 or not parts[4].isdigit():
        return True  # a day's own object (a compacted day): its day folder was chosen already
    hour = datetime(int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4]), tzinfo=timezone.utc)
    return hour >= since.replace(minute=0, second=0, microsecond=0)


def _source_gone(reader: StoreReader, item: Listed) -> bool:
    try:
        return not reader.fs.exists(f"{reader.root}/{item.path}")
    except Exception:
        return False


def _report(progress: Progress, err: IO[str], line: str) -> None:
    if progress.shown:
        err.write("\r\x1b[2K")  # the bar's line, cleared for the message; redrawn at the next step
    print(f"obsml export: {line}", file=err)


def _one_line(exc: BaseException) -> str:
    return " ".join(scrub(str(exc)).split()) if isinstance(exc, ExportError) else one_line_error(exc)


def _bytes(size: int) -> str:
    if size < 1000:
        return f"{size:,} bytes"
    scaled = float(size)
    for unit in ("KB", "MB", "GB"):
        scaled /= 1000
        if scaled < 1000 or unit == "GB":
            break
    return f"{scaled:.1f} {unit}"
