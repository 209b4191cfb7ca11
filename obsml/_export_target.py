"""Where ``obsml export`` writes: the destination (objects written whole, checked) and its manifest.

The manifest records what was copied, under ``_obsml/export/manifest/``: one JSON line per object
(path, size, sha256, the source's etag or mtime) in segment files written whole, one per batch and
date partition. An object is recorded only once it is whole and verified at the destination, so a
kill loses at most the last batch's records (README: "Continuous export").
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date, datetime, timezone
from hashlib import sha256
from pathlib import Path
from secrets import token_hex
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ._exceptions import ConfigError
from ._query import _day, subfolders
from ._reader import StoreReader
from ._store import _store_hint, make_private_dirs

_BELOW_MODEL_DATA = 4  # <service>/<model>/<version>/<identifier> before the date folders
_READ_BACK = ("payloads/", "modeldata-media/")  # bodies: read back whole at the destination and hashed
EXPORT_FOLDER = "_obsml/export"
MANIFEST_FOLDER = f"{EXPORT_FOLDER}/manifest"
_STAGING_FOLDER = f"{EXPORT_FOLDER}/staging"  # a local destination's objects before their rename
BATCH_OBJECTS = 100  # records are written at least this often (objects)...
BATCH_SECONDS = 2.0  # ...and this often (seconds): what a kill can cost is this batch's bookkeeping
_MAX_SEGMENTS = 32  # a manifest folder of more segments than this is merged into one at the next run
_CHUNK = 1 << 20
_WHOLE = 8 << 20  # objects up to this size are read and put in one request each (in memory)


class ExportError(Exception):
    """An object could not be copied as it is at the source; the message names it."""


@dataclass(frozen=True)
class Listed:
    """A data object of the source: its path under the root, size, and etag (or mtime)."""

    path: str
    size: int
    version: str


class Destination:
    """Where the copy goes: objects written whole (a local file renamed into place, an object store's put)."""

    def __init__(self, fs: Any, root: str, url: str) -> None:
        self.fs, self.root, self.url = fs, root.rstrip("/"), url
        self.local = isinstance(fs, LocalFileSystem)
        self.shown = self.root if self.local else str(fs.unstrip_protocol(self.root))

    @classmethod
    def open(cls, url: str) -> Destination:
        scheme = url.partition("://")[0] if "://" in url else "file"
        try:
            fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:  # never echo the URL: it may carry credentials
            raise ConfigError(f"the destination: cannot open it: {_store_hint(scheme, exc)}") from None
        return cls(fs, root, url)

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def size_of(self, relative: str) -> int | None:
        try:
            return int(self.fs.info(self.path(relative))["size"])
        except FileNotFoundError:
            return None

    def write(self, item: Listed, source: BinaryIO | bytes) -> str:
        """Copy ``source`` to ``item.path``, checked; its sha256. On failure nothing is left there."""
        digest, size = sha256(), 0
        final = self.path(item.path)
        if isinstance(source, bytes) and not self.local:
            digest.update(source)
            size = len(source)
            self._checked_size(item, size)
            self.fs.pipe_file(final, source)
        else:
            with self._written(final) as file:
                for chunk in _chunks(source):
                    digest.update(chunk)
                    size += len(chunk)
                    file.write(chunk)
                self._checked_size(item, size)
        self.fs.invalidate_cache(final)
        try:
            if (written := self.size_of(item.path)) != size:
                raise ExportError(f"{written} bytes at the destination, {size} copied")
            if item.path.startswith(_READ_BACK) and (read := _hash(self.fs, final, size)) != digest.hexdigest():
                raise ExportError(f"sha256 {read} at the destination, {digest.hexdigest()} copied")
        except BaseException:
            with suppress(Exception):
                self.fs.rm_file(final)
            raise
        return digest.hexdigest()

    @staticmethod
    def _checked_size(item: Listed, size: int) -> None:
        if size != item.size:
            raise ExportError(f"read {size} bytes from the source, which listed {item.size}")

    @contextmanager
    def _written(self, final: str) -> Iterator[BinaryIO]:
        if not self.local:
            # An object store's put appears whole; a close after a failure may still commit the
            # part written, so it is removed (the manifest never recorded it either way).
            try:
                with self.fs.open(final, "wb") as file:
                    yield file
            except BaseException:
                with suppress(Exception):
                    self.fs.rm_file(final)
                raise
            return
        # Private like the store's own files (0600 in 0700 folders), renamed into place whole.
        staging = self.path(_STAGING_FOLDER)
        make_private_dirs(staging)
        make_private_dirs(final.rpartition("/")[0])
        temporary = f"{staging}/{token_hex(8)}"
        try:
            with open(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600), "wb") as file:
                yield file
            os.replace(temporary, final)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def put(self, relative: str, data: bytes) -> None:
        """A small object (a manifest segment), whole."""
        with self._written(self.path(relative)) as file:
            file.write(data)

    @contextmanager
    def locked(self) -> Iterator[bool]:
        """Held by one export at a time: True, or False when another holds it.

        A local destination's lock is a file in it (``_obsml/export/lock``); a remote one's is a file
        of this host's cache named after a hash of the URL, so runs on one host (a cron job overlapping
        itself) exclude each other. Runs on several hosts to one remote destination do not: the manifest
        stays whole anyway (segments are only added), but objects may be copied twice.
        """
        if self.local:
            make_private_dirs(self.path(EXPORT_FOLDER))
            lock = Path(self.path(f"{EXPORT_FOLDER}/lock"))
        else:
            cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "obsml" / "export"
            cache.mkdir(parents=True, exist_ok=True, mode=0o700)
            lock = cache / f"{sha256(self.url.encode()).hexdigest()[:16]}.lock"  # never the URL itself
        descriptor = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            if self.local:  # what a killed run left before its rename: nobody else writes there now
                for leftover in Path(self.path(_STAGING_FOLDER)).glob("*"):
                    with suppress(FileNotFoundError):
                        leftover.unlink()
            yield True
        finally:
            os.close(descriptor)


class Manifest:
    """What the destination holds, by path: the records of the segments read, the latest winning.

    Segments sit in one folder per kind and date partition of the objects they record
    (``_obsml/export/manifest/<top>/<yyyy>/<mm>/<dd>/``, ``…/<top>/undated/`` for any other), so that
    a run with ``--since`` reads only the records of the days it copies, however old the export.
    """

    def __init__(self, target: Destination) -> None:
        self.target = target
        self.records: dict[str, dict[str, Any]] = {}
        self.segments: dict[str, list[str]] = defaultdict(list)  # by folder, oldest first
        self.pending: list[dict[str, Any]] = []
        self.since_flush = time.monotonic()

    @classmethod
    def load(cls, target: Destination, tops: list[str], since: datetime | None) -> Manifest:
        manifest = cls(target)
        listing = StoreReader(target.fs, target.root)
        for top in tops:
            base = f"{MANIFEST_FOLDER}/{top}"
            folders = [base] if since is None else [*_day_folders(listing, base, since.date()), f"{base}/undated"]
            for folder in folders:
                for segment in listing.files(folder):  # sorted: oldest first (the names start with the time)
                    if segment.endswith(".jsonl"):
                        manifest.segments[segment.rpartition("/")[0]].append(segment)
                        for line in target.fs.cat_file(target.path(segment)).split(b"\n"):
                            if line.strip():
                                record = json.loads(line)
                                manifest.records[record["path"]] = record
        for folder, segments in list(manifest.segments.items()):
            if len(segments) > _MAX_SEGMENTS:
                manifest.merge(folder)
        return manifest

    def up_to_date(self, item: Listed) -> bool:
        known = self.records.get(item.path)
        return known is not None and known["size"] == item.size and known["source_version"] == item.version

    def add(self, item: Listed, digest: str) -> None:
        record = {"path": item.path, "size": item.size, "sha256": digest, "source_version": item.version,
                  "exported_at": datetime.now(timezone.utc).isoformat()}
        self.records[item.path] = record
        self.pending.append(record)

    def flush_if_due(self) -> None:
        if len(self.pending) >= BATCH_OBJECTS or time.monotonic() - self.since_flush >= BATCH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """The pending records as new segments, one per folder (named to sort after the earlier ones)."""
        self.since_flush = time.monotonic()
        by_folder: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in self.pending:
            by_folder[_manifest_folder(record["path"])].append(record)
        for folder, records in by_folder.items():
            self.segments[folder].append(self._write(folder, records))
        self.pending = []

    def merge(self, folder: str) -> None:
        """A folder's records in one segment, then its older segments removed (a kill between leaves
        both: harmless, the records are the same)."""
        older = self.segments[folder]
        records = [record for record in self.records.values() if _manifest_folder(record["path"]) == folder]
        self.segments[folder] = [self._write(folder, records)]
        for segment in older:
            with suppress(FileNotFoundError):
                self.target.fs.rm_file(self.target.path(segment))

    def _write(self, folder: str, records: list[dict[str, Any]]) -> str:
        name = f"{folder}/{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{os.getpid()}-{token_hex(4)}.jsonl"
        self.target.put(name, b"".join(json.dumps(record).encode() + b"\n" for record in records))
        return name


def _manifest_folder(relative: str) -> str:
    """The manifest folder of an object's records: its kind and date partition."""
    parts = relative.split("/")
    at = 1 + (_BELOW_MODEL_DATA if parts[0].startswith("modeldata") else 0)
    day = _day(parts[at], parts[at + 1], parts[at + 2]) if len(parts) > at + 3 else None
    return f"{MANIFEST_FOLDER}/{parts[0]}/" + (f"{day:%Y/%m/%d}" if day else "undated")


def _day_folders(reader: StoreReader, top: str, first: date) -> Iterator[str]:
    """``…/<yyyy>/<mm>/<dd>`` folders under ``top`` from ``first`` on (below the model-data levels for
    ``modeldata``), listed level by level so that older years and months are never walked."""
    parents = [top]
    if top.startswith("modeldata"):
        for _ in range(_BELOW_MODEL_DATA):
            parents = [f"{parent}/{name}" for parent in parents for name in subfolders(reader, parent)]
    for parent in parents:
        for yyyy in subfolders(reader, parent):
            if not yyyy.isdigit() or int(yyyy) < first.year:
                continue
            for mm in subfolders(reader, f"{parent}/{yyyy}"):
                if not mm.isdigit() or (int(yyyy), int(mm)) < (first.year, first.month):
                    continue
                for dd in subfolders(reader, f"{parent}/{yyyy}/{mm}"):
                    day = _day(yyyy, mm, dd)
                    if day is not None and day >= first:
                        yield f"{parent}/{yyyy}/{mm}/{dd}"


def _chunks(source: BinaryIO | bytes) -> Iterator[bytes]:
    if isinstance(source, bytes):
        yield source
        return
    while chunk := source.read(_CHUNK):
        yield chunk


def _hash(fs: Any, path: str, size: int) -> str:
    if size <= _WHOLE:
        return sha256(fs.cat_file(path)).hexdigest()
    digest = sha256()
    with fs.open(path, "rb") as file:
        for chunk in _chunks(file):
            digest.update(chunk)
    return digest.hexdigest()
