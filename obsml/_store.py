"""The store: one root under which every object appears whole or not at all.

On the local disk (the default) the writer writes objects in place: under a hidden temporary
name in their final folder, then renamed; a folder removed under it is made again, bodies
leave room on the disk for the spans that name them, and the temporary files of dead
processes are swept at start. Any other destination (an fsspec URL such as
``abfs://…``, or a sink plugin's scheme) is remote: the writer commits each object to a local
spool and a delivery thread puts it to the sink, retrying while the sink is down (``_spool``).
Only obsml's background threads call this module.
"""

from __future__ import annotations

import importlib.util
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from ._contracts import Offloaded
from ._exceptions import ConfigError
from ._objects import (
    PART_FOLDERS,
    STATUS_FOLDER,
    AtomicTarget,
    StoreWriteError,
    count_written,
    describe_error,
    utc_folders,
)
from ._secrets import scrub
from ._stats import count, note_error

if TYPE_CHECKING:
    from ._delivery import Delivery
    from ._settings import Settings
    from ._sinks import SinkOpener


# Temporary names carry the host and pid of their writer, so a later start can tell a dead
# process's leftovers (a crash mid-write) from a live writer's, even on a disk shared by hosts.
_HOST = sha256(socket.gethostname().encode()).hexdigest()[:8]
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]{8}\.tmp")
_SWEEP_DAYS = 7  # the date folders swept at start: a crash's leftovers sit in the folders of its time
_SPAN_RESERVE_MAX = 64 << 20  # bodies leave min(this, 5% of the disk) free, for the spans that name them
# Every object's path under the root, whoever made it up (obsml, an exporter plugin's offload):
# segments of safe characters, never empty, "." or "..", so that nothing is opened outside the store.
_SEGMENT = r"(?!\.\.?(?:/|\Z))[A-Za-z0-9._=-]+"
_SAFE_RELATIVE = re.compile(f"{_SEGMENT}(?:/{_SEGMENT})*")
# Remote stores commit spans to the spool at least this often: what a SIGKILL can lose (issue 11).
REMOTE_COMMIT_S = 0.25


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


@contextmanager
def _noting_errors() -> Iterator[None]:
    """Keep the OS error that made a local write fail, for the next drop report (README: accounting)."""
    try:
        yield
    except OSError as exc:
        note_error("store_error", describe_error(exc))
        raise


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
        self._uri_prefix = ""
        if isinstance(self.fs, LocalFileSystem):
            self._uri_prefix = str(self.fs.unstrip_protocol(self.root or "/")).rstrip("/")  # once, not per body
            try:
                make_private_dirs(self.root)
            except OSError as exc:
                raise ConfigError(f"OBSML_STORE: cannot create the store directory ({exc.strerror})") from None
            self._sweep_temporaries()
            return
        fs, root = self.fs, self.root
        # A filesystem instance made before a fork (gunicorn --preload) refuses to work in the child
        # (fsspec's async filesystems are not fork-safe): the sink opens its own, on the delivery thread.
        self._start_delivery(settings, lambda: FsspecSink(type(fs)(*fs.storage_args, **fs.storage_options), root))

    def _start_delivery(self, settings: Settings, open_sink: SinkOpener) -> None:
        from ._delivery import Delivery  # only a remote store needs the spool and its thread
        from ._spool import Spool, default_spool_dir

        base = Path(settings.spool_dir).expanduser() if settings.spool_dir else default_spool_dir()
        # One spool per destination; the key never reveals the URL.
        key = f"{self.scheme}-{sha256(settings.store.encode()).hexdigest()[:16]}"
        self.delivery = Delivery(Spool(base / key, settings.spool_max_bytes), open_sink, self.scheme)
        # Records a dead process left are delivered now, not at this process's first request
        # (an idle restart). Only then does a thread start here: usually none at creation, which
        # may be in a gunicorn --preload master; a forked child starts its own at its first commit.
        self.delivery.start_if_adoptable()

    def __repr__(self) -> str:
        return f"<Store {self.scheme}>"

    def __reduce__(self) -> Any:
        # Pickling would carry the filesystem's options (fsspec pickles its constructor arguments).
        raise TypeError("an obsml Store holds connections and credentials: it cannot be pickled")

    @property
    def remote(self) -> bool:
        return self.delivery is not None

    def batch_interval(self, flush_interval: float) -> float:
        """How long the writer may batch spans: for a remote store at most REMOTE_COMMIT_S."""
        return min(flush_interval, REMOTE_COMMIT_S) if self.remote else flush_interval

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def uri(self, relative: str) -> str:
        """The full URL of an object, as recorded in spans."""
        if self._uri_prefix:
            return f"{self._uri_prefix}/{relative}"
        return str(self.fs.unstrip_protocol(self.path(relative)))

    def open_atomic(self, relative: str) -> AtomicTarget:
        if not _SAFE_RELATIVE.fullmatch(relative):
            raise ValueError(f"obsml: {relative!r} is not an object path in the store")
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
            make_private_dirs(folder)
            self._known_dirs.add(folder)

    def _open_temporary(self, folder: str, temporary: str) -> BinaryIO:
        # Only the local disk gets here (a remote store writes to the spool): bodies are private,
        # 0600 files in 0700 folders (SECURITY.md), whatever the process's umask allows beyond.
        self._ensure_dir(folder)
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
        try:
            fd = os.open(temporary, flags, 0o600)
        except FileNotFoundError:
            # The folder was removed or moved away since we made it (a log shipper, a cleaner).
            self._known_dirs.discard(folder)
            self._ensure_dir(folder)
            fd = os.open(temporary, flags, 0o600)
        return open(fd, "wb")  # closed by commit or abort

    def _sweep_temporaries(self) -> None:
        """Remove the temporary files this host's dead processes left in the recent date folders.

        Those are ``<top>/<yyyy>/<mm>/<dd>`` and ``…/<hh>`` for every top folder (``traces``,
        ``payloads``, a plugin's, ``_obsml/status``), for the last ``_SWEEP_DAYS`` days: a bounded
        walk at start, however large the store.
        """
        removed = 0
        now = time.time()
        tops: list[str] = []
        with suppress(OSError), os.scandir(self.root) as entries:
            tops = [entry.path for entry in entries if entry.is_dir()]
        tops.append(f"{self.root}/{STATUS_FOLDER}")
        for days_ago in range(_SWEEP_DAYS):
            day = utc_folders(int((now - days_ago * 86400) * 1e9))
            hours = ["", *(f"/{hour:02d}" for hour in range(24))]
            for folder in (f"{top}/{day}{hour}" for top in tops for hour in hours):
                with suppress(OSError), os.scandir(folder) as entries:  # a folder that is not there
                    for entry in entries:
                        match = _TEMPORARY.fullmatch(entry.name) if entry.name.startswith(".") else None
                        if match and match["host"] == _HOST and not _alive(int(match["pid"])):
                            with suppress(FileNotFoundError):
                                os.unlink(entry.path)
                                removed += 1
        if removed:
            count("temp_files_removed", removed)

    @staticmethod
    def span_reserve(stat: os.statvfs_result) -> int:
        """Bytes a body must leave free on the local disk: room for the spans that name bodies."""
        return min(_SPAN_RESERVE_MAX, stat.f_blocks * stat.f_frsize // 20)

    def offload(self, folder: str, name: str, data: bytes, *, time_ns: int) -> Offloaded:
        """:meth:`obsml.ObjectStore.offload`: a plugin's long value, in the date folders bodies use."""
        relative = f"{folder}/{utc_folders(time_ns)}/{name}"
        self.write_atomic(relative, data)
        return Offloaded(self.uri(relative), len(data), sha256(data).hexdigest())


def make_private_dirs(path: str) -> None:
    """``path`` and every missing folder above it, each made 0700 (``os.makedirs`` would give the
    folders above the umask's default mode, usually 0755). Folders that exist are left as they are."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for folder in reversed(missing):
        with suppress(FileExistsError):  # another process made it meanwhile
            os.mkdir(folder, 0o700)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class AtomicObject:
    """A local file written under a temporary name and moved to ``relative`` on :meth:`commit`."""

    def __init__(self, store: Store, relative: str) -> None:
        self.store = store
        self.relative = relative
        self.final = store.path(relative)
        self.folder, _, name = self.final.rpartition("/")
        self.temporary = f"{self.folder}/.{name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        # A full disk must not keep bodies and lose the spans that name them (issue 11): bodies
        # (and plugins' values) stop short of a reserve, which only part files may use.
        self._keeps_room = not relative.startswith(PART_FOLDERS)
        with _noting_errors():
            self._file: BinaryIO = store._open_temporary(self.folder, self.temporary)
            if self._keeps_room:
                try:
                    self._check_room(0)
                except BaseException:
                    self.abort()
                    raise

    def _check_room(self, size: int) -> None:
        stat = os.statvfs(self.folder)
        free, reserve = stat.f_bavail * stat.f_frsize, self.store.span_reserve(stat)
        if free - size < reserve:
            note_error("disk_full", f"{free} bytes free on the store's disk, {reserve} kept for spans")
            raise StoreWriteError("disk_full")

    def write(self, data: bytes) -> None:
        # Called once per record of a part file: no context manager (see _noting_errors).
        try:
            if self._keeps_room:
                self._check_room(len(data))
            self._file.write(data)
        except OSError as exc:
            note_error("store_error", describe_error(exc))
            raise

    def commit(self) -> None:
        # Straight system calls: fsspec's mv and rm on the local disk add their path layers per object.
        with _noting_errors():
            self._file.close()
            os.replace(self.temporary, self.final)
        count_written(self.relative)

    def abort(self) -> None:
        try:
            self._file.close()
        finally:
            with suppress(FileNotFoundError):
                os.unlink(self.temporary)
