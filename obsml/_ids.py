"""Request identity, below the capture core: correlation ids, W3C trace context, sampling.

Compiled once; the capture core and the redaction policy both read them.
"""

from __future__ import annotations

import re
from hashlib import sha256

# A correlation id: 1-128 of these characters, not only dots. A repeated header may reach the
# app joined with commas (RFC 9110 section 5.3; gunicorn joins them): its first element is the
# id. A comma is never part of an id, so this cannot cut one.
_ID = rb"(?!\.+[ \t]*(?:,|\Z))[A-Za-z0-9._:-]{1,128}"
FIRST_CORRELATION_ID = re.compile(rb"[ \t]*(" + _ID + rb")[ \t]*(?:,|\Z)")
_CORRELATION_ID_LIST = re.compile(rb"[ \t]*" + _ID + rb"[ \t]*(?:,[ \t]*" + _ID + rb"[ \t]*)*")
# W3C Trace Context (traceparent, and its versioning rules): version 00 has exactly these four
# fields, a later version may add more after a "-", and version ff is invalid (checked by the capture).
VALID_TRACEPARENT = re.compile(rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_SAMPLE_SPACE = 1 << 64


def recordable_correlation_value(value: bytes) -> bool:
    """Whether a correlation header's value is ids only (one, or a comma list), safe to store as is."""
    return _CORRELATION_ID_LIST.fullmatch(value) is not None


def correlation_keep(correlation_id: str, threshold: int) -> bool:
    """The sampling rule: keep when the first 8 bytes of sha256(id), big-endian, fall under the rate."""
    return int.from_bytes(sha256(correlation_id.encode()).digest()[:8], "big") < threshold


def sampling_threshold(rate: float) -> int:
    return min(_SAMPLE_SPACE, int(rate * _SAMPLE_SPACE))
