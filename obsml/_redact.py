"""Redaction of credentials before anything is stored or exported.

The policy is compiled once per middleware. It runs on the background writer, where raw
header pairs are first decoded; a redacted value is replaced by :data:`REDACTED` and the
span lists which headers were redacted, so the absence is visible, never silent.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote_plus

from ._capture import recordable_correlation_value
from ._types import Attributes

REDACTED = "[REDACTED]"

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
# A query can hold a key of REDACTED_QUERY_KEYS only if it has one literally (in any case) or has
# a percent-escape: the cheap test before parsing. Keys with '+' (a space) are never among them.
_MAY_HOLD_A_KEY = re.compile("%|" + "|".join(sorted(map(re.escape, REDACTED_QUERY_KEYS))))

# Keep a span well under the SDK's default limit of 128 attributes.
MAX_HEADERS_RECORDED = 64


def rejected(value: bytes) -> str:
    """What is recorded instead of a correlation header's value that is not an id: its length only."""
    return f"[REJECTED: {len(value)} bytes]"


class RedactionPolicy:
    def __init__(self, extra_headers: Iterable[str], correlation_headers: Iterable[str] = ()) -> None:
        self.headers = frozenset(h.lower() for h in (*DEFAULT_REDACTED_HEADERS, *extra_headers))
        self.correlation_headers = frozenset(h.lower() for h in correlation_headers)

    def header_attributes(self, prefix: str, pairs: Iterable[tuple[bytes, bytes]]) -> Attributes:
        """``http.{request,response}.header.<name>`` attributes, credentials replaced."""
        values: dict[str, list[str]] = {}
        redacted: set[str] = set()
        for raw_name, raw_value in pairs:
            name = raw_name.decode("latin-1").lower()
            if name in self.headers:
                redacted.add(name)
                value = REDACTED
            elif name in self.correlation_headers and not recordable_correlation_value(raw_value):
                value = rejected(raw_value)  # may be hostile: never stored (README)
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
        """The query string with credential values replaced; every other byte kept as it came.

        Keys are compared decoded (``%73ig`` is ``sig``) and in any case; only the values of
        matching keys are rewritten, so an unrelated query is never re-encoded.
        """
        if not _MAY_HOLD_A_KEY.search(raw_query.lower()):
            return raw_query
        fields = raw_query.split("&")
        changed = False
        for index, field in enumerate(fields):
            key, equals, _ = field.partition("=")
            if equals and unquote_plus(key).lower() in REDACTED_QUERY_KEYS:
                fields[index] = f"{key}={REDACTED}"
                changed = True
        return "&".join(fields) if changed else raw_query
