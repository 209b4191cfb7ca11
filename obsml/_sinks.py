"""Sinks: where a remote store's objects go. fsspec URLs need no plugin; other schemes are plugins.

A sink plugin registers a factory under its URL scheme in the entry-point group
``obsml.sinks``: ``factory(url, settings=...)`` returns a :class:`Sink`. Only the scheme of
the configured store is looked up, and its factory is imported at start-up: a plugin that is
not installed, fails to import or is not callable fails start-up with its name. A sink that
fails at run time (its factory or ``put`` raising, the service down) is isolated: it is
reported once with its name, and the objects wait in the spool while obsml retries it.
"""

from __future__ import annotations

import abc
import os
import weakref
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

from ._exceptions import PluginError, PluginImportError
from ._registry import import_target
from ._secrets import scrub

if TYPE_CHECKING:
    from ._settings import Settings

SINK_GROUP = "obsml.sinks"


class ObjectData(Protocol):
    """An object's bytes, read once from the spool (a file-like object limited to the object)."""

    def read(self, size: int = -1, /) -> bytes: ...


class Sink(abc.ABC):
    """A destination for obsml's objects: ``traces/…`` part files and ``payloads/…`` bodies.

    Called only from obsml's delivery thread, one object at a time, in order. Raise any
    exception to have the object retried later (with backoff); it stays in the spool meanwhile.
    Spans name an object by the store URL (without query or fragment) joined with its
    relative path, e.g. ``sqlite:///data/obsml.db/payloads/…``: it is known before the sink is.
    """

    @abc.abstractmethod
    def put(self, relative: str, data: ObjectData, size: int) -> None:
        """Store ``size`` bytes read from ``data`` at ``relative``, whole or not at all.

        The same object may be put twice (after a crash between put and spool clean-up):
        writing it again must leave the same result.
        """

    def close(self) -> None:  # noqa: B027 - optional for sinks with nothing to release
        """Release connections. Called on the delivery thread after a failed put (the sink is
        then opened afresh by its factory for the next attempt) and when the process exits."""


SinkOpener = Callable[[], Sink]


# Per-call options for fsspec implementations that retry on their own. The Azure SDK (under
# adlfs) retries a refused upload for over a minute inside one call, which would stall the
# delivery thread and hide the outage from obsml's own backoff, counters and flush deadline.
_PUT_OPTIONS: dict[str, dict[str, Any]] = {
    "abfs": {"retry_total": 0, "connection_timeout": 10},
    "az": {"retry_total": 0, "connection_timeout": 10},
    "abfss": {"retry_total": 0, "connection_timeout": 10},
}


class FsspecSink(Sink):
    """Any fsspec filesystem: each object is one put (``pipe_file``), so it appears whole."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.root = root
        self._options = _PUT_OPTIONS.get(scheme_of_protocol(fs.protocol), {})

    def put(self, relative: str, data: ObjectData, size: int) -> None:
        self.fs.pipe_file(f"{self.root}/{relative}", data.read(size), **self._options)

    def __repr__(self) -> str:
        return f"<FsspecSink {scheme_of_protocol(self.fs.protocol)}>"


def scheme_of_protocol(protocol: str | tuple[str, ...]) -> str:
    return protocol if isinstance(protocol, str) else protocol[0]


# Sink plugins we know of but do not ship: what to install for their scheme.
_SINK_HINTS = {
    "sqlite": "pip install obsml-sqlite-sink (the example package in examples/custom_sink_plugin)",
}


def sink_plugin(scheme: str) -> Any | None:
    """The entry point registered for ``scheme`` in ``obsml.sinks``, or None (not imported yet).

    A scheme known to be a plugin's (``_SINK_HINTS``) that nothing registers raises
    :class:`PluginImportError` with what to install, instead of reaching fsspec.
    """
    for entry_point in entry_points(group=SINK_GROUP):
        if entry_point.name == scheme:
            return entry_point
    if scheme in _SINK_HINTS:
        raise PluginImportError(f"OBSML_STORE: the {scheme}:// sink plugin is not installed: {_SINK_HINTS[scheme]}")
    return None


def _load_sink_factory(entry_point: Any) -> Callable[..., Any]:
    """Import the plugin's factory at start-up: a plugin that cannot be used fails it, with its name."""
    name, target = entry_point.name, entry_point.value
    package = entry_point.dist.name if entry_point.dist is not None else target.partition(":")[0]
    try:
        factory = import_target(target)
    except ModuleNotFoundError as exc:
        module = target.partition(":")[0]
        if exc.name and (module == exc.name or module.startswith(f"{exc.name}.")):
            raise PluginImportError(
                f"OBSML_STORE: sink {name!r} is registered by {package}, but its module {module} is not "
                f"installed: reinstall it (pip install {package})"
            ) from exc
        raise PluginImportError(
            f"OBSML_STORE: sink {name!r} ({target}, from {package}) is installed but needs a module that is "
            f"not: {exc.name} (install it, or reinstall {package} with its dependencies)"
        ) from exc
    except Exception as exc:  # a plugin's own import may fail with anything
        raise PluginImportError(
            f"OBSML_STORE: sink {name!r} ({target}, from {package}) is installed but its import failed: "
            f"{type(exc).__name__}: {scrub(str(exc))}"
        ) from exc
    if not callable(factory):
        raise PluginError(f"OBSML_STORE: sink {name!r}: entry point {target} (from {package}) is not callable")
    return factory  # type: ignore[no-any-return]


def plugin_opener(entry_point: Any, url: str, settings: Settings) -> SinkOpener:
    """Resolves the plugin's factory now; the opener calls it on the delivery thread, where a sink
    that cannot start (its service unreachable) is isolated and retried, never reaching the app."""
    factory = _load_sink_factory(entry_point)

    def open_sink() -> Sink:
        sink = factory(url, settings=settings)
        if not isinstance(sink, Sink):
            raise TypeError(f"sink {entry_point.name!r}: its factory returned {type(sink).__name__}, not a Sink")
        return sink

    return open_sink


def _forget_the_parents_filesystems() -> None:
    """In a forked child: drop the close-at-exit hooks of the parent's async fsspec filesystems.

    adlfs registers ``weakref.finalize(fs, fsspec.asyn.sync, loop, close_service_client, fs)``.
    In a child the thread running that loop does not exist, so the hook waits for it forever:
    a gunicorn ``--preload`` worker hung at exit until its graceful timeout killed it. The child
    opens filesystems of its own (the sink is opened on its delivery thread).
    """
    try:
        from fsspec.asyn import sync
    except ImportError:
        return
    for finalizer in list(getattr(weakref.finalize, "_registry", {})):  # CPython's live finalizers
        info = finalizer.peek()
        if info is not None and info[1] is sync:
            finalizer.detach()


os.register_at_fork(after_in_child=_forget_the_parents_filesystems)
