"""Python ``logging`` records emitted while obsml serves a request, as Application Insights trace items.

One handler on the root logger, installed when the first ``azure_monitor`` exporter starts and
removed when the last one shuts down. It looks at a record only while ``obsml.current_request()``
is not None (in the app's own thread or task, during a request), and never at the loggers of
obsml, the Azure SDK, OpenTelemetry, urllib3, requests or msal (no feedback loop: the exporter's
own HTTP logging never comes back to it). A record becomes an OpenTelemetry log record with the
request's trace and span ids, queued for a private ``LoggerProvider`` (never set as the global
one) whose ``BatchLogRecordProcessor`` sends it through an ``AzureMonitorLogExporter``. On the
app's thread that is a dictionary and a deque append; all I/O happens on the processor's thread.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Sequence
from typing import Any

import obsml
from azure.monitor.opentelemetry.exporter import AzureMonitorLogExporter
from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from ._limits import Limits
from ._log import warn_now_and_then

IGNORED_LOGGERS = ("obsml", "azure", "opentelemetry", "urllib3", "requests", "msal")
_RESERVED = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_SEVERITY_TEXT = {"WARNING": "WARN", "CRITICAL": "FATAL"}


def ignored_logger(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in IGNORED_LOGGERS)


def severity_number(levelno: int) -> SeverityNumber:
    """DEBUG 5, INFO 9, WARNING 13, ERROR 17, CRITICAL 21 (Application Insights: Verbose … Critical)."""
    return SeverityNumber(min(24, max(1, (levelno - 10) * 4 // 10 + 5)))


class _LimitedLogExporter(LogRecordExporter):
    """The Azure log exporter, fed records in which nothing is over its limits."""

    def __init__(self, inner: AzureMonitorLogExporter, limits: Limits) -> None:
        self.inner = inner
        self.limits = limits

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        try:
            records = []
            for record in batch:
                try:
                    records.append(self.limits.log(record))
                except Exception:
                    warn_now_and_then("log-limits", "obsml-azure-monitor could not check a log record's lengths; "
                                      "it is sent as it is", exc_info=True)
                    records.append(record)
            result: LogRecordExportResult = self.inner.export(records)
            return result
        except Exception:
            warn_now_and_then("log-export", "obsml-azure-monitor could not export log records", exc_info=True)
            return LogRecordExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        self.inner.shutdown()


class LogPipeline:
    """One exporter's log path: its level, a private LoggerProvider and a BatchLogRecordProcessor."""

    def __init__(self, *, key: str, level: int, settings: obsml.Settings, exporter: AzureMonitorLogExporter,
                 limits: Limits) -> None:
        self.key = key  # the connection string: one pipeline per destination receives a record
        self.level = level
        self.processor = BatchLogRecordProcessor(_LimitedLogExporter(exporter, limits), schedule_delay_millis=1000)
        self.provider = LoggerProvider(
            resource=Resource.create({"service.name": settings.service}), shutdown_on_exit=False
        )
        self.provider.add_log_record_processor(self.processor)
        self.constant = {
            "obsml.service": settings.service,
            "obsml.model.name": settings.model,
            "obsml.model.version": settings.version,
        }

    def emit(self, record: logging.LogRecord, ids: obsml.RequestIds) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not cost the record
            message = str(record.msg)
        attributes: dict[str, Any] = {}
        for key, value in vars(record).items():  # the record's `extra=` fields
            if key not in _RESERVED and not key.startswith("_"):
                attributes[key] = value if isinstance(value, (str, bool, int, float)) else str(value)
        attributes.update(self.constant)
        attributes["obsml.correlation_id"] = ids.correlation_id
        attributes["code.file.path"] = record.pathname
        attributes["code.function.name"] = record.funcName
        attributes["code.line.number"] = record.lineno
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            module, name = type(exc).__module__, type(exc).__qualname__
            attributes["exception.type"] = f"{module}.{name}" if module and module != "builtins" else name
            attributes["exception.message"] = str(exc)
            attributes["exception.stacktrace"] = "".join(traceback.format_exception(*record.exc_info))
        span = NonRecordingSpan(SpanContext(int(ids.trace_id, 16), int(ids.span_id, 16), False, _SAMPLED))
        self.provider.get_logger(record.name).emit(
            LogRecord(
                timestamp=int(record.created * 1e9),
                observed_timestamp=time.time_ns(),
                context=set_span_in_context(span),
                severity_text=_SEVERITY_TEXT.get(record.levelname, record.levelname),
                severity_number=severity_number(record.levelno),
                body=message,
                attributes=attributes,
            )
        )

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.provider.force_flush(timeout_millis))

    def shutdown(self) -> None:
        self.provider.shutdown()


class RequestLogHandler(logging.Handler):
    """On the root logger: hands records emitted during a request to the pipelines registered."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.pipelines: dict[str, LogPipeline] = {}
        self._snapshot: tuple[LogPipeline, ...] = ()
        self._local = threading.local()

    def add(self, pipeline: LogPipeline) -> None:
        self.pipelines[pipeline.key] = pipeline  # the newest pipeline per destination
        self._snapshot = tuple(self.pipelines.values())

    def remove(self, pipeline: LogPipeline) -> None:
        if self.pipelines.get(pipeline.key) is pipeline:
            del self.pipelines[pipeline.key]
        self._snapshot = tuple(self.pipelines.values())

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock: emit is thread-safe, and the app's threads must not queue up behind it.
        checked = self.filter(record)
        if isinstance(checked, logging.LogRecord):
            record = checked
        if checked:
            self.emit(record)
        return bool(checked)

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):
            return
        self._local.busy = True
        try:
            self._last_resort(record)
            if ignored_logger(record.name):
                return
            ids = obsml.current_request()
            if ids is None:
                return
            for pipeline in self._snapshot:
                if record.levelno >= pipeline.level:
                    pipeline.emit(record, ids)
        except Exception:
            warn_now_and_then("log-handler", "obsml-azure-monitor could not capture a log record", exc_info=True)
        finally:
            self._local.busy = False

    def _last_resort(self, record: logging.LogRecord) -> None:
        """Python prints a warning nobody handles to stderr (``logging.lastResort``) only when no
        handler at all is found; this handler must not silence that, so it does the printing then."""
        last = logging.lastResort
        if last is None or record.levelno < last.level:
            return
        found = logging.root if record.name == "root" else logging.Logger.manager.loggerDict.get(record.name)
        current = found if isinstance(found, logging.Logger) else None
        while current is not None:
            if any(handler is not self for handler in current.handlers):
                return
            if not current.propagate:
                break
            current = current.parent
        last.handle(record)


_lock = threading.Lock()
_handler: RequestLogHandler | None = None
# Levels changed so that records of `level` exist at all, restored when the last pipeline goes.
_changed: dict[str, tuple[int, int]] = {}  # logger name -> (level before, level set)


def register(pipeline: LogPipeline) -> None:
    global _handler
    with _lock:
        if _handler is None:
            _handler = RequestLogHandler()
        root = logging.getLogger()
        if _handler not in root.handlers:
            root.addHandler(_handler)
        _handler.add(pipeline)
        if root.level > pipeline.level:
            before = root.level
            # The Azure SDK logs every HTTP request at INFO: keep it at the level it had.
            azure = logging.getLogger("azure")
            if azure.level == logging.NOTSET and "azure" not in _changed:
                _changed["azure"] = (logging.NOTSET, before)
                azure.setLevel(before)
            _changed.setdefault("", (before, pipeline.level))
            _changed[""] = (_changed[""][0], pipeline.level)
            root.setLevel(pipeline.level)


def unregister(pipeline: LogPipeline) -> None:
    global _handler
    with _lock:
        if _handler is None:
            return
        _handler.remove(pipeline)
        if _handler.pipelines:
            return
        logging.getLogger().removeHandler(_handler)
        _handler = None
        for name, (before, set_to) in _changed.items():
            logger = logging.getLogger(name) if name else logging.getLogger()
            if logger.level == set_to:  # unless someone changed it since
                logger.setLevel(before)
        _changed.clear()
