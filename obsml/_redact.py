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
# A header is recorded up to these bounds (a client can send megabytes), cut with a marker
# that says how much was there: each value to this many characters (gunicorn's default limit
# for a whole header line is 8190), each name to this many values, names to this length.
MAX_HEADER_VALUE_LENGTH = 8192
MAX_HEADER_VALUES = 16
MAX_HEADER_NAME_LENGTH = 256


def header_text(raw_value: bytes) -> str:
    """A header value as recorded: whole, or cut at the bound with a marker giving its true size."""
    if len(raw_value) <= MAX_HEADER_VALUE_LENGTH:
        return raw_value.decode("latin-1")
    return f"{raw_value[:MAX_HEADER_VALUE_LENGTH].decode('latin-1')}[obsml: truncated, {len(raw_value)} bytes]"


class RedactionPolicy:
    def __init__(self, extra_headers: Iterable[str]) -> None:
        self.headers = frozenset(h.lower() for h in (*DEFAULT_REDACTED_HEADERS, *extra_headers))

    def header_attributes(self, prefix: str, pairs: Iterable[tuple[bytes, bytes]]) -> Attributes:
        """``http.{request,response}.header.<name>`` attributes, credentials replaced, sizes capped."""
        values: dict[str, list[str]] = {}
        redacted: set[str] = set()
        truncated: set[str] = set()
        beyond: dict[str, list[int]] = {}  # name: [values over MAX_HEADER_VALUES, their bytes]
        long_names = 0
        for raw_name, raw_value in pairs:
            if len(raw_name) > MAX_HEADER_NAME_LENGTH:
                long_names += 1
                continue
            name = raw_name.decode("latin-1").lower()
            recorded = values.setdefault(name, [])
            if len(recorded) == MAX_HEADER_VALUES:
                counts = beyond.setdefault(name, [0, 0])
                counts[0] += 1
                counts[1] += len(raw_value)
            elif name in self.headers:
                redacted.add(name)
                recorded.append(REDACTED)
            else:
                if len(raw_value) > MAX_HEADER_VALUE_LENGTH:
                    truncated.add(name)
                recorded.append(header_text(raw_value))
        for name, (count, size) in beyond.items():
            values[name].append(f"[obsml: {count} more values, {size} bytes]")
            truncated.add(name)
        attributes: Attributes = {}
        for index, (name, header_values) in enumerate(sorted(values.items())):
            if index == MAX_HEADERS_RECORDED:
                break
            attributes[f"http.{prefix}.header.{name}"] = header_values
        not_recorded = max(0, len(values) - MAX_HEADERS_RECORDED) + long_names
        if not_recorded:
            attributes[f"obsml.{prefix}.headers_not_recorded"] = not_recorded
        if redacted:
            attributes[f"obsml.{prefix}.headers_redacted"] = sorted(redacted)
        if truncated:
            attributes[f"obsml.{prefix}.headers_truncated"] = sorted(truncated)
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
