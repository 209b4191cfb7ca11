"""Writer side: the attributes of a finished request's span (see the README's span table).

Runs on the background writer, never on the request path: decoding, hashing, base64 and
redaction all happen here, before anything reaches an exporter or the store.
"""

from __future__ import annotations

import base64
from hashlib import sha256
from typing import TYPE_CHECKING

from ._capture import BodyTee, header_value
from ._redact import header_text

if TYPE_CHECKING:
    from ._capture import Capture
    from ._types import Attributes


def span_attributes(capture: Capture) -> tuple[str, Attributes]:
    capturer = capture.capturer
    redaction = capturer.redaction
    attributes = capturer.describe(capture.info, capturer)
    if capture.route is not None:
        attributes["http.route"] = capture.route
    attributes.update(capturer.base_attributes)
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
    _body(attributes, capture.request_body, _unread(capture))
    if capture.responded:
        _body(attributes, capture.response_body)
    if capture.response_body.first_perf:
        attributes["obsml.response.time_to_first_byte_ms"] = (
            capture.response_body.first_perf - capture.start_perf
        ) / 1e6
    if capture.disconnected:
        attributes["obsml.client.disconnected"] = True
    if not capture.sampled:
        attributes["obsml.sampled_out"] = True  # kept only because it failed
    method = attributes.get("http.request.method", "HTTP")
    route = attributes.get("http.route")
    return (f"{method} {route}" if route else str(method)), attributes


def _unread(capture: Capture) -> int:
    """Request bytes announced by Content-Length that the app never read (obsml never reads for it)."""
    try:
        declared = int(capture.declared_length or 0)
    except ValueError:
        return 0
    return max(0, declared - capture.request_body.size)


def _body(attributes: Attributes, tee: BodyTee, unread: int = 0) -> None:
    prefix = f"obsml.{tee.direction}.body"
    attributes[f"{prefix}.size"] = tee.size + unread
    attributes[f"{prefix}.truncated"] = tee.truncated or unread > 0
    if tee.truncated or unread:
        attributes[f"{prefix}.captured_size"] = tee.held
    if unread:
        attributes[f"{prefix}.unread_size"] = unread
    media = tee.media_type()
    if media is not None:
        attributes[f"{prefix}.content_type"] = media.decode("latin-1")
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
    lost = tee.capture.capturer.pipeline.finish_stream(stream, commit=True)
    if lost is None and stream.relative is not None:
        attributes[f"{prefix}.uri"] = tee.capture.capturer.pipeline.store.uri(stream.relative)
        attributes[f"{prefix}.sha256"] = stream.hasher.hexdigest()
    else:
        attributes[f"{prefix}.lost"] = lost or "queue_full"
