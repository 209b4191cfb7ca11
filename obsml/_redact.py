"""Redaction of credentials before anything is stored or exported.

One policy per middleware holds the header names and query keys whose values are credentials
(the built-in ones plus ``OBSML_REDACT_HEADERS`` and ``OBSML_REDACT_QUERY``), compiled once. It
runs on the background writer, where raw header pairs are first decoded; a redacted value is
replaced by :data:`REDACTED` and the span lists which headers were redacted, so the absence is
visible, never silent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING
from urllib.parse import unquote_plus

from ._ids import recordable_correlation_value
from ._secrets import REDACTED
from ._types import Attributes

if TYPE_CHECKING:
    from ._field_rules import FieldRules

DEFAULT_REDACTED_HEADERS = (
    "api-key",  # Azure OpenAI's and Azure ML online endpoints' key
    "authorization",
    "cookie",
    "ocp-apim-subscription-key",  # Azure API Management's key, in front of many Azure ML endpoints
    "proxy-authorization",
    "set-cookie",
    "x-api-key",
)

# Query keys whose values are credentials: OpenTelemetry's semantic conventions (url.query),
# AWS SigV4 presigned URLs, and the usual names of tokens, API keys and OAuth codes.
REDACTED_QUERY_KEYS = frozenset({
    "access_token", "api_key", "awsaccesskeyid", "code", "sig", "signature", "token", "x-amz-credential",
    "x-amz-signature", "x-goog-signature",
})

# Keep a span well under the SDK's default limit of 128 attributes.
MAX_HEADERS_RECORDED = 64
# A header is recorded up to these bounds (a client can send megabytes), cut with a marker
# that says how much was there: each value to this many characters (gunicorn's default limit
# for a whole header line is 8190), each name to this many values, names to this length.
MAX_HEADER_VALUE_LENGTH = 8192
MAX_HEADER_VALUES = 16
MAX_HEADER_NAME_LENGTH = 256
# What is done with a header's values: kept (cut at the bound), replaced, or checked as ids.
_KEPT, _REDACTED, _CORRELATION = 0, 1, 2
_NAME_CACHE_LIMIT = 1024
# A URL's query inside free text: from "?" to the first space, quote, bracket or fragment.
_QUERY_IN_TEXT = re.compile(r"\?([^\s'\"<>()\[\]{}#]+)")


def header_text(raw_value: bytes) -> str:
    """A header value as recorded: whole, or cut at the bound with a marker giving its true size."""
    if len(raw_value) <= MAX_HEADER_VALUE_LENGTH:
        return raw_value.decode("latin-1")
    return f"{raw_value[:MAX_HEADER_VALUE_LENGTH].decode('latin-1')}[obsml: truncated, {len(raw_value)} bytes]"


def rejected(value: bytes) -> str:
    """What is recorded instead of a correlation header's value that is not an id: its length only."""
    return f"[REJECTED: {len(value)} bytes]"


class RedactionPolicy:
    """What is redacted: header values by name, query values by key (built-ins plus the extras)."""

    def __init__(
        self,
        extra_headers: Iterable[str],
        correlation_headers: Iterable[str] = (),
        extra_query_keys: Iterable[str] = (),
        fields: FieldRules | None = None,
    ) -> None:
        self.headers = frozenset(h.lower() for h in (*DEFAULT_REDACTED_HEADERS, *extra_headers))
        self.correlation_headers = frozenset(h.lower() for h in correlation_headers)
        self.query_keys = frozenset(k.lower() for k in (*REDACTED_QUERY_KEYS, *extra_query_keys))
        # A query can hold one of the keys only if it has one literally (in any case) or has a
        # percent-escape: the cheap test before parsing. Keys with '+' (a space) are never among them.
        self._may_hold_a_key = re.compile("%|" + "|".join(sorted(map(re.escape, self.query_keys))))
        # The body field rules (OBSML_REDACT_FIELDS) apply to query keys too (issue 15); normalized
        # and by suffix, they have no cheap test, so a query is then always parsed (on the writer).
        self.fields = fields if fields else None
        # The writer's per-request work on headers, cached (issue 16): a server sees few names.
        # Per prefix, a raw name: its attribute key and what is done with its values.
        self._rules: dict[str, dict[bytes, tuple[str, int]]] = {"request": {}, "response": {}}
        self._user_agent_keys = {prefix: f"http.{prefix}.header.user-agent" for prefix in self._rules}

    def header_attributes(
        self, prefix: str, pairs: Iterable[tuple[bytes, bytes]], attributes: Attributes, own_id: bytes = b""
    ) -> str | None:
        """``http.{request,response}.header.<name>`` attributes added to ``attributes``, credentials
        replaced, sizes capped; returns the first User-Agent as recorded (None without one).

        ``own_id`` is the request's correlation id, known to be an id: a value equal to it (the
        response's echo) is not checked again.
        """
        rules = self._rules[prefix]
        # The common case first (issue 16: a tenth of the writer's time): every name known, once
        # each, no value to replace, check or cut. Anything else starts over on the full path.
        recorded: dict[str, list[str]] = {}  # attribute key: values
        for raw_name, raw_value in pairs:
            rule = rules.get(raw_name)
            if rule is None or len(raw_value) > MAX_HEADER_VALUE_LENGTH:
                break
            key, kind = rule
            if key in recorded or (kind and (kind == _REDACTED or raw_value != own_id)):
                break
            recorded[key] = [raw_value.decode("latin-1")]
        else:
            if len(recorded) <= MAX_HEADERS_RECORDED:
                for key in sorted(recorded):
                    attributes[key] = recorded[key]
                user_agent = recorded.get(self._user_agent_keys[prefix])
                return user_agent[0] if user_agent else None
        return self._all_header_attributes(prefix, pairs, attributes, own_id)

    def _all_header_attributes(
        self, prefix: str, pairs: Iterable[tuple[bytes, bytes]], attributes: Attributes, own_id: bytes
    ) -> str | None:
        """:meth:`header_attributes`, whatever the headers hold."""
        rules = self._rules[prefix]
        recorded: dict[str, list[str]] = {}  # attribute key: values
        beyond: dict[str, list[int]] = {}  # key: [values over MAX_HEADER_VALUES, their bytes]
        redacted: list[str] = []
        truncated: list[str] = []
        long_names = 0
        for raw_name, raw_value in pairs:
            rule = rules.get(raw_name)
            if rule is None:
                if len(raw_name) > MAX_HEADER_NAME_LENGTH:
                    long_names += 1
                    continue
                rule = self._header_rule(prefix, raw_name)
            key, kind = rule
            values = recorded.get(key)
            if values is None:
                values = recorded[key] = []
            elif len(values) == MAX_HEADER_VALUES:
                counts = beyond.setdefault(key, [0, 0])
                counts[0] += 1
                counts[1] += len(raw_value)
                continue
            if kind == _REDACTED:
                redacted.append(key)
                values.append(REDACTED)
            elif kind == _CORRELATION and raw_value != own_id and not recordable_correlation_value(raw_value):
                values.append(rejected(raw_value))  # may be hostile: never stored (README)
            elif len(raw_value) <= MAX_HEADER_VALUE_LENGTH:
                values.append(raw_value.decode("latin-1"))
            else:
                truncated.append(key)
                values.append(header_text(raw_value))
        for key, (count, size) in beyond.items():
            recorded[key].append(f"[obsml: {count} more values, {size} bytes]")
            truncated.append(key)
        # In the order of the names (a key is its name behind the same prefix).
        keys = sorted(recorded)
        for key in keys[:MAX_HEADERS_RECORDED]:
            attributes[key] = recorded[key]
        not_recorded = max(0, len(keys) - MAX_HEADERS_RECORDED) + long_names
        if not_recorded:
            attributes[f"obsml.{prefix}.headers_not_recorded"] = not_recorded
        if redacted or truncated:
            name_start = len(f"http.{prefix}.header.")
            if redacted:
                attributes[f"obsml.{prefix}.headers_redacted"] = sorted({key[name_start:] for key in redacted})
            if truncated:
                attributes[f"obsml.{prefix}.headers_truncated"] = sorted({key[name_start:] for key in truncated})
        user_agent = recorded.get(self._user_agent_keys[prefix])
        return user_agent[0] if user_agent else None

    def _header_rule(self, prefix: str, raw_name: bytes) -> tuple[str, int]:
        """A header's attribute key and what is done with its values; remembered for the first names
        seen (on the writer only; a client inventing names just finds it full)."""
        name = raw_name.decode("latin-1").lower()
        kind = _REDACTED if name in self.headers else _CORRELATION if name in self.correlation_headers else _KEPT
        rule = (f"http.{prefix}.header.{name}", kind)
        rules = self._rules[prefix]
        if len(rules) < _NAME_CACHE_LIMIT:
            rules[raw_name] = rule
        return rule

    def queries_in_text(self, text: str) -> str:
        """``text`` (a log message, an exception's) with :meth:`query` applied to every URL query in
        it: a client library's log line quotes the URL it called, credentials included."""
        if "?" not in text:
            return text
        return _QUERY_IN_TEXT.sub(lambda m: "?" + self.query(m[1]), text)

    def query(self, raw_query: str) -> str:
        """The query string with credential values replaced; every other byte kept as it came.

        Credential keys are the built-in ones, ``OBSML_REDACT_QUERY`` and the body field names.
        Keys are compared decoded (``%73ig`` is ``sig``) and in any case; only the values of
        matching keys are rewritten, so an unrelated query is never re-encoded.
        """
        rules = self.fields
        if rules is None and not self._may_hold_a_key.search(raw_query.lower()):
            return raw_query
        keys = self.query_keys
        fields = raw_query.split("&")
        changed = False
        for index, field in enumerate(fields):
            key, equals, _ = field.partition("=")
            if not equals:
                continue
            name = unquote_plus(key).lower()
            if name in keys or (rules is not None and rules.redacts_name(name)):
                fields[index] = f"{key}={REDACTED}"
                changed = True
        return "&".join(fields) if changed else raw_query
