"""The request logs obsml hands this exporter, as Application Insights trace (and exception) items.

obsml's core bridges Python ``logging`` (and, with ``OBSML_CAPTURE_PRINT``, printed lines) to
the request being served (issue 18): it feeds the ``obsml_log_exporter`` of an exporter through
a private ``LoggerProvider`` whose ``BatchLogRecordProcessor`` calls :meth:`LimitedLogExporter.export`
on its own thread, each record carrying the request's trace and span ids. Here the records below
``OBSML_AZURE_MONITOR_LOG_LEVEL`` are left out and the rest cut to Application Insights' limits.
"""

from __future__ import annotations

from collections.abc import Sequence

from azure.monitor.opentelemetry.exporter import AzureMonitorLogExporter
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult

from ._limits import Limits
from ._log import warn_now_and_then


def severity_number(levelno: int) -> int:
    """DEBUG 5, INFO 9, WARNING 13, ERROR 17, CRITICAL 21 (Application Insights: Verbose … Critical)."""
    return min(24, max(1, (levelno - 10) * 4 // 10 + 5))


class LimitedLogExporter(LogRecordExporter):
    """The Azure log exporter, fed the records at or above ``level``, nothing in them over its limits."""

    def __init__(self, inner: AzureMonitorLogExporter, limits: Limits, level: int) -> None:
        self.inner = inner
        self.limits = limits
        self.least_severity = severity_number(level)

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        try:
            records = []
            for record in batch:
                severity = record.log_record.severity_number
                if severity is not None and severity.value < self.least_severity:
                    continue
                try:
                    records.append(self.limits.log(record))
                except Exception:
                    warn_now_and_then("log-limits", "obsml-azure-monitor could not check a log record's lengths; "
                                      "it is sent as it is", exc_info=True)
                    records.append(record)
            if not records:
                return LogRecordExportResult.SUCCESS
            result: LogRecordExportResult = self.inner.export(records)
            return result
        except Exception:
            warn_now_and_then("log-export", "obsml-azure-monitor could not export log records", exc_info=True)
            return LogRecordExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        self.inner.shutdown()
