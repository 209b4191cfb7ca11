"""The ASGI adapter: a pure ASGI middleware over the framework-free capture core.

Modelled on Starlette's ``GZipMiddleware``: non-HTTP scopes pass straight through, and each
request's state lives in a small responder object wrapping ``receive`` and ``send``.
Messages are forwarded as they come; nothing is held back from the app or the client.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ._capture import HEADER_OVERHEAD, Capture
from ._exceptions import ObsmlError
from ._pipeline import Capturer
from ._redact import RedactionPolicy
from ._settings import Settings
from ._stats import report_internal_error, set_strict
from ._types import ASGIApp, Attributes, Message, Receive, Scope, Send

_CORRELATION_HEADER = b"x-correlation-id"
_SHUTDOWN_DONE = ("lifespan.shutdown.complete", "lifespan.shutdown.failed")


class ObsmlMiddleware:
    """Capture every HTTP request of an ASGI app as one OpenTelemetry SERVER span.

    ``app.add_middleware(ObsmlMiddleware, service="credit", model="best_model", version="10")``;
    any other keyword is a :class:`obsml.Settings` field (see the README for each).
    """

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self._startup_error: ObsmlError | None = None
        try:
            settings = Settings.load(**options)
            set_strict(settings.strict)
            self.capturer = Capturer(settings, describe_scope)
        except ObsmlError as exc:
            if not _inside_asgi_call():
                raise
            # Starlette builds its middleware lazily, inside the first lifespan call, where an
            # exception makes uvicorn's default lifespan="auto" decide the app has no lifespan
            # and serve anyway. Fail the startup through the protocol instead, loudly.
            self._startup_error = exc

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._startup_error is not None:
            await _fail_startup(self._startup_error, scope, receive, send)
            return
        scope_type = scope["type"]
        if scope_type != "http" or not self.capturer.enabled:
            if scope_type == "lifespan":
                send = _LifespanSend(send, self.capturer)
            await self.app(scope, receive, send)
            return
        try:
            target_bytes = len(scope.get("path", "")) + len(scope.get("query_string", b""))
            capture = self.capturer.start(scope["headers"], scope, target_bytes)
        except Exception:
            report_internal_error("starting a capture", "span")
            await self.app(scope, receive, send)
            return
        await _CaptureResponder(self.app, capture, receive, send)(scope)


def _inside_asgi_call() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


async def _fail_startup(error: ObsmlError, scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.failed", "message": f"obsml: {error}"})
            return
    raise error


class _CaptureResponder:
    __slots__ = ("app", "capture", "receive", "send")

    def __init__(self, app: ASGIApp, capture: Capture, receive: Receive, send: Send) -> None:
        self.app = app
        self.capture = capture
        self.receive = receive
        self.send = send

    async def __call__(self, scope: Scope) -> None:
        capture = self.capture
        tokens = capture.activate()
        try:
            await self.app(scope, self.receive_with_capture, self.send_with_capture)
        except BaseException as exc:
            capture.fail(exc)
            raise
        finally:
            try:
                capture.deactivate(tokens)
                capture.finish()
            except Exception:
                report_internal_error("finishing a capture", "span")

    async def receive_with_capture(self) -> Message:
        message = await self.receive()
        try:
            if message["type"] == "http.request":
                self.capture.request_body.feed(message.get("body", b""))
            elif message["type"] == "http.disconnect" and not self.capture.completed:
                # After a complete response the server reports a disconnect too (ASGI spec); that
                # one is the normal end of the exchange, not a client going away.
                self.capture.disconnected = True
        except Exception:
            report_internal_error("capturing a request body")
        return message

    async def send_with_capture(self, message: Message) -> None:
        try:
            if message["type"] == "http.response.body":
                self.capture.response_body.feed(message.get("body", b""))
                if not message.get("more_body", False):
                    self.capture.completed = True
            elif message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                held_bytes, own_id = 0, False
                for name, value in headers:
                    held_bytes += len(name) + len(value) + HEADER_OVERHEAD
                    if name.lower() == _CORRELATION_HEADER:  # the app set its own: leave it
                        own_id = True
                if not own_id:
                    headers.append((_CORRELATION_HEADER, self.capture.correlation_bytes))
                message["headers"] = headers
                self.capture.response_started(message["status"], headers, held_bytes)
        except Exception:
            report_internal_error("capturing a response")
        try:
            await self.send(message)
        except OSError:
            self.capture.disconnected = True
            raise


class _LifespanSend:
    """Flushes obsml's writer once the app's own shutdown is complete (uvicorn skips atexit)."""

    __slots__ = ("capturer", "send")

    def __init__(self, send: Send, capturer: Capturer) -> None:
        self.send = send
        self.capturer = capturer

    async def __call__(self, message: Message) -> None:
        if message["type"] in _SHUTDOWN_DONE:
            try:
                self.capturer.flush()
            except Exception:
                report_internal_error("the shutdown flush")
        await self.send(message)


def describe_scope(scope: Scope, capturer: Capturer) -> Attributes:
    """HTTP attributes of an ASGI scope (OpenTelemetry semantic conventions); runs on the writer."""
    attributes: Attributes = {
        "http.request.method": scope.get("method", "GET"),
        "url.path": scope.get("path", ""),
        "url.scheme": scope.get("scheme", "http"),
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    query = scope.get("query_string", b"")
    if query:
        attributes["url.query"] = RedactionPolicy.query(query.decode("latin-1"))
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
        attributes["client.port"] = client[1]
    server = scope.get("server")
    if server:
        attributes["server.address"] = server[0]
        if server[1] is not None:
            attributes["server.port"] = server[1]
    route = _route_of(scope)
    if route:
        attributes["http.route"] = route
    return attributes


def _route_of(scope: Scope) -> str | None:
    # Starlette and FastAPI put the matched route in the (shared, mutated) scope.
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(scope.get("root_path", "")) + path if isinstance(path, str) else None
