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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

if TYPE_CHECKING:
    from opentelemetry.sdk._logs.export import LogRecordExporter as LogRecordExporter
    from opentelemetry.sdk._logs.export import LogRecordExportResult
else:
    try:
        from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
    except ImportError:  # OpenTelemetry's SDK before 1.34 (Azure ML's inference server pins one) names them so
        from opentelemetry.sdk._logs.export import LogExporter as LogRecordExporter
        from opentelemetry.sdk._logs.export import LogExportResult as LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from ._exporters import json_line, log_record
from ._forks import renew_locks_in_child
from ._parts import PartFiles
from ._secrets import scrub
from ._stats import count, guarded, record_drop
from ._store import Store

if TYPE_CHECKING:
    # Only a type: OpenTelemetry's SDK names it so since 1.34 (obsml supports 1.30 and later).
    from opentelemetry.sdk._logs import ReadableLogRecord

    from ._capture import Capture
    from ._redact import RedactionPolicy
    from ._writer import Writer

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


class LogSettings(Protocol):
    """What the request logs need of a request's middleware: its ``Capturer`` (in ``_pipeline``), which
    the capture holds as its ``capturer`` (a protocol, so that nothing here imports the pipeline)."""

    @property
    def log_level(self) -> int: ...
    @property
    def capture_print(self) -> bool: ...
    @property
    def request_logs(self) -> RequestLogs: ...
    @property
    def base_attributes(self) -> dict[str, str]: ...
    @property
    def writer(self) -> Writer: ...
    @property
    def redaction(self) -> RedactionPolicy: ...


class LogEntry:
    """One log record of a request, queued for the writer. Made on the request path, where nothing is
    formatted but the message (a record's arguments may change once the call returns); the request's
    ids are read from its capture on the writer (they outlive the capture's release)."""

    __slots__ = ("capture", "message", "nbytes", "record")

    def __init__(self, capture: Capture, record: logging.LogRecord, message: str) -> None:
        self.capture, self.record, self.message = capture, record, message
        self.nbytes = 256 + len(message)

    def run(self) -> None:
        capture, record = self.capture, self.record
        settings: LogSettings = capture.capturer  # type: ignore[assignment]  # the Capturer is both
        with guarded("writing a log record", "log"):
            settings.request_logs.write(
                capture, record.name, record.levelno, self.message, int(record.created * 1e9), record
            )


class PrintedLine:
    """One line a request printed to ``stream`` (``stdout`` or ``stderr``), queued for the writer."""

    __slots__ = ("capture", "message", "nbytes", "stream", "time_ns", "truncated")

    def __init__(self, capture: Capture, stream: str, message: str, truncated: int) -> None:
        self.capture, self.stream, self.message, self.truncated = capture, stream, message, truncated
        self.time_ns = time.time_ns()
        self.nbytes = 256 + len(message)

    def run(self) -> None:
        capture = self.capture
        settings: LogSettings = capture.capturer  # type: ignore[assignment]  # the Capturer is both
        with guarded("writing a printed line", "log"):
            settings.request_logs.write(
                capture, self.stream, _PRINT_LEVELS[self.stream], self.message, self.time_ns, None, self.truncated
            )


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
        renew_locks_in_child(self, "_lock")

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

    def write(
        self, capture: Capture, logger: str, levelno: int, message: str, time_ns: int,
        record: logging.LogRecord | None, truncated: int = 0,
    ) -> None:
        """Writer side: a log record (or, without ``record``, a printed line) of ``capture``'s request,
        as a store record and as an OpenTelemetry log record."""
        attributes: dict[str, Any] = {}
        if record is not None:
            for key, value in vars(record).items():  # the record's `extra=` fields
                if key not in _RESERVED and not key.startswith("_"):
                    attributes[key] = json_safe(value)
        settings: LogSettings = capture.capturer  # type: ignore[assignment]
        attributes.update(settings.base_attributes)
        attributes["obsml.correlation_id"] = capture.correlation_id
        if record is not None:
            attributes["code.file.path"] = record.pathname
            attributes["code.function.name"] = record.funcName
            attributes["code.line.number"] = record.lineno
            if record.exc_info and record.exc_info[1] is not None:
                attributes.update(_exception_attributes(record.exc_info[1], settings.redaction.queries_in_text))
            body: Any = settings.redaction.queries_in_text(scrub(message))
        else:
            body = _printed_body(settings.redaction.queries_in_text(scrub(message)))
        if truncated:
            attributes["obsml.print.truncated_characters"] = truncated
        level_name = logging.getLevelName(levelno)
        severity_text = _SEVERITY_TEXT.get(level_name, level_name)
        severity = severity_number(levelno)
        if self.parts is not None:
            line = log_record(
                time_ns=time_ns, observed_ns=time.time_ns(), trace_id=capture.trace_id, span_id=capture.span_id,
                severity_text=severity_text, severity_number=severity, logger=logger, body=body,
                attributes=attributes, resource=self._resource_record,
            )
            start = line["time"]
            self.parts.add(f"logs/{start[0:4]}/{start[5:7]}/{start[8:10]}/{start[11:13]}", json_line(line))
        if self._exporters:
            span = NonRecordingSpan(SpanContext(capture.trace_id, capture.span_id, False, _SAMPLED))
            self._provider_now().get_logger(logger).emit(
                LogRecord(
                    timestamp=time_ns,
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


def _exception_attributes(exc: BaseException, redact: Callable[[str], str]) -> dict[str, str]:
    module, name = type(exc).__module__, type(exc).__qualname__
    return {
        "exception.type": f"{module}.{name}" if module and module != "builtins" else name,
        "exception.message": redact(scrub(str(exc))),
        "exception.stacktrace": redact(scrub("".join(traceback.format_exception(exc)))),
    }
