"""Which files of a listing a reader reads, once ``obsml compact`` has been there (README: "Compaction").

In a closed partition folder (an hour of ``traces/`` or ``logs/``, a day of a model-data identifier)
``obsml compact`` writes ``compacted-<id>.parquet``, then, last, ``compacted-<id>.manifest.json``
naming the part files it holds. The rule every reader follows, on one listing:

- a parquet without its manifest is not read (being written, or left by a run that died), nor a
  manifest without its parquet;
- a manifest's parquet is read, and the part files it names are not, whether still there or not;
- manifests are taken in id order (``<utc time>-<random>``), and one naming a part file that an
  earlier one names already is ignored with its parquet (two runs that overlapped).

So a listing sees either the parts, or a manifest and its parquet (the parts possibly still there,
ignored): never a span twice, never none. The parts are deleted only after a grace period, so a
query that listed them before the manifest appeared still finds them.
"""

from __future__ import annotations

import io
import json
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

PREFIX = "compacted-"
PARQUET = ".parquet"
MANIFEST = ".manifest.json"
FORMAT = "obsml.compacted/1"
# The keys of a span or log line kept as JSON text in a compacted parquet (obsml._views' JSON columns).
JSON_KEYS = ("attributes", "events", "resource", "body")
# <yyyymmddThhmmssffffffZ>-<8 hex>: sorts by time (to the microsecond), then at random.
ID = re.compile(r"\d{8}T\d{12}Z-[0-9a-f]{8}")


class StoreReader(Protocol):
    """What is read here of ``obsml._reader.StoreReader`` (which reads through this module)."""

    fs: Any
    root: str


@dataclass(frozen=True)
class Manifest:
    """One compacted file of a partition folder: its id, the part files it replaced, and the document."""

    folder: str
    id: str
    sources: frozenset[str]  # names in ``folder``
    document: dict[str, Any]

    @property
    def parquet(self) -> str:
        return f"{self.folder}/{PREFIX}{self.id}{PARQUET}"

    @property
    def path(self) -> str:
        return f"{self.folder}/{PREFIX}{self.id}{MANIFEST}"


def is_compacted(path: str) -> bool:
    """Whether ``path`` is one of compaction's files (a parquet or a manifest), not a part file."""
    return path.rpartition("/")[2].startswith(PREFIX)


def compacted_id(path: str) -> str | None:
    """The id of a compaction file's name, or None for another file."""
    name = path.rpartition("/")[2]
    for suffix in (MANIFEST, PARQUET):
        if name.startswith(PREFIX) and name.endswith(suffix) and ID.fullmatch(name[len(PREFIX):-len(suffix)]):
            return name[len(PREFIX):-len(suffix)]
    return None


def parse_manifest(path: str, data: bytes) -> Manifest | None:
    """The manifest at ``path`` (relative to the store), or None when it is not one (never raises)."""
    try:
        document = json.loads(data)
        sources = frozenset(str(source["name"]) for source in document["sources"])
        ok = document.get("format") == FORMAT and isinstance(document.get("parquet"), dict)
    except (ValueError, TypeError, KeyError):
        return None
    identifier = compacted_id(path)
    if not ok or identifier is None:
        return None
    return Manifest(path.rpartition("/")[0], identifier, sources, document)


def manifests(reader: StoreReader, listed: Iterable[str]) -> dict[str, list[Manifest]]:
    """The manifests of ``listed`` by folder, in id order; one that cannot be parsed, or whose parquet is not
    listed, is left out (the part files it names are read).

    Raises what the filesystem raises when a manifest cannot be fetched (as a listing does).
    """
    listed = set(listed)
    paths = sorted(path for path in listed if path.endswith(MANIFEST) and compacted_id(path) is not None)
    if not paths:
        return {}
    # One call for them all: an async filesystem (abfs) fetches them concurrently.
    fetched = reader.fs.cat([f"{reader.root}/{path}" for path in paths], on_error="return")
    found: dict[str, list[Manifest]] = defaultdict(list)
    for path in paths:
        data = fetched.get(f"{reader.root}/{path}")
        if isinstance(data, Exception) and not isinstance(data, FileNotFoundError):
            raise data  # the store failing; a manifest gone since the listing is as if never listed
        manifest = parse_manifest(path, data) if isinstance(data, bytes) else None
        # Its parquet is put before it: a listing without it is one after a run deleted it (see obsml._compact).
        if manifest is not None and manifest.parquet in listed:
            found[manifest.folder].append(manifest)
    return {folder: sorted(found[folder], key=lambda manifest: manifest.id) for folder in found}


def accepted(in_folder: list[Manifest]) -> tuple[list[Manifest], list[Manifest]]:
    """The manifests of one folder (id order) that count, and those ignored for naming a part another names."""
    counted: list[Manifest] = []
    ignored: list[Manifest] = []
    covered: set[str] = set()
    for manifest in in_folder:
        if manifest.sources & covered:
            ignored.append(manifest)
        else:
            counted.append(manifest)
            covered |= manifest.sources
    return counted, ignored


def readable(reader: StoreReader, listed: list[str]) -> list[str]:
    """The files of ``listed`` (relative paths, any folders) a reader reads: part files no counted
    manifest names, and the parquet of each counted manifest; sorted."""
    by_folder = manifests(reader, listed)
    if not by_folder:
        return [path for path in listed if not is_compacted(path)]
    replaced: set[str] = set()
    read: list[str] = []
    for folder, in_folder in by_folder.items():
        for manifest in accepted(in_folder)[0]:
            replaced |= {f"{folder}/{name}" for name in manifest.sources}
            read.append(manifest.parquet)
    read += [path for path in listed if not is_compacted(path) and path not in replaced]
    return sorted(read)


def compacted_lines(data: bytes) -> list[dict[str, Any]]:
    """The records of a compacted parquet of spans or log records, as their JSON lines were (file order).

    Needs pyarrow (the ``query`` extra, which ``obsml compact`` needs too).
    """
    import pyarrow.parquet as pq

    records: list[dict[str, Any]] = pq.read_table(io.BytesIO(data)).to_pylist()
    for record in records:
        del record["filename"]
        for key, value in record.items():
            if isinstance(value, datetime):  # as the writer formats it (obsml._exporters._iso)
                record[key] = value.astimezone(timezone.utc).isoformat(timespec="microseconds")
            elif key in JSON_KEYS and isinstance(value, str):
                record[key] = json.loads(value)
    return records
