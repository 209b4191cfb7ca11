"""What Application Insights would cut, handled before the exporter sees it: nothing is cut silently.

The limits, as azure-monitor-opentelemetry-exporter 1.0.0b58 applies them (without a word):

- a custom property (span, event or log attribute) value: ``str(value)[:8192]``
  (``_utils._filter_custom_properties``);
- a custom property key over 150 characters: the property is dropped, value and all (same function);
- an exception's message and stack trace, a log record's message: ``[:32768]``
  (``export/trace/_exporter.py``, ``export/logs/_exporter.py``);
- a request's ``url``: ``[:2048]``; its ``name`` (the operation name): ``[:1024]``.

The ingestion service documents the same numbers. A value over its limit is written whole to the
obsml store by its ``offload`` (``azure_monitor/<yyyy>/<mm>/<dd>/<trace>-<span>-<key>.<ext>``,
through the spool for a remote store) and replaced by its head and a marker, with ``<key>.uri``, ``<key>.size`` (bytes)
and ``<key>.sha256`` beside it; ``obsml.azure_monitor.cut`` lists the keys so handled. A key over
150 characters is shortened deterministically (a prefix and a hash) and
``obsml.azure_monitor.keys`` maps the short keys back. Lengths are checked in UTF-16 code units
(what .NET-based ingestion counts), which is never less than what the exporter counts.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import itertools
import json
import re
import time
from collections.abc import Sequence
from hashlib import sha256
from typing import Any

import obsml
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import StatusCode

from ._log import warn_now_and_then

PROPERTY_VALUE_LIMIT = 8192
PROPERTY_KEY_LIMIT = 150
MESSAGE_LIMIT = 32768
URL_LIMIT = 2048
NAME_LIMIT = 1024

PROPERTY_HEAD = 8000  # at most this much of a cut property value is kept, then the marker
MESSAGE_HEAD = 32000

FOLDER = "azure_monitor"  # long values go to <store>/azure_monitor/<yyyy>/<mm>/<dd>/ (obsml.ObjectStore.offload)
CUT_ATTRIBUTE = "obsml.azure_monitor.cut"
KEYS_ATTRIBUTE = "obsml.azure_monitor.keys"
URL_ATTRIBUTE = "obsml.azure_monitor.url"
SAMPLE_RATE_ATTRIBUTE = "_MS.sampleRate"  # the exporter's: the envelope's sampleRate, so itemCount = 100 / it
BODY_KEYS = ("obsml.request.body", "obsml.response.body")
# Copied from the request's span onto its exception items, so they can be queried alone.
REQUEST_KEYS = ("obsml.correlation_id", "obsml.model.name", "obsml.model.version")

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_log_counter = itertools.count(1)


def _fallback_is_standard(key: str) -> bool:
    prefixes = ("http.", "db.", "message.", "messaging.", "rpc.", "enduser.", "net.", "peer.", "exception.",
                "thread.", "fass.", "code.")
    others = {"session.id", "client.address", "client.port", "server.address", "server.port", "url.full",
              "url.path", "url.query", "url.scheme", "url.template", "error.type", "network.local.address",
              "network.local.port", "network.protocol.name", "network.peer.address", "network.peer.port",
              "network.protocol.version", "network.transport", "user_agent.original", "user_agent.synthetic.type",
              "_MS.sampleRate", "microsoft.custom_measurements"}
    return key.startswith(prefixes) or key in others


try:  # the exporter's own rule for which span attributes are fields, not custom dimensions
    from azure.monitor.opentelemetry.exporter.export.trace._exporter import (
        _is_standard_attribute as is_standard_attribute,
    )
except ImportError:  # pragma: no cover - a later exporter version may move it
    is_standard_attribute = _fallback_is_standard

_LOG_FIELDS = frozenset({  # log attributes the log exporter turns into fields, not custom dimensions
    "exception.type", "exception.message", "exception.stacktrace", "exception.escaped",
})


def units(text: str) -> int:
    """Length in UTF-16 code units (a character outside the BMP counts twice)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def fits(text: str, limit: int) -> bool:
    return len(text) * 2 <= limit or units(text) <= limit


def head(text: str, budget: int) -> str:
    """The longest prefix of ``text`` of at most ``budget`` UTF-16 code units."""
    prefix = text[:budget]
    while (extra := units(prefix) - budget) > 0:
        prefix = prefix[: len(prefix) - (extra + 1) // 2]  # a character is 1 or 2 units: never overshoots
    return prefix


def short_key(key: str) -> str:
    """A key of at most 150 characters: a prefix and 16 hex digits of the whole key's sha256."""
    digest = sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{key[:PROPERTY_KEY_LIMIT - 18]}~{digest}"


def file_name(key: str) -> str:
    """A key as part of an object name: safe characters only, a hash when anything was changed."""
    safe = _SAFE.sub("_", key)[:80]
    if safe != key:
        safe = f"{safe}-{sha256(key.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"
    return safe


def _sequence_text(value: Sequence[Any]) -> str:
    return json.dumps(list(value), ensure_ascii=False, default=str)


class _Item:
    """The attributes of one telemetry item as they will be sent, what was cut and which keys were shortened."""

    def __init__(self, store: obsml.ObjectStore, folder_ns: int, stem: str, original: Any) -> None:
        self.store = store
        self.folder_ns = folder_ns
        self.stem = stem
        self.original = original  # the attributes before, to avoid reference keys that already exist
        self.out: dict[str, Any] = {}
        self.cut: list[str] = []
        self.keys: dict[str, str] = {}

    def set(self, key: str, value: Any) -> None:
        if len(key) > PROPERTY_KEY_LIMIT:
            short = short_key(key)
            self.keys[short] = key
            key = short
        self.out[key] = value

    def put(self, key: str, value: Any) -> None:
        """A custom property: as it is when it fits, else referenced."""
        if isinstance(value, str):
            if fits(value, PROPERTY_VALUE_LIMIT):
                self.set(key, value)
            else:
                self.offload(key, value, value.encode("utf-8", "surrogatepass"), PROPERTY_VALUE_LIMIT, PROPERTY_HEAD)
            return
        if isinstance(value, (list, tuple)) and not fits(str(value), PROPERTY_VALUE_LIMIT):
            text = _sequence_text(value)
            self.offload(key, text, text.encode("utf-8", "surrogatepass"), PROPERTY_VALUE_LIMIT, PROPERTY_HEAD,
                         extension="json")
            return
        self.set(key, value)

    def reference_prefix(self, key: str) -> str:
        taken = self.original or {}
        if any(f"{key}.{suffix}" in taken for suffix in ("uri", "size", "sha256")):
            return f"{key}.azure_monitor"
        return key

    def offload(
        self, key: str, text: str, data: bytes, limit: int, keep: int, *, prefix: str | None = None,
        extension: str = "txt", references: tuple[str, ...] = ("uri", "size", "sha256"), assign: bool = True,
        what: str = "value",
    ) -> str:
        """Write ``data`` (the whole of ``text``) to the store, set the references and return (and,
        when ``assign``, set) the head of ``text`` with a marker."""
        prefix = prefix or self.reference_prefix(key)
        try:
            written = self.store.offload(FOLDER, f"{self.stem}-{file_name(key)}.{extension}", data,
                                         time_ns=self.folder_ns)
        except Exception as exc:  # the store refused: the value is sent cut and marked
            reason = getattr(exc, "reason", type(exc).__name__)
            warn_now_and_then(f"store:{reason}", "obsml-azure-monitor could not write a long value to the obsml "
                              "store (%s); it is sent cut and marked", reason)
            where = f"the store refused the whole {what}"
        else:
            for suffix in references:
                self.set(f"{prefix}.{suffix}", getattr(written, suffix))
            where = f"the whole {what} is at {prefix}.uri"
        marker = f" …[cut by obsml-azure-monitor: {len(text)} characters in all; {where}]"
        cut = head(text, min(keep, limit - units(marker))) + marker
        if assign:
            self.set(key, cut)
        self.cut.append(key)
        return cut

    def finish(self) -> dict[str, Any]:
        if self.keys:
            self.put(KEYS_ATTRIBUTE, json.dumps(self.keys, ensure_ascii=False))
        if self.cut:
            listed = json.dumps(self.cut, ensure_ascii=False)
            if fits(listed, PROPERTY_VALUE_LIMIT):
                self.out[CUT_ATTRIBUTE] = listed
            else:
                self.offload(CUT_ATTRIBUTE, listed, listed.encode("utf-8", "surrogatepass"), PROPERTY_VALUE_LIMIT,
                             PROPERTY_HEAD, extension="json")
        return self.out


def request_url(attributes: Any) -> str:
    """The request URL as the exporter builds it (``url.full``, else scheme://host:port/path?query)."""
    if "url.full" in attributes:
        return str(attributes["url.full"])
    scheme, path = attributes.get("url.scheme"), attributes.get("url.path")
    if not scheme or not path:
        return ""
    target = f"{path}?{attributes['url.query']}" if "url.query" in attributes else str(path)
    host = attributes.get("server.address")
    if not host:
        return ""
    if "server.port" in attributes:
        host = f"{host}:{attributes['server.port']}"
    return f"{scheme}://{host}{target}"


class Limits:
    """Rebuilds spans and log records so that the exporter cuts nothing; never mutates its input."""

    def __init__(self, store: obsml.ObjectStore, service: str, sample_rate: float = 1.0) -> None:
        self.store = store
        self.sample_rate = sample_rate
        self._service = Resource({"service.name": service})
        self._resources: tuple[Resource | None, Resource] | None = None

    def resource(self, original: Resource | None) -> Resource:
        """The span's resource with obsml's service name: Application Insights' cloud role."""
        cached = self._resources
        if cached is not None and cached[0] is original:
            return cached[1]
        merged = original.merge(self._service) if original is not None else self._service
        self._resources = (original, merged)
        return merged

    def span(self, span: ReadableSpan) -> ReadableSpan:
        context = span.context
        trace_id = f"{context.trace_id:032x}" if context else "0" * 32
        span_id = f"{context.span_id:016x}" if context else "0" * 16
        start = span.start_time or time.time_ns()
        attributes = dict(span.attributes or {})
        item = _Item(self.store, start, f"{trace_id}-{span_id}", attributes)
        handled = set()
        for key in BODY_KEYS:
            value = attributes.get(key)
            if isinstance(value, str) and not fits(value, PROPERTY_VALUE_LIMIT) and f"{key}.uri" not in attributes:
                handled.add(key)
                self._body(item, key, value, attributes)
        for key, value in attributes.items():
            if key in handled:
                continue
            if is_standard_attribute(key):
                item.out[key] = value
            else:
                item.put(key, value)
        self._url(item, attributes, span.name)
        if self.sample_rate < 1 and span.status.status_code is not StatusCode.ERROR:
            # Kept with probability sample_rate (a failure always is): Application Insights weighs it.
            item.out[SAMPLE_RATE_ATTRIBUTE] = self.sample_rate * 100
        events = tuple(self._event(span, index, event, attributes) for index, event in enumerate(span.events))
        return ReadableSpan(
            name=span.name,
            context=context,
            parent=span.parent,
            resource=self.resource(span.resource),
            attributes=item.finish(),
            events=events,
            links=span.links,
            kind=span.kind,
            status=span.status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def _body(self, item: _Item, key: str, value: str, attributes: dict[str, Any]) -> None:
        """An inline body over the limit goes to the store as the captured bytes, so that obsml's own
        ``<key>.size`` and ``<key>.sha256`` describe the object at ``<key>.uri``, as for an offloaded body."""
        data: bytes | None = None
        if attributes.get(f"{key}.encoding") == "base64":
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                data = None
        else:
            data = value.encode("utf-8", "surrogatepass")
        if data is None or f"{key}.sha256" not in attributes:
            item.offload(key, value, value.encode("utf-8", "surrogatepass"), PROPERTY_VALUE_LIMIT, PROPERTY_HEAD)
            return
        base64_body = attributes.get(f"{key}.encoding") == "base64"
        item.offload(key, value, data, PROPERTY_VALUE_LIMIT, PROPERTY_HEAD, prefix=key,
                     extension="bin" if base64_body else "txt", references=("uri",), what="body")

    def _url(self, item: _Item, attributes: dict[str, Any], name: str) -> None:
        url = request_url(attributes)
        if not url:
            return
        method = attributes.get("http.request.method", "")
        route = attributes.get("http.route")
        operation = f"{method} {route}" if route else f"{method} {attributes.get('url.path', '')}"
        if len(url) > URL_LIMIT or len(operation) > NAME_LIMIT or len(name) > NAME_LIMIT:
            item.put(URL_ATTRIBUTE, url)
            item.cut.append("url")

    def _event(self, span: ReadableSpan, index: int, event: Event, span_attributes: dict[str, Any]) -> Event:
        context = span.context
        stem = f"{context.trace_id:032x}-{context.span_id:016x}-event{index}" if context else f"event{index}"
        attributes = dict(event.attributes or {})
        item = _Item(self.store, span.start_time or event.timestamp, stem, attributes)
        exception = event.name == "exception"
        for key, value in attributes.items():
            if exception and key in ("exception.message", "exception.stacktrace"):
                text = str(value)
                if fits(text, MESSAGE_LIMIT):
                    item.out[key] = value
                else:
                    item.offload(key, text, text.encode("utf-8", "surrogatepass"), MESSAGE_LIMIT, MESSAGE_HEAD,
                                 prefix=f"obsml.{key}", what=key.partition(".")[2])
            elif is_standard_attribute(key):
                item.out[key] = value
            else:
                item.put(key, value)
        if exception:
            for key in REQUEST_KEYS:
                if key in span_attributes and key not in attributes:
                    item.put(key, span_attributes[key])
        return Event(event.name, item.finish(), event.timestamp)

    def log(self, record: ReadableLogRecord) -> ReadableLogRecord:
        """A log record with nothing the log exporter would cut; the record itself when nothing would be."""
        log_record = record.log_record
        body, attributes = log_record.body, dict(log_record.attributes or {})
        long_body = isinstance(body, str) and not fits(body, MESSAGE_LIMIT)
        if not long_body and not any(_long_log_attribute(k, v) for k, v in attributes.items()):
            return record
        trace_id = f"{log_record.trace_id or 0:032x}"
        span_id = f"{log_record.span_id or 0:016x}"
        when = log_record.timestamp or log_record.observed_timestamp or time.time_ns()
        item = _Item(self.store, when, f"{trace_id}-{span_id}-log{when}-{next(_log_counter)}", attributes)
        if long_body:
            assert isinstance(body, str)
            body = item.offload("message", body, body.encode("utf-8", "surrogatepass"), MESSAGE_LIMIT, MESSAGE_HEAD,
                                prefix="obsml.message", assign=False, what="message")
        for key, value in attributes.items():
            if key == "exception.stacktrace" and not fits(str(value), MESSAGE_LIMIT):
                text = str(value)
                item.offload(key, text, text.encode("utf-8", "surrogatepass"), MESSAGE_LIMIT, MESSAGE_HEAD,
                             prefix="obsml.exception.stacktrace", what="stacktrace")
            elif key in _LOG_FIELDS:
                item.out[key] = value
            else:
                item.put(key, value)
        rebuilt = copy.copy(log_record)
        rebuilt.body = body
        rebuilt.attributes = item.finish()
        return dataclasses.replace(record, log_record=rebuilt)


def _long_log_attribute(key: str, value: Any) -> bool:
    if len(key) > PROPERTY_KEY_LIMIT:
        return True
    limit = MESSAGE_LIMIT if key in _LOG_FIELDS else PROPERTY_VALUE_LIMIT
    if isinstance(value, str):
        return not fits(value, limit)
    if isinstance(value, (list, tuple)):
        return not fits(str(value), limit)
    return False

