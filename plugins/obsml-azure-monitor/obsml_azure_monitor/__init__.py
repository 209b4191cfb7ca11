"""obsml-azure-monitor: obsml's captured requests, exceptions, request logs and metrics in Application Insights.

``OBSML_EXPORTERS=jsonl,azure_monitor`` with ``APPLICATIONINSIGHTS_CONNECTION_STRING`` set; see
the README of this package for what arrives and how to query it.
"""

from __future__ import annotations

from ._config import CONNECTION_STRING_VARIABLE, LOG_LEVEL_VARIABLE, STORAGE_DIR_VARIABLE
from ._exporter import AzureMonitorSpanExporter, azure_monitor_exporter, live_exporters
from ._limits import (
    CUT_ATTRIBUTE,
    KEYS_ATTRIBUTE,
    MESSAGE_LIMIT,
    PROPERTY_KEY_LIMIT,
    PROPERTY_VALUE_LIMIT,
    URL_ATTRIBUTE,
)

__all__ = [
    "CONNECTION_STRING_VARIABLE",
    "CUT_ATTRIBUTE",
    "KEYS_ATTRIBUTE",
    "LOG_LEVEL_VARIABLE",
    "MESSAGE_LIMIT",
    "PROPERTY_KEY_LIMIT",
    "PROPERTY_VALUE_LIMIT",
    "STORAGE_DIR_VARIABLE",
    "URL_ATTRIBUTE",
    "AzureMonitorSpanExporter",
    "azure_monitor_exporter",
    "live_exporters",
]
