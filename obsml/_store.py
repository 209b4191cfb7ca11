"""The store: one fsspec root under which every object appears whole or not at all.

Objects are written under a hidden temporary name in their final folder, then moved into
place: a rename on a local disk, so readers never see a partial part file or payload.
Only the background writer calls this module.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ._exceptions import ConfigError


def utc_folders(ns: int, hourly: bool = False) -> str:
    """The date partition of a time in the store layout: ``yyyy/mm/dd`` (``/hh`` when hourly), UTC."""
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y/%m/%d/%H" if hourly else "%Y/%m/%d")


class Store:
    """An fsspec filesystem and root path, e.g. ``./obsml-data`` or ``memory://obsml``."""

    def __init__(self, url: str) -> None:
        try:
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            # Never echo the URL: it may carry credentials.
            raise ConfigError(f"OBSML_STORE: cannot open the store ({type(exc).__name__}: {exc})") from None
        self.root = self.root.rstrip("/")
        self._known_dirs: set[str] = set()
        if isinstance(self.fs, LocalFileSystem):
            try:
                self.fs.makedirs(self.root, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"OBSML_STORE: cannot create the store directory ({exc.strerror})") from None

    def __repr__(self) -> str:
        return f"<Store {self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]}>"

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def uri(self, relative: str) -> str:
        """The full URL of an object, as recorded in spans."""
        return str(self.fs.unstrip_protocol(self.path(relative)))

    def open_atomic(self, relative: str) -> AtomicObject:
        return AtomicObject(self, relative)

    def write_atomic(self, relative: str, data: bytes) -> None:
        target = self.open_atomic(relative)
        try:
            target.write(data)
        except BaseException:
            target.abort()
            raise
        target.commit()

    def _ensure_dir(self, folder: str) -> None:
        if folder not in self._known_dirs:
            self.fs.makedirs(folder, exist_ok=True)
            self._known_dirs.add(folder)


class AtomicObject:
    """A file written under a temporary name and moved to ``relative`` on :meth:`commit`."""

    def __init__(self, store: Store, relative: str) -> None:
        self.store = store
        self.final = store.path(relative)
        folder, _, name = self.final.rpartition("/")
        store._ensure_dir(folder)
        self.temporary = f"{folder}/.{name}.{secrets.token_hex(4)}.tmp"
        self._file: BinaryIO | Any = store.fs.open(self.temporary, "wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self) -> None:
        self._file.close()
        self.store.fs.mv(self.temporary, self.final)

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            if self.store.fs.exists(self.temporary):
                self.store.fs.rm(self.temporary)
