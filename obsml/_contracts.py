"""What obsml promises exporter plugins: the store they are handed, and the flags they may set.

An exporter factory is called with keyword arguments only, ``factory(settings=..., store=...)``
(more may be added): ``settings`` is the :class:`obsml.Settings` in force and ``store`` an
:class:`ObjectStore`. It returns an OpenTelemetry ``SpanExporter``; anything else fails start-up
with a :class:`obsml.PluginError` naming the exporter and its entry point. Two optional
attributes of the exporter (class or instance) change how obsml runs it:

- ``obsml_inline = True``: ``export`` runs synchronously on obsml's writer thread, already off the
  request path, and ``force_flush`` at each flush interval. For fast, local exporters only (the
  store's part files, the console): a slow one holds up every other span. Any other exporter
  runs behind a ``BatchSpanProcessor`` of its own, on its own thread.
- ``obsml_counts_written = True``: the exporter counts ``spans_exported`` itself, once a span is
  durably written (the ``jsonl`` exporter batches in ``export``); otherwise obsml counts the spans
  of each ``export`` that returns ``SUCCESS``.

Example::

    class MyExporter(SpanExporter):
        def __init__(self, store: obsml.ObjectStore) -> None:
            self.store = store

        def export(self, spans):
            ...  # a value too long for the backend: self.store.offload("my_backend", name, data, time_ns=...)
            return SpanExportResult.SUCCESS

    def make_exporter(*, settings: obsml.Settings, store: obsml.ObjectStore) -> SpanExporter:
        return MyExporter(store)
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class Offloaded(NamedTuple):
    """Where :meth:`ObjectStore.offload` put a value: its URI, size in bytes and sha256 (hex)."""

    uri: str
    size: int
    sha256: str


class ObjectStore(Protocol):
    """The obsml store (``OBSML_STORE``) as an exporter plugin may use it, from its own threads.

    Each method writes one object whole or not at all, and raises when the store refuses it (a full
    disk, a spool at its bound...; the exception's ``reason`` attribute, when it has one, is the drop
    reason obsml counts). Objects of a remote store go through obsml's spool, like bodies.
    """

    def write_atomic(self, relative: str, data: bytes) -> None:
        """Write ``data`` at ``relative`` (a ``/``-separated path under the store's root)."""

    def uri(self, relative: str) -> str:
        """The full URL of the object at ``relative``, as spans record it."""

    def offload(self, folder: str, name: str, data: bytes, *, time_ns: int) -> Offloaded:
        """Write a value too long to send at ``<folder>/<yyyy>/<mm>/<dd>/<name>`` (the UTC day of
        ``time_ns``, as the store lays out bodies) and say where it is, how long and its sha256."""
