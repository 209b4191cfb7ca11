"""``obsml retention``: the store's whole date partitions older than a limit, listed or deleted
(README: "Retention", issue 20 item 3).

A partition is a date folder of the store layout: an hour of ``traces/`` and ``logs/``; a day of
``payloads/``, of a model-data identifier under ``modeldata/`` and ``modeldata-media/``, and of
``_obsml/status/``. It is old when its end is at or before the cutoff (now less the limit). Kept
whatever the limit: the current partition (its end is after now), and any partition a writer may
still write, from the writers' status objects (:func:`holds`). A partition goes whole: its part
files, payloads, compacted Parquet and manifests (issue 20 item 4), then its empty folders.
Nothing here imports DuckDB: listing and deleting are fsspec calls.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import IO

from ._exceptions import ConfigError
from ._objects import STATUS_FOLDER, describe_error, one_line_error
from ._progress import Progress
from ._query import subfolders
from ._reader import StoreReader
from ._secrets import scrub
from ._sinks import scheme_of_protocol
from ._status_command import Status, _latest, _valid, _with_state

# --include names, and the folders each takes: (top folder, folders between it and the date, hourly).
# logs/ goes with traces/ (the requests' log lines, joined to their spans), modeldata-media/ with
# modeldata/ (the rows name its objects).
INCLUDES: dict[str, tuple[tuple[str, int, bool], ...]] = {
    "traces": (("traces", 0, True), ("logs", 0, True)),
    "payloads": (("payloads", 0, False),),
    "modeldata": (("modeldata", 4, False), ("modeldata-media", 4, False)),
    "status": ((STATUS_FOLDER, 0, False),),
}
# How far back of its last status a writer may still write: a request's spans and bodies are filed
# under its start, written when it ends; queued objects follow within a flush interval.
WRITER_GRACE = timedelta(hours=1)
# Objects deleted in one call on a remote store: its round trips, not the partitions, set the time
# (adlfs sends a call's deletes concurrently). A local disk deletes one partition at a time.
BATCH_OBJECTS = 500
COMMAND = "obsml retention"


@dataclass(frozen=True)
class Partition:
    """One date folder (relative to the store's root) and the time it covers, ``[start, end)``."""

    folder: str
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Hold:
    """Partitions ending after ``since`` are kept: a writer may still write them, for ``why``."""

    since: datetime
    why: str


@dataclass
class Plan:
    """What a run deletes (each old partition's objects: relative path → bytes) and what it keeps."""

    old: dict[Partition, dict[str, int]] = field(default_factory=dict)
    kept: list[tuple[Partition, str]] = field(default_factory=list)


def run_retention(
    store: str, *, cutoff: datetime, includes: Sequence[str] = tuple(INCLUDES), delete: bool = False,
    out: IO[str] | None = None, err: IO[str] | None = None,
) -> int:
    """List (or with ``delete``, delete) the partitions of ``store`` that ended by ``cutoff``.

    0: listed, or all deleted; 1: a partition could not be deleted (named; run again to finish);
    2: a cutoff in the future, or a store that cannot be opened or listed.
    """
    out, err = out or sys.stdout, err or sys.stderr  # looked up now, not bound at import
    now = datetime.now(timezone.utc)
    if cutoff > now:
        print(f"{COMMAND}: --older-than: {_shown(cutoff)} is in the future", file=err)
        return 2
    try:
        reader = StoreReader.open_existing(store)
    except ConfigError as exc:
        print(f"{COMMAND}: {exc}", file=err)
        return 2
    shown = scrub(reader.shown())  # a URL may carry a SAS token
    try:
        plan = make_plan(reader, includes, cutoff, now)
    except Exception as exc:  # whatever the filesystem raises (adlfs: the Azure SDK's errors), in one line
        print(f"{COMMAND}: cannot read {shown}: {one_line_error(exc)}", file=err)
        return 2
    print(f"{COMMAND} of {shown}: partitions of {', '.join(includes)} that ended by {_shown(cutoff)}", file=out)
    _print_plan(plan, out)
    objects, size = sum(map(len, plan.old.values())), sum(sum(found.values()) for found in plan.old.values())
    amount = f"{len(plan.old):,} partitions: {objects:,} objects, {_bytes(size)}"
    if not plan.old:
        print("nothing to delete", file=out)
        return 0
    if not delete:
        print(f"would delete {amount}; a dry run: --yes deletes them", file=out)
        return 0
    progress = Progress(COMMAND, len(plan.old), err)
    done, failed = 0, None
    try:
        for batch in _batches(plan.old, 1 if _local(reader) else BATCH_OBJECTS):
            try:
                delete_partitions(reader, {partition: plan.old[partition] for partition in batch})
            except Exception as exc:
                failed = (batch, describe_error(exc))
                break
            for partition in batch:
                progress.step(partition.folder)
            done += len(batch)
    finally:  # also when interrupted: the terminal's line is left clean
        progress.close()
    if failed is not None:
        batch, reason = failed
        which = batch[0].folder if len(batch) == 1 else f"{batch[0].folder} to {batch[-1].folder} ({len(batch)})"
        print(f"{COMMAND}: cannot delete {which} of {shown}: {' '.join(reason.split())}; {done:,} "
              f"of {len(plan.old):,} partitions deleted, run it again to finish", file=err)
        return 1
    print(f"deleted {amount}", file=out)
    return 0


def make_plan(reader: StoreReader, includes: Sequence[str], cutoff: datetime, now: datetime) -> Plan:
    """The old partitions of ``includes`` with their objects, and the old ones kept for a writer."""
    writer_holds = holds(reader, cutoff, now)
    plan = Plan()
    old: list[Partition] = []
    for name in includes:
        for top, depth, hourly in INCLUDES[name]:
            for base in _bases(reader, top, depth):
                for partition in _partitions(reader, base, hourly, cutoff):
                    if partition.end > now:  # the current partition, whatever the limit
                        continue
                    hold = next((hold for hold in writer_holds if partition.end > hold.since), None)
                    if hold is None:
                        old.append(partition)
                    else:
                        plan.kept.append((partition, hold.why))
    found = _objects(reader, old)
    # An empty folder is listed on a local disk only, where it is there to remove (a blob store has none).
    plan.old = {partition: found[partition] for partition in old if found[partition] or _local(reader)}
    return plan


def holds(reader: StoreReader, cutoff: datetime, now: datetime) -> list[Hold]:
    """The writers that may still write, from their latest status, earliest hold first.

    A writer may still write while it has not exited (its exit status comes last: a remote store's
    spool delivers in commit order, so every object before it is in the store) and is alive, or is
    stale but was seen after the cutoff (a hung process, or one whose store was unreachable: its
    status waits in its spool). One silent for longer than the limit is taken for gone.
    """
    # A writer's latest status lies in the day folder of its last heartbeat (a live one's may be
    # yesterday's); an older one, of a writer last seen before the cutoff, holds nothing.
    statuses = _statuses(reader, min(cutoff, now - timedelta(days=1)).date())
    found = []
    for status in (_with_state(status, now) for status in _latest(statuses)):
        last_seen = datetime.fromisoformat(status["last_seen"])
        if status["exited"] or (status["state"] != "alive" and last_seen < cutoff):
            continue
        who = f"writer {status['writer']} ({status['host']}, pid {status['pid']})"
        why = f"{who} is alive" if status["state"] == "alive" else f"{who} is stale, last seen {_shown(last_seen)}"
        found.append(Hold(last_seen - WRITER_GRACE, f"{why} and may still write it"))
    return sorted(found, key=lambda hold: hold.since)


def _statuses(reader: StoreReader, since: date) -> list[Status]:
    """The status objects of the day folders from ``since`` on: one listing, then fetched together
    (an async filesystem, abfs, fetches them concurrently); one unreadable or malformed is left out."""
    folder = f"{STATUS_FOLDER}/"
    names = [
        name for name in reader.files(STATUS_FOLDER)
        if name.endswith(".json") and (day := _start(*name[len(folder):].split("/")[:3])) and day.date() >= since
    ]
    found = reader.fs.cat([f"{reader.root}/{name}" for name in names], on_error="omit") if names else {}
    statuses = []
    for data in found.values():
        with suppress(ValueError):
            if _valid(status := json.loads(data)):
                statuses.append(status)
    return statuses


def delete_partitions(reader: StoreReader, objects: dict[Partition, dict[str, int]]) -> None:
    """Delete the partitions' ``objects``, then on a local disk the folders left empty.

    A compaction's manifest goes after the parts it lists and before its Parquet, so that a query
    running meanwhile never reads a part twice nor a manifest without its Parquet; what a failure
    leaves is deleted by the next run (a missing object is no error).
    """
    names = sorted(name for found in objects.values() for name in found)
    manifests = [name for name in names if _compacted(name) and name.endswith(".manifest.json")]
    compacted = [name for name in names if _compacted(name) and name not in manifests]
    rest = [name for name in names if not _compacted(name)]
    for group in (rest, manifests, compacted):
        if group:
            _remove(reader, [f"{reader.root}/{name}" for name in group])
    if _local(reader):
        for partition in objects:
            _remove_empty_folders(reader, partition.folder)


def _batches(old: dict[Partition, dict[str, int]], size: int) -> Iterator[list[Partition]]:
    """Partitions in order, grouped until a group holds ``size`` objects: one call deletes a group."""
    batch: list[Partition] = []
    count = 0
    for partition, found in old.items():
        batch.append(partition)
        count += len(found)
        if count >= size:
            yield batch
            batch, count = [], 0
    if batch:
        yield batch


def _local(reader: StoreReader) -> bool:
    return scheme_of_protocol(reader.fs.protocol) in ("file", "local")


def _compacted(relative: str) -> bool:
    return relative.rsplit("/", 1)[-1].startswith("compacted-")


def _remove(reader: StoreReader, paths: list[str]) -> None:
    try:
        reader.fs.rm(paths)  # adlfs deletes a list concurrently
    except FileNotFoundError:  # gone meanwhile (another run, a cleaner): the others one by one
        for path in paths:
            with suppress(FileNotFoundError):
                reader.fs.rm(path)


def _remove_empty_folders(reader: StoreReader, folder: str) -> None:
    """The partition's folder and its empty subfolders, then each parent up to its top folder that is empty."""
    local = f"{reader.root}/{folder}"
    for below, _, _ in os.walk(local, topdown=False):  # subfolders before their folder
        with suppress(OSError):  # not empty: a writer wrote meanwhile
            os.rmdir(below)
    parts = folder.split("/")
    tops = 2 if folder.startswith(f"{STATUS_FOLDER}/") else 1
    for end in range(len(parts) - 1, tops, -1):
        try:
            os.rmdir(f"{reader.root}/{'/'.join(parts[:end])}")
        except OSError:  # not empty (or gone): the folders above are not either
            break


def _bases(reader: StoreReader, top: str, depth: int) -> Iterator[str]:
    """The folders ``depth`` levels under ``top`` (a model-data identifier is 4: service/model/version/id)."""
    if depth == 0:
        yield top
        return
    for name in subfolders(reader, top):
        yield from _bases(reader, f"{top}/{name}", depth - 1)


def _partitions(reader: StoreReader, base: str, hourly: bool, cutoff: datetime) -> Iterator[Partition]:
    """The date folders under ``base`` that ended by ``cutoff``; a year, month or day starting after it
    is not listed (its partitions are all younger). Folders not named as the writer names them are skipped."""
    for yyyy in _numbered(subfolders(reader, base), 4):
        if (year := _start(yyyy)) is None or year >= cutoff:
            continue
        for mm in _numbered(subfolders(reader, f"{base}/{yyyy}"), 2):
            if (month := _start(yyyy, mm)) is None or month >= cutoff:
                continue
            for dd in _numbered(subfolders(reader, f"{base}/{yyyy}/{mm}"), 2):
                if (day := _start(yyyy, mm, dd)) is None or day >= cutoff:
                    continue
                if not hourly:
                    if day + timedelta(days=1) <= cutoff:
                        yield Partition(f"{base}/{yyyy}/{mm}/{dd}", day, day + timedelta(days=1))
                    continue
                for hh in _numbered(subfolders(reader, f"{base}/{yyyy}/{mm}/{dd}"), 2):
                    hour = day + timedelta(hours=int(hh))
                    if int(hh) < 24 and hour + timedelta(hours=1) <= cutoff:
                        yield Partition(f"{base}/{yyyy}/{mm}/{dd}/{hh}", hour, hour + timedelta(hours=1))


def _numbered(names: list[str], digits: int) -> list[str]:
    return [name for name in names if len(name) == digits and name.isascii() and name.isdigit()]


def _start(yyyy: str, mm: str = "01", dd: str = "01") -> datetime | None:
    try:
        return datetime(int(yyyy), int(mm), int(dd), tzinfo=timezone.utc)
    except ValueError:  # not a date (month 13): not a partition
        return None


def _objects(reader: StoreReader, partitions: list[Partition]) -> dict[Partition, dict[str, int]]:
    """Every object of each partition (hidden temporaries too), with its size: one listing per
    parent folder (a day's hours are listed together), not one per partition."""
    by_parent: dict[str, list[Partition]] = defaultdict(list)
    for partition in partitions:
        by_parent[partition.folder.rsplit("/", 1)[0] if _hour(partition) else partition.folder].append(partition)
    found: dict[Partition, dict[str, int]] = {partition: {} for partition in partitions}
    prefix = f"{reader.root}/"
    for parent, members in by_parent.items():
        try:
            listed = reader.fs.find(f"{reader.root}/{parent}", detail=True)
        except FileNotFoundError:
            continue
        folders = {f"{partition.folder}/": partition for partition in members}
        for path, info in listed.items():
            relative = str(path).removeprefix(prefix)
            owner = folders.get(relative.rsplit("/", 1)[0] + "/") if _hour(members[0]) else members[0]
            if owner is not None and info.get("type", "file") == "file":
                found[owner][relative] = int(info.get("size") or 0)
    return found


def _hour(partition: Partition) -> bool:
    return partition.end - partition.start == timedelta(hours=1)


def _print_plan(plan: Plan, out: IO[str]) -> None:
    rows = [(p.folder, f"{len(found):,}", f"{sum(found.values()):,}") for p, found in plan.old.items()]
    if rows:
        print(file=out)
        _print_table([("PARTITION", "OBJECTS", "BYTES"), *rows], out)
    if plan.kept:
        print(file=out)
        print("kept, though old enough:", file=out)
        width = max(len(partition.folder) for partition, _ in plan.kept)
        for partition, why in plan.kept:
            print(f"  {partition.folder:<{width}}  {why}", file=out)
    print(file=out)


def _print_table(rows: list[tuple[str, str, str]], out: IO[str]) -> None:
    """Aligned to the terminal: a partition too long for it loses its start, which the others share."""
    numbers = [max(len(row[i]) for row in rows) for i in (1, 2)]
    room = max(shutil.get_terminal_size().columns - sum(numbers) - 4, 20)
    first = min(max(len(row[0]) for row in rows), room)
    for folder, objects, size in rows:
        folder = folder if len(folder) <= first else "…" + folder[len(folder) - first + 1:]
        print(f"{folder:<{first}}  {objects:>{numbers[0]}}  {size:>{numbers[1]}}", file=out)


def _bytes(size: int) -> str:
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if size >= scale:
            return f"{size:,} bytes ({size / scale:.1f} {unit})"
    return f"{size:,} bytes"


def _shown(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")
