"""Writer side: the attributes of a finished request's span (see the README's span table).

Runs on the background writer, never on the request path: decoding, hashing, base64 and
redaction all happen here, before anything reaches an exporter or the store.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from hashlib import sha256
from typing import TYPE_CHECKING

from ._body_redaction import redact_or_drop
from ._payloads import BodyTee
from ._redact import MAX_HEADER_VALUE_LENGTH, header_text
from ._stats import record_drop

if TYPE_CHECKING:
    from ._body_redaction import Redacted
    from ._capture import Capture
    from ._redact import RedactionPolicy
    from ._types import Attributes


def span_attributes(
    capture: Capture, attributes: Attributes, base_attributes: Mapping[str, str], redaction: RedactionPolicy,
    keep_bodies: bool = True,
) -> tuple[str, Attributes]:
    """The span's name and attributes, from what the adapter ``described`` (``attributes``, filled in).

    Without ``keep_bodies`` (the capture policy's decision) bodies appear by size and type only.

    Pure: the capture's payloads were committed or aborted before (``Capturer.emit``).
    """
    if capture.route is not None:
        attributes["http.route"] = capture.route
    attributes.update(base_attributes)
    attributes["obsml.correlation_id"] = capture.correlation_id
    attributes["obsml.correlation_id.source"] = capture.correlation_header or "generated"
    if capture.correlation_rejected is not None:
        # The rejected value itself is never stored: it may be hostile.
        attributes["obsml.correlation_id.rejected_header"] = capture.correlation_rejected
    if capture.status:
        attributes["http.response.status_code"] = capture.status
    own_id = capture.correlation_bytes
    user_agent = redaction.header_attributes("request", capture.request_headers, attributes, own_id)
    redaction.header_attributes("response", capture.response_headers, attributes, own_id)
    if user_agent is not None:  # as its header is recorded: cut the same way, redacted if it is
        attributes["user_agent.original"] = user_agent
    cut_off = _request_body(attributes, capture, keep_bodies)
    if capture.responded:
        _body(attributes, capture.response_body, kept=keep_bodies)
    if capture.response_body.first_perf:
        attributes["obsml.response.time_to_first_byte_ms"] = (
            capture.response_body.first_perf - capture.start_perf
        ) / 1e6
    if capture.exceptions_not_recorded:
        attributes["obsml.exceptions_not_recorded"] = capture.exceptions_not_recorded
    if capture.disconnected or cut_off:
        attributes["obsml.client.disconnected"] = True
    if not capture.sampled:
        attributes["obsml.sampled_out"] = True  # kept only because it failed
    method = attributes.get("http.request.method", "HTTP")
    route = attributes.get("http.route")
    return (f"{method} {route}" if route else str(method)), attributes


def _request_body(attributes: Attributes, capture: Capture, kept: bool) -> bool:
    """The request body's attributes; True when it ended short of its Content-Length (the client went away)."""
    tee, length = capture.request_body, capture.declared_length
    if length is None or not length.isdigit():
        _body(attributes, tee, kept=kept)
        return False
    declared = int(length)
    attributes["obsml.request.body.declared_size"] = declared
    if capture.request_ended:
        _body(attributes, tee, kept=kept)
        return tee.size < declared
    # The app stopped reading (obsml never reads for it): the rest is announced but unread.
    _body(attributes, tee, max(0, declared - tee.size), kept)
    return False


def set_port(attributes: Attributes, key: str, value: object) -> None:
    """``key`` as an integer port (servers give ints or strings), or nothing when it is not one."""
    try:
        port = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return
    if 0 <= port <= 65535:
        attributes[key] = port


def server_from_host(attributes: Attributes, host: str, scheme: str) -> None:
    """``server.address`` and ``server.port`` parsed from the Host header, as the HTTP semantic
    conventions say; a Host without a port means the scheme's default port (RFC 9110, 7.2)."""
    if len(host) > MAX_HEADER_VALUE_LENGTH:  # a server with lifted limits passes megabytes: cut, marked
        attributes["server.address"] = header_text(host.encode("latin-1", "replace"))
        return
    if host.startswith("["):  # an IPv6 literal: [::1]:8000
        address, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        address, colon, port = host.rpartition(":")
        if not colon:
            address, port = host, ""
    attributes["server.address"] = address
    set_port(attributes, "server.port", port or (443 if scheme == "https" else 80))


class _BodyKeys:
    """A body's attribute keys, made once per direction rather than per span."""

    __slots__ = (
        "captured_size", "content_type", "encoding", "lost", "not_captured", "redacted", "redacted_paths", "sha256",
        "size", "text", "truncated", "unread_size", "uri",
    )

    def __init__(self, direction: str) -> None:
        prefix = self.text = f"obsml.{direction}.body"
        self.content_type, self.not_captured = f"{prefix}.content_type", f"{prefix}.not_captured"
        self.size, self.truncated = f"{prefix}.size", f"{prefix}.truncated"
        self.captured_size, self.unread_size = f"{prefix}.captured_size", f"{prefix}.unread_size"
        self.uri, self.sha256, self.lost = f"{prefix}.uri", f"{prefix}.sha256", f"{prefix}.lost"
        self.encoding = f"{prefix}.encoding"
        self.redacted, self.redacted_paths = f"{prefix}.redacted", f"{prefix}.redacted_paths"


_BODY_KEYS = {direction: _BodyKeys(direction) for direction in ("request", "response")}


def _body(attributes: Attributes, tee: BodyTee, unread: int = 0, kept: bool = True) -> None:
    keys = _BODY_KEYS[tee.direction]
    media = tee.media_type()
    if media is not None:
        attributes[keys.content_type] = header_text(media)  # cut and marked like the header
    if tee.unseen is not None:
        # A server extension sent the body past obsml: its size and bytes are unknown, never "empty".
        attributes[keys.not_captured] = tee.unseen
        return
    if not kept:  # the capture policy: its size only, no hash (a short secret's hash can be reversed)
        attributes[keys.size] = tee.size + unread
        attributes[keys.not_captured] = "policy"
        return
    attributes[keys.size] = tee.size + unread
    truncated = tee.held < tee.size
    attributes[keys.truncated] = truncated or unread > 0
    if truncated or unread:
        attributes[keys.captured_size] = tee.held
    if unread:
        attributes[keys.unread_size] = unread
    stream = tee.stream
    if stream is None:
        _inline_body(attributes, tee, keys, media)
        return
    if stream.uri is not None:
        attributes[keys.uri] = stream.uri
        attributes[keys.sha256] = stream.hasher.hexdigest()
        if stream.redacted is not None:
            _redacted(attributes, keys, stream.redacted, stream.stored_size)
    else:
        attributes[keys.lost] = stream.failure or "queue_full"


def _inline_body(attributes: Attributes, tee: BodyTee, keys: _BodyKeys, media: bytes | None) -> None:
    chunks = tee.chunks
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    redactor = tee.capture.capturer.body_redaction
    # Most bodies have nothing to redact: told first, and then what redact_or_drop returns is known.
    if redactor.active and not (redactor.stored_as_is(data, media) and tee.whole):
        result = redact_or_drop(redactor, data, media, tee.direction, tee.whole)
        if isinstance(result, str):  # never stored unredacted
            attributes[keys.lost] = result
            record_drop("payload", result)
            return
        data = result.data
        _redacted(attributes, keys, result, len(data))
    attributes[keys.sha256] = sha256(data).hexdigest()
    try:
        attributes[keys.text] = data.decode("utf-8")
        attributes[keys.encoding] = "utf-8"
    except UnicodeDecodeError:
        attributes[keys.text] = base64.b64encode(data).decode("ascii")
        attributes[keys.encoding] = "base64"


def _redacted(attributes: Attributes, keys: _BodyKeys, result: Redacted, stored_size: int) -> None:
    """What redaction replaced: ``.size`` and ``.sha256`` then describe the stored bytes (issue 15)."""
    if result.rebuilt:
        attributes[keys.size] = stored_size
        attributes[keys.redacted] = result.replaced
        if result.paths:
            attributes[keys.redacted_paths] = list(result.paths)
