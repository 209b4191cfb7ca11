"""The ``azure_monitor`` exporter: obsml's spans, the request's log records and metrics to Application Insights.

obsml runs it behind a ``BatchSpanProcessor``: ``export`` runs on that processor's thread (every
5 s, or 512 spans), and on obsml's writer thread when obsml flushes (``obsml.flush()``, ASGI
lifespan shutdown, process exit), after the store is written. ``export`` rebuilds each span so
that nothing is over Application Insights' limits (``_limits``), records the request metrics and
hands the spans to the Azure exporter (its HTTP retries and offline storage on). It never raises.
The request's log records come through ``obsml_log_exporter`` (``_logs``), fed by obsml's core.
"""

from __future__ import annotations

import atexit
import weakref
from collections.abc import Sequence
from typing import Any

import obsml
from azure.monitor.opentelemetry.exporter import AzureMonitorLogExporter, AzureMonitorTraceExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from ._config import CONNECTION_STRING_VARIABLE, PluginConfig, load_config
from ._limits import Limits
from ._log import logger, warn_now_and_then
from ._logs import LimitedLogExporter
from ._metrics import RequestMetrics


class _ResourceHolder:
    """What the exporter reads ``.resource`` from for its ``_OTELRESOURCE_`` metric (by default the
    global tracer provider, which obsml never sets: the exporter then logs a traceback)."""

    def __init__(self, resource: Resource) -> None:
        self.resource = resource


class AzureMonitorSpanExporter(SpanExporter):
    """obsml's spans as Application Insights request and exception items (see the plugin's README)."""

    def __init__(self, *, config: PluginConfig, settings: obsml.Settings, store: obsml.ObjectStore) -> None:
        self.settings = settings
        self.limits = Limits(store, settings.service, settings.sample_rate)
        storage: dict[str, Any] = {}
        if config.storage_directory is not None:
            storage["storage_directory"] = config.storage_directory
        failed: str | None = None
        try:
            self._traces = AzureMonitorTraceExporter(
                connection_string=config.connection_string,
                tracer_provider=_ResourceHolder(Resource.create({"service.name": settings.service})),
                **storage,
            )
            log_exporter = (
                AzureMonitorLogExporter(connection_string=config.connection_string, **storage)
                if config.log_level is not None else None
            )
        except Exception as exc:
            failed = _describe(exc, config.connection_string)
        if failed is not None:  # raised outside the except block: no exception chained to it
            raise obsml.PluginError(
                f"exporter 'azure_monitor' failed to start: the Azure Monitor exporter rejected "
                f"{CONNECTION_STRING_VARIABLE}: {failed}"
            )
        self._metrics = RequestMetrics(connection_string=config.connection_string, settings=settings)
        # The request logs obsml's core bridges (issue 18), sent as trace items; None: not sent here.
        self.obsml_log_exporter: LimitedLogExporter | None = None
        if log_exporter is not None and config.log_level is not None:
            self.obsml_log_exporter = LimitedLogExporter(log_exporter, self.limits, config.log_level)
        self._shut = False
        _LIVE.add(self)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """The Azure exporter's result (FAILURE: not delivered now; when it was a retryable error the
        batch waits in the offline storage). Never raises."""
        try:
            if self._shut:
                return SpanExportResult.FAILURE
            ready = []
            for span in spans:
                ready.append(self._limited(span))
                self._record(span)
            result: SpanExportResult = self._traces.export(ready)
        except Exception:
            warn_now_and_then("export", "obsml-azure-monitor could not export spans", exc_info=True)
            result = SpanExportResult.FAILURE
        return result

    def _limited(self, span: ReadableSpan) -> ReadableSpan:
        try:
            return self.limits.span(span)
        except Exception:
            warn_now_and_then("limits", "obsml-azure-monitor could not check a span's lengths; it is sent as it "
                              "is", exc_info=True)
            return span

    def _record(self, span: ReadableSpan) -> None:
        try:
            self._metrics.record(span)
        except Exception:
            warn_now_and_then("metrics", "obsml-azure-monitor could not record a request's metrics", exc_info=True)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Metrics out now (spans are flushed by obsml's processor, which calls export; log records by
        obsml's log processor)."""
        ok = True
        try:
            self._metrics.force_flush()
        except Exception:
            warn_now_and_then("metrics", "obsml-azure-monitor could not flush metrics", exc_info=True)
            ok = False
        return ok

    def shutdown(self) -> None:
        """Send the metrics left and stop their thread (obsml shuts the log exporter down). Idempotent."""
        if self._shut:
            return
        self._shut = True
        _LIVE.discard(self)
        for step in (self._traces.shutdown, self._stop_metrics):
            try:
                step()
            except Exception:
                logger.debug("obsml-azure-monitor shutdown step failed", exc_info=True)

    def _stop_metrics(self) -> None:
        self._metrics.shutdown()


def _describe(exc: Exception, connection_string: str) -> str:
    """The exporter's complaint, unless it could contain a part of the connection string."""
    text = str(exc)
    parts = [value for pair in connection_string.split(";") for value in pair.split("=", 1) if len(value) >= 4]
    if any(part in text for part in parts):
        return type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def azure_monitor_exporter(*, settings: obsml.Settings, store: obsml.ObjectStore) -> SpanExporter:
    """The factory obsml calls for ``OBSML_EXPORTERS=…,azure_monitor``.

    Configured by ``APPLICATIONINSIGHTS_CONNECTION_STRING`` (required),
    ``OBSML_AZURE_MONITOR_LOG_LEVEL`` and ``OBSML_AZURE_MONITOR_STORAGE_DIR``; raises
    :class:`obsml.ConfigError` or :class:`obsml.PluginError` (never showing the key) when unusable.
    """
    return AzureMonitorSpanExporter(config=load_config(), settings=settings, store=store)


_LIVE: weakref.WeakSet[AzureMonitorSpanExporter] = weakref.WeakSet()


def live_exporters() -> list[AzureMonitorSpanExporter]:
    """The exporters started and not shut down in this process."""
    return list(_LIVE)


@atexit.register
def _shutdown_all() -> None:
    # Registered at import, before obsml's writer registers its exit flush (at its first request):
    # atexit runs in reverse, so obsml's last spans reach export() before this runs.
    for exporter in list(_LIVE):
        exporter.shutdown()
