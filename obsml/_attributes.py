"""Writer side: the attributes of a finished request's span (see the README's span table).

Runs on the background writer, never on the request path: decoding, hashing, base64 and
redaction all happen here, before anything reaches an exporter or the store.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from hashlib import sha256
from typing import TYPE_CHECKING

from ._headers import header_value
from ._payloads import BodyTee
from ._redact import MAX_HEADER_VALUE_LENGTH, header_text

if TYPE_CHECKING:
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
    attributes.update(redaction.header_attributes("request", capture.request_headers))
    attributes.update(redaction.header_attributes("response", capture.response_headers))
    user_agent = header_value(capture.request_headers, b"user-agent")
    if user_agent is not None:
        attributes["user_agent.original"] = header_text(user_agent)
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


def _body(attributes: Attributes, tee: BodyTee, unread: int = 0, kept: bool = True) -> None:
    prefix = f"obsml.{tee.direction}.body"
    media = tee.media_type()
    if media is not None:
        attributes[f"{prefix}.content_type"] = header_text(media)  # cut and marked like the header
    if tee.unseen is not None:
        # A server extension sent the body past obsml: its size and bytes are unknown, never "empty".
        attributes[f"{prefix}.not_captured"] = tee.unseen
        return
    if not kept:  # the capture policy: its size only, no hash (a short secret's hash can be reversed)
        attributes[f"{prefix}.size"] = tee.size + unread
        attributes[f"{prefix}.not_captured"] = "policy"
        return
    attributes[f"{prefix}.size"] = tee.size + unread
    attributes[f"{prefix}.truncated"] = tee.truncated or unread > 0
    if tee.truncated or unread:
        attributes[f"{prefix}.captured_size"] = tee.held
    if unread:
        attributes[f"{prefix}.unread_size"] = unread
    stream = tee.stream
    if stream is None:
        data = b"".join(tee.chunks)
        attributes[f"{prefix}.sha256"] = sha256(data).hexdigest()
        try:
            attributes[prefix] = data.decode("utf-8")
            attributes[f"{prefix}.encoding"] = "utf-8"
        except UnicodeDecodeError:
            attributes[prefix] = base64.b64encode(data).decode("ascii")
            attributes[f"{prefix}.encoding"] = "base64"
        return
    if stream.uri is not None:
        attributes[f"{prefix}.uri"] = stream.uri
        attributes[f"{prefix}.sha256"] = stream.hasher.hexdigest()
    else:
        attributes[f"{prefix}.lost"] = stream.failure or "queue_full"
