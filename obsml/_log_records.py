"""Writer side of the request logs (issue 18): one log line or printed line, built and sent.

The request path hands the writer a :class:`LogEntry` (the ``logging.LogRecord``, its message
already formatted, the request's ids); here, on obsml's writer thread, it becomes the
:func:`~obsml._exporters.log_record` of ``logs/<yyyy>/<mm>/<dd>/<hh>/`` (when the pipeline
has the ``jsonl`` exporter) and an OpenTelemetry log record for every exporter that carries
an ``obsml_log_exporter``, through a private ``LoggerProvider`` (never set globally) whose
``BatchLogRecordProcessor`` sends on its own thread.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

import orjson
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from ._exporters import json_line, log_record
from ._parts import PartFiles
from ._secrets import scrub
from ._stats import count, record_drop
from ._store import Store

# The attributes every LogRecord has: anything else on a record came from ``extra=``.
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SEVERITY_TEXT = {"WARNING": "WARN", "CRITICAL": "FATAL"}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_EXTRA_DEPTH = 8  # an `extra=` value nested deeper is kept as its str()
_PRINT_LEVELS = {"stdout": logging.INFO, "stderr": logging.ERROR}


def severity_number(levelno: int) -> int:
    """OpenTelemetry's severity of a ``logging`` level: DEBUG 5, INFO 9, WARNING 13, ERROR 17, CRITICAL 21."""
    return min(24, max(1, (levelno - 10) * 4 // 10 + 5))


def json_safe(value: Any, depth: int = 0) -> Any:
    """An ``extra=`` value as JSON can hold it: scalars as they are, containers converted, the rest str()."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if depth < _EXTRA_DEPTH:
        if isinstance(value, dict):
            return {str(key): json_safe(item, depth + 1) for key, item in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [json_safe(item, depth + 1) for item in value]
    return str(value)


def _otel_value(value: Any) -> Any:
    """An attribute as every OpenTelemetry exporter takes it: a scalar, or JSON text."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value if value is not None else "null"
    return orjson.dumps(value).decode()


def _printed_body(line: str) -> Any:
    """A printed line that is a JSON object or array, as structure (as Application Insights kept it)."""
    stripped = line.strip()
    if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
        try:
            return orjson.loads(stripped)
        except orjson.JSONDecodeError:
            pass
    return line


class LogEntry:
    """One log line (or printed line) of a request, queued for the writer. Built on the request path:
    nothing is formatted here but the message (a record's arguments may change after it returns)."""

    __slots__ = ("base", "correlation_id", "destination", "levelno", "logger", "message", "nbytes", "record",
                 "span_id", "time_ns", "trace_id", "truncated")

    def __init__(
        self, destination: RequestLogs, base: dict[str, str], ids: tuple[str, int, int], logger: str, levelno: int,
        message: str, record: logging.LogRecord | None, time_ns: int, truncated: int = 0,
    ) -> None:
        self.destination, self.base = destination, base
        self.correlation_id, self.trace_id, self.span_id = ids
        self.logger, self.levelno, self.message, self.record = logger, levelno, message, record
        self.time_ns, self.truncated = time_ns, truncated
        self.nbytes = 256 + len(message)

    def run(self) -> None:
        self.destination.write(self)


class _CountedLogExporter(LogRecordExporter):
    """Accounts for an exporter's batches of log records (``logs_exported`` or ``export_error``)."""

    def __init__(self, exporter: LogRecordExporter) -> None:
        self.exporter = exporter

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        try:
            result = self.exporter.export(batch)
        except Exception:
            result = LogRecordExportResult.FAILURE
        if result is LogRecordExportResult.SUCCESS:
            count("logs_exported", len(batch))
        else:
            record_drop("log", "export_error", len(batch), detail=type(self.exporter).__name__)
        return result

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.exporter.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self.exporter.shutdown()  # type: ignore[no-untyped-call]  # untyped in the SDK


class RequestLogs:
    """A pipeline's destinations of log records: the store's ``logs/`` part files and the exporters'
    log exporters. A :class:`~obsml._writer.Ticker` of the pipeline's writer, like the span exporters."""

    def __init__(
        self, *, service: str, store: Store, jsonl: bool, exporters: Sequence[LogRecordExporter], flush_timeout: float
    ) -> None:
        self.parts = PartFiles(store, kind="log", written="logs_exported") if jsonl else None
        self._exporters = list(exporters)
        self._resource = Resource.create({"service.name": service})
        self._resource_record = dict(self._resource.attributes)
        self._flush_timeout_ms = int(flush_timeout * 1000)
        self._provider: LoggerProvider | None = None  # made at the first record: its thread too
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.parts is not None or bool(self._exporters)

    def _provider_now(self) -> LoggerProvider:
        with self._lock:
            if self._provider is None:
                provider = LoggerProvider(resource=self._resource, shutdown_on_exit=False)
                for exporter in self._exporters:
                    provider.add_log_record_processor(
                        BatchLogRecordProcessor(_CountedLogExporter(exporter), schedule_delay_millis=1000)
                    )
                self._provider = provider
            return self._provider

    def write(self, entry: LogEntry) -> None:
        """Writer side: the entry as a store record and as an OpenTelemetry log record."""
        record = entry.record
        attributes: dict[str, Any] = {}
        if record is not None:
            for key, value in vars(record).items():  # the record's `extra=` fields
                if key not in _RESERVED and not key.startswith("_"):
                    attributes[key] = json_safe(value)
        attributes.update(entry.base)
        attributes["obsml.correlation_id"] = entry.correlation_id
        if record is not None:
            attributes["code.file.path"] = record.pathname
            attributes["code.function.name"] = record.funcName
            attributes["code.line.number"] = record.lineno
            if record.exc_info and record.exc_info[1] is not None:
                attributes.update(_exception_attributes(record.exc_info[1]))
            body: Any = scrub(entry.message)
        else:
            body = _printed_body(scrub(entry.message))
        if entry.truncated:
            attributes["obsml.print.truncated_characters"] = entry.truncated
        level_name = logging.getLevelName(entry.levelno)
        severity_text = _SEVERITY_TEXT.get(level_name, level_name)
        severity = severity_number(entry.levelno)
        if self.parts is not None:
            line = log_record(
                time_ns=entry.time_ns, observed_ns=time.time_ns(), trace_id=entry.trace_id, span_id=entry.span_id,
                severity_text=severity_text, severity_number=severity, logger=entry.logger, body=body,
                attributes=attributes, resource=self._resource_record,
            )
            start = line["time"]
            self.parts.add(f"logs/{start[0:4]}/{start[5:7]}/{start[8:10]}/{start[11:13]}", json_line(line))
        if self._exporters:
            span = NonRecordingSpan(SpanContext(entry.trace_id, entry.span_id, False, _SAMPLED))
            self._provider_now().get_logger(entry.logger).emit(
                LogRecord(
                    timestamp=entry.time_ns,
                    observed_timestamp=time.time_ns(),
                    context=set_span_in_context(span),
                    severity_text=severity_text,
                    severity_number=SeverityNumber(severity),
                    body=body,
                    attributes={key: _otel_value(value) for key, value in attributes.items()},
                )
            )

    def tick(self, force: bool) -> None:
        """Part files out at every interval; on a flush, the exporters' batches too."""
        if self.parts is not None:
            self.parts.flush()
        if force and self._provider is not None:
            self._provider.force_flush(self._flush_timeout_ms)

    def shutdown(self, timeout: float = 0.0) -> None:
        """At exit, after the writer's close: the exporters' last batches, then their threads stop."""
        with self._lock:
            provider, self._provider = self._provider, None
        if provider is not None:
            provider.shutdown()


def _exception_attributes(exc: BaseException) -> dict[str, str]:
    module, name = type(exc).__module__, type(exc).__qualname__
    return {
        "exception.type": f"{module}.{name}" if module and module != "builtins" else name,
        "exception.message": scrub(str(exc)),
        "exception.stacktrace": scrub("".join(traceback.format_exception(exc))),
    }


def print_level(stream: str) -> int:
    return _PRINT_LEVELS[stream]
