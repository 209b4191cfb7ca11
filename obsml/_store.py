"""The store: one root under which every object appears whole or not at all.

On the local disk (the default) the writer writes objects in place: under a hidden temporary
name in their final folder, then renamed. Any other destination (an fsspec URL such as
``abfs://…``, or a sink plugin's scheme) is remote: the writer commits each object to a local
spool and a delivery thread puts it to the sink, retrying while the sink is down (``_spool``).
Only obsml's background threads call this module.
"""

from __future__ import annotations

import importlib.util
import secrets
from datetime import datetime, timezone
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ._exceptions import ConfigError
from ._secrets import scrub
from ._stats import DropReason, count

if TYPE_CHECKING:
    from ._settings import Settings
    from ._sinks import SinkOpener
    from ._spool import Delivery


def utc_folders(ns: int, hourly: bool = False) -> str:
    """The date partition of a time in the store layout: ``yyyy/mm/dd`` (``/hh`` when hourly), UTC."""
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).strftime("%Y/%m/%d/%H" if hourly else "%Y/%m/%d")


def _store_hint(scheme: str, exc: Exception) -> str:
    if scheme in ("abfs", "az", "abfss"):
        if isinstance(exc, ImportError) and importlib.util.find_spec("adlfs") is None:
            return "Azure Blob needs adlfs: pip install 'obsml[azure]'"
        # adlfs is installed and says what is wrong (no credentials in the environment, or its own
        # import failing); its message may quote a connection string.
        cause = exc.__cause__ if isinstance(exc, ImportError) and exc.__cause__ else exc
        return f"Azure Blob (adlfs): {type(cause).__name__}: {scrub(str(cause))}"
    if isinstance(exc, ValueError) and "Protocol not known" in str(exc):
        return (
            f"nothing handles {scheme}:// (install an fsspec implementation for it, or an obsml sink plugin "
            f"registering {scheme!r} in the entry-point group 'obsml.sinks')"
        )
    return f"{type(exc).__name__}: {scrub(str(exc))}"


class StoreWriteError(Exception):
    """An object could not be written; ``reason`` is the drop reason it is counted under."""

    def __init__(self, reason: DropReason) -> None:
        super().__init__(reason)
        self.reason: DropReason = reason


class AtomicTarget(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


def failure_reason(exc: BaseException) -> DropReason:
    """The drop reason of a failed store write: a :class:`StoreWriteError`'s own, else ``store_error``."""
    return exc.reason if isinstance(exc, StoreWriteError) else "store_error"


def count_written(relative: str) -> None:
    count("trace_files_written" if relative.startswith("traces/") else "payloads_written")


class Store:
    """Where objects go: ``./obsml-data``, ``file://…``, ``memory://…``, ``abfs://container/prefix``…"""

    def __init__(self, settings: Settings) -> None:
        from ._sinks import FsspecSink, plugin_opener, sink_plugin

        url = settings.store
        scheme = url.partition("://")[0] if "://" in url else "file"
        self.scheme = scheme
        self.delivery: Delivery | None = None
        self._known_dirs: set[str] = set()
        plugin = sink_plugin(scheme) if scheme != "file" else None
        if plugin is not None:
            self.fs: Any = None
            self.root = ""
            self._uri_prefix = url.split("?", 1)[0].split("#", 1)[0].rstrip("/")  # never a query's credentials
            self._start_delivery(settings, plugin_opener(plugin, url, settings))
            return
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as exc:
            # Never echo the URL: it may carry credentials.
            raise ConfigError(f"OBSML_STORE: cannot open the store: {_store_hint(scheme, exc)}") from None
        self.root = root.rstrip("/")
        if isinstance(self.fs, LocalFileSystem):
            try:
                self.fs.makedirs(self.root, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"OBSML_STORE: cannot create the store directory ({exc.strerror})") from None
            return
        sink = FsspecSink(self.fs, self.root)
        self._start_delivery(settings, lambda: sink)

    def _start_delivery(self, settings: Settings, open_sink: SinkOpener) -> None:
        from ._spool import Delivery, Spool, default_spool_dir

        base = Path(settings.spool_dir).expanduser() if settings.spool_dir else default_spool_dir()
        # One spool per destination; the key never reveals the URL.
        key = f"{self.scheme}-{sha256(settings.store.encode()).hexdigest()[:16]}"
        self.delivery = Delivery(Spool(base / key, settings.spool_max_bytes), open_sink, self.scheme)

    def __repr__(self) -> str:
        return f"<Store {self.scheme}>"

    def __reduce__(self) -> Any:
        # Pickling would carry the filesystem's options (fsspec pickles its constructor arguments).
        raise TypeError("an obsml Store holds connections and credentials: it cannot be pickled")

    @property
    def remote(self) -> bool:
        return self.delivery is not None

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def uri(self, relative: str) -> str:
        """The full URL of an object, as recorded in spans."""
        if self.fs is None:
            return f"{self._uri_prefix}/{relative}"
        return str(self.fs.unstrip_protocol(self.path(relative)))

    def open_atomic(self, relative: str) -> AtomicTarget:
        if self.delivery is not None:
            return self.delivery.spool.open_record(relative)
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
    """A local file written under a temporary name and moved to ``relative`` on :meth:`commit`."""

    def __init__(self, store: Store, relative: str) -> None:
        self.store = store
        self.relative = relative
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
        count_written(self.relative)

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            if self.store.fs.exists(self.temporary):
                self.store.fs.rm(self.temporary)
