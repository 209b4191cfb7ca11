"""Redaction of credentials before anything is stored or exported.

The policy is compiled once per middleware. It runs on the background writer, where raw
header pairs are first decoded; a redacted value is replaced by :data:`REDACTED` and the
span lists which headers were redacted, so the absence is visible, never silent.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode

from ._types import Attributes

REDACTED = "[REDACTED]"

DEFAULT_REDACTED_HEADERS = (
    "authorization",
    "cookie",
    "ocp-apim-subscription-key",  # Azure API Management's key, in front of many Azure ML endpoints
    "proxy-authorization",
    "set-cookie",
    "x-api-key",
)

# OpenTelemetry semantic conventions (url.query): query keys whose values are credentials.
REDACTED_QUERY_KEYS = frozenset({"awsaccesskeyid", "signature", "sig", "x-goog-signature"})

# Keep a span well under the SDK's default limit of 128 attributes.
MAX_HEADERS_RECORDED = 64


class RedactionPolicy:
    def __init__(self, extra_headers: Iterable[str]) -> None:
        self.headers = frozenset(h.lower() for h in (*DEFAULT_REDACTED_HEADERS, *extra_headers))

    def header_attributes(self, prefix: str, pairs: Iterable[tuple[bytes, bytes]]) -> Attributes:
        """``http.{request,response}.header.<name>`` attributes, credentials replaced."""
        values: dict[str, list[str]] = {}
        redacted: set[str] = set()
        for raw_name, raw_value in pairs:
            name = raw_name.decode("latin-1").lower()
            if name in self.headers:
                redacted.add(name)
                value = REDACTED
            else:
                value = raw_value.decode("latin-1")
            values.setdefault(name, []).append(value)
        attributes: Attributes = {}
        for index, (name, header_values) in enumerate(sorted(values.items())):
            if index == MAX_HEADERS_RECORDED:
                attributes[f"obsml.{prefix}.headers_not_recorded"] = len(values) - MAX_HEADERS_RECORDED
                break
            attributes[f"http.{prefix}.header.{name}"] = header_values
        if redacted:
            attributes[f"obsml.{prefix}.headers_redacted"] = sorted(redacted)
        return attributes

    @staticmethod
    def query(raw_query: str) -> str:
        """The query string with credential values replaced (keys kept, so the shape stays visible)."""
        if not raw_query or not any(key in raw_query.lower() for key in REDACTED_QUERY_KEYS):
            return raw_query
        pairs = parse_qsl(raw_query, keep_blank_values=True)
        return urlencode(
            [(key, REDACTED if key.lower() in REDACTED_QUERY_KEYS else value) for key, value in pairs],
            safe="[]",
        )
