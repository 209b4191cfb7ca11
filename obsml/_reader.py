"""Reading a store back: its objects listed, and the spans of its part files parsed in start order.

The one read side of the store layout (README: "The store"), shared by ``obsml demo`` and the
tests. It reads fsspec stores only (a local directory, ``file://``, ``memory://``, ``abfs://``…):
a sink plugin's store is written through :meth:`obsml.Sink.put`, which has no read side, so
opening one raises :class:`ConfigError` saying so. Hidden objects (a writer's temporaries) are
never listed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import fsspec

from ._compacted import MANIFEST, PARQUET, compacted_lines, readable
from ._exceptions import ConfigError
from ._objects import one_line_error
from ._secrets import scrub
from ._sinks import scheme_of_protocol, sink_plugin
from ._store import _store_hint as store_hint

Span = dict[str, Any]


class StoreReader:
    """The objects of one store, by path relative to its root (``traces/…``, ``payloads/…``)."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")

    @classmethod
    def open(cls, url: str) -> StoreReader:
        """A reader of the store at ``url`` (an ``OBSML_STORE`` value)."""
        scheme = url.partition("://")[0] if "://" in url else "file"
        if scheme != "file" and sink_plugin(scheme) is not None:
            raise ConfigError(
                f"OBSML_STORE: the {scheme}:// store is a sink plugin's, which obsml cannot read back "
                "(only fsspec stores: a directory, file://, memory://, abfs://…)"
            )
        try:
            fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:  # never echo the URL: it may carry credentials
            raise ConfigError(f"OBSML_STORE: cannot open the store: {store_hint(scheme, exc)}") from None
        return cls(fs, root)

    @classmethod
    def open_existing(cls, url: str) -> StoreReader:
        """:meth:`open`, and ConfigError (one line, no credential) when nothing is at the root or it
        cannot be looked at: for the commands that change a store, a mistyped ``--store`` must not
        read as an empty store."""
        reader = cls.open(url)
        shown = scrub(reader.shown())  # a URL may carry a SAS token
        try:
            there = reader.fs.exists(reader.root)
        except Exception as exc:  # whatever the filesystem raises (adlfs: the Azure SDK's errors)
            raise ConfigError(f"cannot read {shown}: {one_line_error(exc)}") from None
        if not there:
            raise ConfigError(f"cannot read {shown}: no store there")
        return reader

    def files(self, folder: str) -> list[str]:
        """Every object under ``folder`` (``traces``, ``payloads``…), relative to the root, sorted."""
        try:
            found = self.fs.find(f"{self.root}/{folder}")
        except FileNotFoundError:
            return []
        prefix = f"{self.root}/"
        return sorted(
            path[len(prefix):] if path.startswith(prefix) else path
            for path in map(str, found)
            if not path.rsplit("/", 1)[-1].startswith(".")
        )

    def part_files(self) -> list[str]:
        """The part files of the spans: ``traces/<yyyy>/<mm>/<dd>/<hh>/<writer-id>-<seq>.jsonl``; where
        ``obsml compact`` has been, its parquet instead of the part files it replaced (``obsml._compacted``)."""
        return readable(self, [path for path in self.files("traces") if path.endswith((".jsonl", PARQUET, MANIFEST))])

    def read_part(self, relative: str) -> list[Span]:
        """The spans of one part file (or compacted parquet), in file order."""
        data = self.fs.cat_file(f"{self.root}/{relative}")
        if relative.endswith(PARQUET):
            return compacted_lines(data)
        # Split on newlines only, not splitlines(): U+2028 and friends may sit inside a JSON string.
        return [json.loads(line) for line in data.split(b"\n") if line.strip()]

    def spans(self, parts: Iterable[str] | None = None) -> list[Span]:
        """The spans of ``parts`` (default: every part file), in start order."""
        spans = [span for part in (self.part_files() if parts is None else parts) for span in self.read_part(part)]
        return sorted(spans, key=lambda span: str(span["start_time"]))

    def shown(self, relative: str = "") -> str:
        """Where an object is, as a user would type it: a plain path for a local store."""
        path = f"{self.root}/{relative}" if relative else self.root
        if scheme_of_protocol(self.fs.protocol) in ("file", "local"):
            return path
        return str(self.fs.unstrip_protocol(path))
