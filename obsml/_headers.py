"""The header work both adapters do on the request path, written once for ASGI and WSGI alike.

:class:`HeaderSlots` finds the few request headers the capture reads (correlation ids, trace
context, the body's type and length) in one pass, from raw ASGI pairs or from a WSGI environ,
and measures what the capture keeps alive. :func:`echo_correlation_id` gives the response
headers as sent: the app's, plus ``x-correlation-id`` unless the app set its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

# What CPython spends on a header beyond its characters (two bytes objects and a tuple, or a
# dict entry), counted with them so that many tiny headers weigh what they hold.
HEADER_OVERHEAD = 150

CORRELATION_HEADER = "x-correlation-id"  # echoed on every response (README "Correlation ids")

# The request headers read after the correlation headers, in this order (their slots are last).
_TRACE_AND_BODY_HEADERS = ("traceparent", "tracestate", "content-type", "content-length")
# PEP 3333 puts these two bare in the environ, every other header as HTTP_<NAME>.
_BARE_ENVIRON_KEYS = ("CONTENT_TYPE", "CONTENT_LENGTH")

_is_str = str.__instancecheck__

Text = TypeVar("Text", str, bytes)


class HeaderSlots:
    """The request headers the request path reads, each with its slot, compiled once per middleware.

    A scan returns a list with one value per slot (the first occurrence of the header, raw; None
    when absent) and the bytes the capture keeps alive, so the writer's queue bound counts them.
    """

    __slots__ = (
        "_aliases", "_by_name", "_environ_keys", "content_length", "content_type", "count", "names", "traceparent",
        "tracestate",
    )

    def __init__(self, correlation_headers: Iterable[str]) -> None:
        self.names = (*correlation_headers, *_TRACE_AND_BODY_HEADERS)
        self.count = len(self.names)
        self.traceparent, self.tracestate, self.content_type, self.content_length = range(self.count - 4, self.count)
        self._by_name: dict[bytes, int] = {}
        # A name in two slots (a correlation header named "traceparent") fills both, in either protocol.
        aliases = []
        for slot, name in enumerate(self.names):
            first = self._by_name.setdefault(name.encode("latin-1"), slot)
            if first != slot:
                aliases.append((slot, first))
        self._aliases = tuple(aliases)
        self._environ_keys = tuple((_environ_key(name), slot) for slot, name in enumerate(self.names))

    def scan_pairs(self, headers: Iterable[tuple[bytes, bytes]], held_bytes: int = 0) -> tuple[list[bytes | None], int]:
        """Raw ``(name, value)`` pairs with lower-case names (ASGI): the slots, and ``held_bytes``
        plus what the headers hold."""
        found: list[bytes | None] = [None] * self.count
        by_name = self._by_name
        for name, value in headers:
            held_bytes += len(name) + len(value) + HEADER_OVERHEAD
            slot = by_name.get(name)
            if slot is not None and found[slot] is None:
                found[slot] = value
        if self._aliases:
            for slot, first in self._aliases:
                found[slot] = found[first]
        return found, held_bytes

    def scan_environ(self, environ: Mapping[str, Any]) -> tuple[list[bytes | None], int]:
        """A WSGI environ: the slots, as the latin-1 bytes PEP 3333 strings stand for, and what the
        environ holds, headers and request target alike (one pass in C over its values)."""
        found: list[bytes | None] = [None] * self.count
        for key, slot in self._environ_keys:
            value = environ.get(key)
            if value is not None:
                found[slot] = value.encode("latin-1")
        held_bytes = sum(map(len, filter(_is_str, environ.values()))) + len(environ) * HEADER_OVERHEAD
        return found, held_bytes


def _environ_key(header: str) -> str:
    """Where PEP 3333 puts a request header: ``HTTP_X_REQUEST_ID``, but ``CONTENT_TYPE`` bare."""
    key = header.upper().replace("-", "_")
    return key if key in _BARE_ENVIRON_KEYS else f"HTTP_{key}"


def echo_correlation_id(
    headers: Iterable[tuple[Text, Text]], name: Text, value: Text
) -> tuple[list[tuple[Text, Text]], int, bool]:
    """The response headers as sent: a copy of the app's (it may send the same list again), with
    ``(name, value)`` appended unless the app set that header itself; the bytes they hold; and
    whether it was appended. ``name`` is lower-case, as ``str`` (WSGI) or ``bytes`` (ASGI)."""
    sent = list(headers)
    held_bytes, own, name_length = 0, False, len(name)
    for key, text in sent:
        key_length = len(key)
        held_bytes += key_length + len(text) + HEADER_OVERHEAD
        # The app set its own: leave it. The length first: lower() makes a new object per header.
        if key_length == name_length and key.lower() == name:
            own = True
    if not own:
        sent.append((name, value))
    return sent, held_bytes, not own


def header_value(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of header ``name`` (lower-case) in raw pairs."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None
