"""``obsml compact``: each closed partition's part files rewritten into one Parquet file (README: "Compaction").

A partition is an hour folder of ``traces/`` or ``logs/``, or a day folder of a model-data
identifier; it is closed once its hour (day) ended more than ``--older-than`` ago. For each closed
partition, the part files no manifest names yet (all of them the first time, late ones after) are
read by DuckDB into a local temporary Parquet file, which is put into the store as
``compacted-<id>.parquet``; then, last, ``compacted-<id>.manifest.json`` names the part files it
replaced. Readers follow ``obsml._compacted``'s rule. A later run deletes the replaced part files
once their manifest is older than ``--grace``, and the leftovers of runs that died or overlapped.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import IO, Any, Literal

from ._compacted import FORMAT, MANIFEST, PARQUET, PREFIX, Manifest, accepted, compacted_id, is_compacted, manifests
from ._exceptions import ObsmlError
from ._objects import one_line_error
from ._progress import Progress
from ._query import (
    LOGS,
    ROOT,
    SPANS,
    _day,
    _hour_days,
    _openable,
    _text,
    subfolders,
    union_sql,
    window_sql,
)
from ._reader import StoreReader
from ._secrets import scrub
from ._views import _LOG_LINE, _SPAN_LINE, connect, load_duckdb

DEFAULT_OLDER_THAN = "2h"
DEFAULT_GRACE = "1h"
Kind = Literal["spans", "logs", "modeldata"]
_SUFFIXES = {"spans": (".jsonl",), "logs": (".jsonl",), "modeldata": (".jsonl", ".csv", ".parquet")}


@dataclass
class Partition:
    """One partition folder (relative to the store) and every file listed in it."""

    kind: Kind
    folder: str
    listed: list[str]


@dataclass
class Totals:
    """What a run did, for its summary line."""

    partitions: int = 0
    parts: int = 0
    rows: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    deleted: int = 0
    failed: list[str] = field(default_factory=list)


def run_compact(
    store: str, *, older_than: timedelta, grace: timedelta, out: IO[str] | None = None, err: IO[str] | None = None,
    now: datetime | None = None,
) -> int:
    """Compact ``store``'s closed partitions; returns the exit status.

    0: done (or nothing to do); 1: some partition could not be compacted (said, the others done);
    2: DuckDB missing, or the store cannot be opened or listed (one line).
    """
    out, err = out or sys.stdout, err or sys.stderr
    now = now or datetime.now(timezone.utc)
    try:
        duckdb = load_duckdb()
        reader = StoreReader.open_existing(store)
    except (ImportError, ObsmlError) as exc:
        print(f"obsml compact: {exc}", file=err)
        return 2
    shown = scrub(reader.shown())  # a URL may carry a SAS token
    try:
        found = list(partitions(reader, now - older_than))
    except Exception as exc:  # whatever the filesystem raises (adlfs: the Azure SDK's errors), in one line
        print(f"obsml compact: cannot read {shown}: {one_line_error(exc)}", file=err)
        return 2
    totals = Totals()
    progress = Progress("obsml compact", max(len(found), 1), err)
    connection = connect(duckdb, reader)
    try:
        for partition in found:
            progress.step(partition.folder)
            try:
                _compact(reader, connection, partition, now, grace, totals)
            except Exception as exc:  # a part DuckDB cannot read, the store failing: said, the others go on
                totals.failed.append(f"{partition.folder}: {one_line_error(exc)}")
    finally:
        progress.close()
        connection.close()
    for failure in totals.failed:
        print(f"obsml compact: cannot compact {failure}", file=err)
    if totals.partitions or totals.deleted:
        ratio = f" ({totals.bytes_after / totals.bytes_before:.0%} of the size)" if totals.bytes_before else ""
        print(f"obsml compact: {totals.partitions} partitions compacted: {totals.parts} part files, "
              f"{totals.rows} rows, {totals.bytes_before:,} bytes into {totals.bytes_after:,}{ratio}; "
              f"{totals.deleted} replaced files deleted", file=out)
    else:
        closed = f"{now - older_than:%Y-%m-%d %H:%M}"
        print(f"obsml compact: nothing to do in {shown} (partitions closed before {closed} UTC)", file=out)
    return 1 if totals.failed else 0


def partitions(reader: StoreReader, cutoff: datetime) -> Iterator[Partition]:
    """The partitions of ``reader`` that ended before ``cutoff``, each with its listing (one per day or identifier)."""
    hourly: tuple[tuple[str, Kind], ...] = ((SPANS, "spans"), (LOGS, "logs"))
    for top, kind in hourly:
        for day in _hour_days(reader, top):
            first = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
            if first + timedelta(hours=1) > cutoff:
                continue
            by_hour: dict[str, list[str]] = defaultdict(list)
            for path in reader.files(f"{top}/{day:%Y/%m/%d}"):
                folder, _, _ = path.rpartition("/")
                hour = folder.rpartition("/")[2]
                if path.count("/") == 5 and hour.isdigit() and first + timedelta(hours=int(hour) + 1) <= cutoff:
                    by_hour[folder].append(path)
            yield from (Partition(kind, folder, listed) for folder, listed in sorted(by_hour.items()))
    for service in subfolders(reader, ROOT):
        for model in subfolders(reader, f"{ROOT}/{service}"):
            for version in subfolders(reader, f"{ROOT}/{service}/{model}"):
                for identifier in subfolders(reader, f"{ROOT}/{service}/{model}/{version}"):
                    top = f"{ROOT}/{service}/{model}/{version}/{identifier}"
                    by_day: dict[str, list[str]] = defaultdict(list)
                    for path in reader.files(top):
                        below = path[len(top) + 1:].split("/")  # yyyy, mm, dd, name
                        at = _day(*below[:3]) if len(below) == 4 else None
                        if at is not None and datetime(at.year, at.month, at.day, tzinfo=timezone.utc) + \
                                timedelta(days=1) <= cutoff:
                            by_day[path.rpartition("/")[0]].append(path)
                    yield from (Partition("modeldata", folder, listed) for folder, listed in sorted(by_day.items()))


def _compact(
    reader: StoreReader, connection: Any, partition: Partition, now: datetime, grace: timedelta, totals: Totals,
) -> None:
    """Compact what is new in one partition, then delete what a past run replaced, once past the grace."""
    in_folder = manifests(reader, partition.listed).get(partition.folder, [])
    counted, ignored = accepted(in_folder)
    replaced = {f"{partition.folder}/{name}" for manifest in counted for name in manifest.sources}
    pending = [path for path in partition.listed if not is_compacted(path) and path not in replaced
               and path.endswith(_SUFFIXES[partition.kind])]
    if pending:
        _write(reader, connection, partition, pending, totals)
    listed = set(partition.listed)
    doomed = [path for manifest in counted if _written(manifest) + grace <= now
              for path in sorted(replaced & listed) if path.rpartition("/")[2] in manifest.sources]
    # A manifest ignored for overlapping an earlier one (two runs at once): its manifest first, then its parquet.
    for manifest in ignored:
        if _written(manifest) + grace <= now:
            doomed += [path for path in (manifest.path, manifest.parquet) if path in listed]
    # Leftovers of runs that died or overlapped (their ids say when they began): a parquet without its
    # manifest, a manifest without its parquet (or that cannot be parsed). Readers ignore both already.
    named = {path for manifest in in_folder for path in (manifest.parquet, manifest.path)}
    for path in partition.listed:
        if path not in named and (began := _began(path)) is not None and began + grace <= now:
            doomed.append(path)
    if doomed:
        reader.fs.rm([f"{reader.root}/{path}" for path in doomed])
        totals.deleted += len(doomed)


def _write(reader: StoreReader, connection: Any, partition: Partition, pending: list[str], totals: Totals) -> None:
    """One compacted parquet of ``pending``, put into the store, then its manifest."""
    identifier = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(4)}"
    files = [_openable(reader, path) for path in pending]
    sizes = {path: int(info["size"]) for path, info in _info(reader, pending).items()}
    with tempfile.TemporaryDirectory(prefix="obsml-compact-") as scratch:
        local = os.path.join(scratch, f"{PREFIX}{identifier}{PARQUET}")
        connection.execute(f"COPY ({_select(connection, partition, files)}) "
                           f"TO {_text(local)} (FORMAT parquet, COMPRESSION zstd)")
        [(rows,)] = connection.execute(f"SELECT count(*) FROM read_parquet({_text(local)})").fetchall()
        digest, size = _sha256(local)
        parquet = f"{partition.folder}/{PREFIX}{identifier}{PARQUET}"
        _put(reader, parquet, local=local)
    document = {
        "format": FORMAT,
        "id": identifier,
        "kind": partition.kind,
        "parquet": {"name": parquet.rpartition("/")[2], "size": size, "sha256": digest, "rows": int(rows)},
        "sources": [{"name": path.rpartition("/")[2], "size": sizes[path]} for path in pending],
        "written_at": datetime.now(timezone.utc).isoformat(),
    }
    # Last: from here on, readers read the parquet instead of the part files it names.
    _put(reader, f"{partition.folder}/{PREFIX}{identifier}{MANIFEST}", data=json.dumps(document, indent=1).encode())
    totals.partitions += 1
    totals.parts += len(pending)
    totals.rows += int(rows)
    totals.bytes_before += sum(sizes.values())
    totals.bytes_after += size


def _select(connection: Any, partition: Partition, files: list[str]) -> str:
    """The rows of ``files`` as the compacted parquet keeps them: what the views read from the part files."""
    if partition.kind == "modeldata":
        by_suffix: dict[tuple[str, str, str, str], list[str]] = defaultdict(list)
        for path in files:
            by_suffix[("", "", "", path.rpartition(".")[2])].append(path)
        union = union_sql(by_suffix, with_service=False, with_version=False)
        assert union is not None  # files is not empty
        relation = connection.sql(union)
        # As a view casts them (ids as text, collected_at a time, JSON integers as BIGINT), so that a
        # compacted day reads back with the types a fresh one has.
        return window_sql(union, dict(zip(relation.columns, map(str, relation.types), strict=True)), None, None)
    declared = _SPAN_LINE if partition.kind == "spans" else _LOG_LINE
    columns = "{" + ", ".join(f"{_text(key)}: {_text(kind)}" for key, kind in declared.items()) + "}"
    # The part file's name, relative to the store (the views derive the writer from it; no host or
    # container of the store lands in the data).
    name = f"{_text(partition.folder + '/')} || regexp_extract(filename, '[^/]+$')"
    return (f"SELECT * REPLACE ({name} AS filename) FROM read_json({_list(files)}, format='newline_delimited', "
            f"filename=true, columns={columns})")


def _info(reader: StoreReader, paths: list[str]) -> dict[str, dict[str, Any]]:
    return {path: reader.fs.info(f"{reader.root}/{path}") for path in paths}


def _sha256(local: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(local, "rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _put(reader: StoreReader, relative: str, *, local: str | None = None, data: bytes = b"") -> None:
    """``relative`` in the store: under a hidden name then renamed on a local store; one put elsewhere
    (an object appears whole, and a parquet is read only once its manifest is there)."""
    final = f"{reader.root}/{relative}"
    protocols = (reader.fs.protocol,) if isinstance(reader.fs.protocol, str) else reader.fs.protocol
    target = final
    if "file" in protocols:
        folder, _, name = final.rpartition("/")
        target = f"{folder}/.{name}.{secrets.token_hex(4)}.tmp"  # hidden: no listing of a reader shows it
    if local is not None:
        reader.fs.put_file(local, target)
    else:
        reader.fs.pipe_file(target, data)
    if target != final:
        os.replace(target, final)


def _written(manifest: Manifest) -> datetime:
    """When a manifest appeared (its ``written_at``; else when its run began)."""
    try:
        return datetime.fromisoformat(str(manifest.document["written_at"]))
    except (KeyError, ValueError):
        return _began(manifest.path) or datetime.min.replace(tzinfo=timezone.utc)


def _began(path: str) -> datetime | None:
    identifier = compacted_id(path)
    if identifier is None:
        return None
    return datetime.strptime(identifier[:22], "%Y%m%dT%H%M%S%fZ").replace(tzinfo=timezone.utc)


def _list(paths: list[str]) -> str:
    return "[" + ", ".join(map(_text, paths)) + "]"
