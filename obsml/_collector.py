"""``Collector``: what the model saw and answered, as rows of a partitioned dataset in the store.

``collect()`` checks the rows (misuse raises only under strict mode), takes the request's ids and
sampling decision, and hands the rows to the pipeline's writer as one job; the writer expands
them into records and batches them into part files under
``modeldata/<service>/<model>/<version>/<identifier>/<yyyy>/<mm>/<dd>/``. Media values (with
``media="offload"``) are written beside, under ``modeldata-media/``, as bodies are.
"""

from __future__ import annotations

import dataclasses
import io
import threading
import time
import weakref
from collections.abc import Mapping
from datetime import datetime, timezone
from hashlib import sha256
from secrets import token_hex
from typing import Any, NamedTuple

from ._capture import CURRENT_CAPTURE
from ._exceptions import ConfigError
from ._field_rules import FieldRules
from ._formats import encoder
from ._ids import correlation_keep, sampling_threshold
from ._objects import utc_folders
from ._parts import PartFiles
from ._pipeline import Pipeline, pipeline_for
from ._rows import RESERVED, RowError, Rows, fingerprint, is_media, row_count
from ._secrets import REDACTED
from ._settings import Settings
from ._stats import STATS, enable_strict, is_strict, logger, record_drop

_SUFFIXES = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
_RECORD_ESTIMATE = 256  # bytes a row holds in memory until written, for the queue's byte bound


class Collected(NamedTuple):
    """What one ``collect()`` used: the correlation id (to pass to the next collector) and its rows."""

    correlation_id: str
    trace_id: str | None
    span_id: str | None
    rows: int


class _Destination:
    """A pipeline's part files for one format, and the sampling of the settings it came from.

    Its ``enabled`` and sampling are the runtime switches' (``_control``) when set for its scope.
    """

    __slots__ = (
        "__weakref__", "base_enabled", "base_rate", "control_scope", "control_values", "enabled", "fields", "hidden",
        "parts", "pipeline", "sample_all", "service", "threshold", "version",
    )

    def __init__(self, settings: Settings, parts: PartFiles, pipeline: Pipeline, model: str, enabled: bool) -> None:
        self.pipeline, self.parts = pipeline, parts
        self.service, self.version = settings.service, settings.version
        self.control_scope = (settings.service, model, settings.version)
        self.base_enabled, self.base_rate = enabled, settings.sample_rate
        self.control_values: dict[str, Any] = {}
        self.apply_control({})
        # The body field rules apply to feature names (issue 15): such a column keeps its name,
        # its values are replaced by the marker.
        self.fields = FieldRules(settings.redact_fields)
        self.hidden: dict[tuple[str, ...], frozenset[str]] = {}  # columns -> those redacted (writer only)

    def apply_control(self, values: Mapping[str, Any]) -> None:
        """Swap in the switches set for this scope (on the writer; ``collect()`` reads the attributes)."""
        rate = values.get("sample_rate", self.base_rate)
        self.threshold = sampling_threshold(rate)
        self.sample_all = rate >= 1.0
        self.enabled = values.get("collect_enabled", self.base_enabled)
        self.control_values = dict(values)

    def control_report(self) -> dict[str, Any]:
        """What this destination runs with, for its writer's status (``obsml config show``)."""
        rate = self.control_values.get("sample_rate", self.base_rate)
        return {"scope": "/".join(self.control_scope), "part": "collector", "collect_enabled": self.enabled,
                "sample_rate": rate, "from_control": sorted(self.control_values)}

    def hidden_columns(self, columns: tuple[str, ...]) -> frozenset[str]:
        hidden = self.hidden.get(columns)
        if hidden is None:
            hidden = self.fields.hidden_columns(columns)
            if len(self.hidden) < 256:
                self.hidden[columns] = hidden
        return hidden


_PARTS: dict[tuple[int, str], PartFiles] = {}
_PARTS_LOCK = threading.Lock()


def _destination(settings: Settings, format: str, model: str, enabled: bool, first_read: bool) -> _Destination:
    pipeline = pipeline_for(settings)
    if first_read and pipeline.control is not None:
        pipeline.control.read_now()  # a batch job's first rows follow the switches too (a middleware read them)
    with _PARTS_LOCK:
        parts = _PARTS.get((id(pipeline), format))
        if parts is None:
            parts = PartFiles(
                pipeline.store, kind="row", written="rows_collected", suffix=_SUFFIXES[format], encode=encoder(format)
            )
            _PARTS[(id(pipeline), format)] = parts
            pipeline.writer.add_ticker(parts)
    destination = _Destination(settings, parts, pipeline, model, enabled)
    if pipeline.control is not None:
        pipeline.control.subscribe(destination)
    return destination


class _RowsJob:
    """Writer side of one ``collect()``: records, media offloaded, batched into part files."""

    __slots__ = ("collector", "destination", "ids", "nbytes", "rows", "time_ns")

    def __init__(self, collector: Collector, destination: _Destination, rows: Rows, ids: Collected) -> None:
        self.collector, self.destination, self.rows, self.ids = collector, destination, rows, ids
        self.time_ns = time.time_ns()
        self.nbytes = rows.count * _RECORD_ESTIMATE

    def run(self) -> None:
        collector, destination, ids = self.collector, self.destination, self.ids
        collected_at = datetime.fromtimestamp(self.time_ns // 1000 / 1e6, timezone.utc)
        path = f"{destination.service}/{collector.model}/{destination.version}/{collector.identifier}"
        folder = f"modeldata/{path}/{utc_folders(self.time_ns)}"
        columns, media = self.rows.columns, self.rows.media
        hidden = destination.hidden_columns(tuple(columns))
        schema = ""
        for index, row in enumerate(self.rows.values()):
            record: dict[str, Any] = {}
            for column, value in zip(columns, row, strict=True):
                if column in hidden:
                    record[column] = REDACTED
                elif media and is_media(value):
                    data, suffix = _media_bytes(value)
                    name = f"{sha256(data).hexdigest()[:32]}-{token_hex(4)}{suffix}"
                    stored = destination.pipeline.store.offload(
                        f"modeldata-media/{path}", name, data, time_ns=self.time_ns
                    )
                    record[f"{column}_uri"], record[f"{column}_size"], record[f"{column}_sha256"] = stored
                else:
                    record[column] = value
            schema = schema or fingerprint(list(record), list(record.values()))
            record.update(
                correlation_id=ids.correlation_id,
                row=index,  # with the id, what pairs the n-th input with the n-th prediction and label
                trace_id=ids.trace_id,
                span_id=ids.span_id,
                collected_at=collected_at,
                schema=schema,
            )
            destination.parts.add(folder, record, _RECORD_ESTIMATE)


def _media_bytes(value: Any) -> tuple[bytes, str]:
    """A media value's bytes and their file suffix: bytes as they are, a PIL image as PNG, an array as .npy."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), ".bin"
    buffer = io.BytesIO()
    if type(value).__module__.startswith("PIL"):  # PIL is imported: the value is one of its images
        value.save(buffer, format="PNG")
        return buffer.getvalue(), ".png"
    import numpy  # imported already: the value is an array

    numpy.save(buffer, value, allow_pickle=False)
    return buffer.getvalue(), ".npy"


class Collector:
    """Rows of one model's inputs, predictions or labels, appended to the store (see the README)."""

    def __init__(
        self,
        model: str,
        identifier: str,
        feature_names: list[str] | tuple[str, ...] | None = None,
        *,
        service: str | None = None,
        version: str | None = None,
        store: str | None = None,
        format: str | None = None,
        enabled: bool | None = None,
        media: str | None = None,
    ) -> None:
        if media not in (None, "offload"):
            raise ConfigError(f"media={media!r} is not valid: expected None or 'offload'")
        # Names checked by the settings' own rules; what was not given comes from OBSML_* now,
        # or from the serving middleware's settings at collect time.
        given = {"service": service, "version": version, "store": store}
        self._given: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        outside = Settings.load(model=model, collect_format=format, collect_enabled=enabled, **self._given)
        Settings.load(env={}, service=identifier)  # the identifier is a folder name too
        if outside.strict:
            enable_strict()
        if feature_names is not None:
            feature_names = tuple(str(name) for name in feature_names)
            if len(set(feature_names)) != len(feature_names) or not feature_names:
                raise ConfigError(f"feature_names must be distinct names, got {feature_names!r}")
            if not RESERVED.isdisjoint(feature_names):
                taken = ", ".join(sorted(RESERVED.intersection(feature_names)))
                raise ConfigError(f"feature_names {taken}: names obsml gives its own columns (see the README)")
        self.model, self.identifier = model, identifier
        self.feature_names: tuple[str, ...] | None = feature_names
        self.format = outside.collect_format
        self.enabled = outside.collect_enabled
        self.media = media == "offload"
        self._outside = outside
        self._encode_checked = encoder(self.format)  # a missing pyarrow fails here, not later
        # Per serving middleware (its Capturer), held weakly: keyed by id(), a middleware made after
        # another was freed could find the freed one's destination (its sample rate, its store).
        self._destinations: weakref.WeakKeyDictionary[Any, _Destination] = weakref.WeakKeyDictionary()
        self._outside_destination: _Destination | None = None

    def __repr__(self) -> str:
        return f"Collector({self.model!r}, {self.identifier!r}, format={self.format!r})"

    def _destination_for(self, capturer: Any) -> _Destination:
        if capturer is None:
            if self._outside_destination is None:
                self._outside_destination = _destination(self._outside, self.format, self.model, self.enabled, True)
            return self._outside_destination
        destination = self._destinations.get(capturer)
        if destination is None:
            # Inside a request: the serving middleware's destination, with what this collector was given.
            settings = dataclasses.replace(capturer.settings, **self._given)
            destination = self._destinations[capturer] = _destination(
                settings, self.format, self.model, self.enabled, first_read=False
            )
        return destination

    def collect(self, data: Any, correlation_id: str | None = None) -> Collected:
        """Hand ``data``'s rows to the writer; never blocks, never raises for storage trouble."""
        capture = CURRENT_CAPTURE.get()
        if capture is not None:
            trace_id: str | None = f"{capture.trace_id:032x}"
            span_id: str | None = f"{capture.span_id:016x}"
            correlation_id = correlation_id or capture.correlation_id
        else:
            trace_id = span_id = None
            correlation_id = correlation_id or token_hex(16)
        try:
            rows = Rows(data, self.feature_names, self.media)
        except RowError as exc:
            if is_strict():
                raise
            record_drop("row", "invalid", row_count(data), detail=str(exc))
            if STATS.log_throttle.due(f"invalid:{exc.cause}", time.monotonic()):
                logger.warning("obsml Collector %r refused rows: %s", self.identifier, exc)
            return Collected(correlation_id, trace_id, span_id, 0)
        ids = Collected(correlation_id, trace_id, span_id, rows.count)
        destination = self._destination_for(None if capture is None else capture.capturer)
        if not destination.enabled:
            return ids._replace(rows=0)
        if not rows.count:
            return ids
        if not destination.sample_all and not correlation_keep(correlation_id, destination.threshold):
            return ids._replace(rows=0)
        writer = destination.pipeline.writer
        if not writer.submit(_RowsJob(self, destination, rows, ids)):
            record_drop("row", writer.refusal, rows.count)
        return ids
