"""The plugin's settings, read from the environment at start-up and checked there.

The connection string is a credential (its InstrumentationKey routes data into someone's
Application Insights resource): no message, repr or exception here ever contains any part of it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from obsml import ConfigError

CONNECTION_STRING_VARIABLE = "APPLICATIONINSIGHTS_CONNECTION_STRING"
LOG_LEVEL_VARIABLE = "OBSML_AZURE_MONITOR_LOG_LEVEL"
STORAGE_DIR_VARIABLE = "OBSML_AZURE_MONITOR_STORAGE_DIR"

_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Names the Azure Monitor exporter reads (lower-cased); these may appear in messages, values never.
_KNOWN_NAMES = {
    "instrumentationkey": "InstrumentationKey",
    "ingestionendpoint": "IngestionEndpoint",
    "liveendpoint": "LiveEndpoint",
    "aadaudience": "AADAudience",
    "applicationid": "ApplicationId",
    "authorization": "Authorization",
    "endpointsuffix": "EndpointSuffix",
    "location": "Location",
}
_LEVELS = {"DEBUG": 10, "INFO": 20, "WARNING": 30, "WARN": 30, "ERROR": 40, "CRITICAL": 50, "FATAL": 50}
_OFF = {"OFF", "NONE", "FALSE", "0"}


@dataclasses.dataclass(frozen=True)
class PluginConfig:
    connection_string: str = dataclasses.field(repr=False)  # normalised, never shown
    log_level: int | None  # the least severe request log record sent; None: none sent (obsml still keeps them)
    storage_directory: str | None  # None: the exporter's default

    def __repr__(self) -> str:
        return (
            f"PluginConfig(connection_string=<hidden>, log_level={self.log_level!r}, "
            f"storage_directory={self.storage_directory!r})"
        )


def load_config(env: Mapping[str, str] | None = None) -> PluginConfig:
    """The plugin's settings; raises :class:`obsml.ConfigError` naming the variable at fault."""
    env = os.environ if env is None else env
    return PluginConfig(
        connection_string=parse_connection_string(env.get(CONNECTION_STRING_VARIABLE)),
        log_level=parse_log_level(env.get(LOG_LEVEL_VARIABLE)),
        storage_directory=parse_storage_directory(env.get(STORAGE_DIR_VARIABLE)),
    )


def parse_connection_string(raw: str | None) -> str:
    """The connection string, checked as the exporter will read it, normalised (whitespace, a
    trailing ``;``, a GUID in upper case). Errors name the part at fault, never a value."""
    name = CONNECTION_STRING_VARIABLE
    if raw is None or not raw.strip():
        raise ConfigError(
            f"{name} is not set: the azure_monitor exporter needs the connection string of an Application "
            "Insights resource (Azure portal: the resource's Overview page, 'Connection String')"
        )
    pairs: dict[str, tuple[str, str]] = {}  # lower-cased name -> (name, value)
    for index, part in enumerate(raw.strip().split(";"), 1):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        shown = _KNOWN_NAMES.get(key.lower(), f"part {index}")
        if not sep or not key:
            raise ConfigError(f"{name} is malformed: {shown} is not Name=Value (values are not shown)")
        if "=" in value:
            raise ConfigError(
                f"{name} is malformed: the value of {shown} contains '=', which the Azure Monitor exporter "
                "cannot read (values are not shown)"
            )
        if not value:
            raise ConfigError(f"{name} is malformed: {shown} has an empty value")
        pairs[key.lower()] = (key, value)
    key_pair = pairs.get("instrumentationkey")
    if key_pair is None:
        raise ConfigError(f"{name} is malformed: it has no InstrumentationKey=<GUID> part")
    ikey = key_pair[1].lower()
    if not _GUID.fullmatch(ikey):
        raise ConfigError(
            f"{name} is malformed: its InstrumentationKey is not a GUID "
            "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, hexadecimal; the value is not shown)"
        )
    pairs["instrumentationkey"] = (key_pair[0], ikey)
    for endpoint in ("ingestionendpoint", "liveendpoint"):
        if endpoint in pairs:
            url = urlsplit(pairs[endpoint][1])
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ConfigError(f"{name} is malformed: its {_KNOWN_NAMES[endpoint]} is not an http(s) URL")
    if "authorization" in pairs and pairs["authorization"][1].lower() != "ikey":
        raise ConfigError(f"{name} is malformed: Authorization must be 'ikey' when present")
    return ";".join(f"{key}={value}" for key, value in pairs.values())


def parse_log_level(raw: str | None) -> int | None:
    if raw is None or not raw.strip():
        return logging.INFO
    text = raw.strip().upper()
    if text in _OFF:
        return None
    if text in _LEVELS:
        return _LEVELS[text]
    if text.isdigit() and 1 <= int(text) <= 50:
        return int(text)
    raise ConfigError(
        f"{LOG_LEVEL_VARIABLE}={raw!r} is not valid: expected DEBUG, INFO, WARNING, ERROR, CRITICAL, "
        "a number from 1 to 50, or off"
    )


def parse_storage_directory(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None
    if any(ord(c) < 32 for c in raw):
        raise ConfigError(f"{STORAGE_DIR_VARIABLE} is not valid: expected a local directory path")
    return os.path.abspath(os.path.expanduser(raw.strip()))
