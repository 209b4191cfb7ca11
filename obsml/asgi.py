"""The ASGI adapter: a pure ASGI middleware over the framework-free capture core.

Modelled on Starlette's ``GZipMiddleware``: non-HTTP scopes pass straight through, and each
request's state lives in a small responder object wrapping ``receive`` and ``send``.
Messages are forwarded as they come; nothing is held back from the app or the client.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from ._attributes import server_from_host, set_port
from ._capture import CURRENT_CAPTURE, Capture
from ._exceptions import ObsmlError
from ._frameworks import asgi_route, hook_asgi_app, hook_scope
from ._headers import CORRELATION_HEADER, echo_correlation_id, header_value
from ._pipeline import Capturer
from ._settings import Settings
from ._stats import count, enable_strict, guarded, logger, report_internal_error
from ._types import ASGIApp, Attributes, Message, Receive, Scope, Send

_CORRELATION_HEADER = CORRELATION_HEADER.encode("latin-1")
# Server extensions that send a response body past the middleware (a file by path or by
# descriptor). Hidden from the app, so files stream through obsml as plain body messages.
_PATHSEND, _ZEROCOPYSEND = "http.response.pathsend", "http.response.zerocopysend"
_UNSEEN_BODY_EXTENSIONS = (_PATHSEND, _ZEROCOPYSEND)
_SHUTDOWN_DONE = ("lifespan.shutdown.complete", "lifespan.shutdown.failed")


class ObsmlMiddleware:
    """Capture every HTTP request of an ASGI app as one OpenTelemetry SERVER span.

    ``app.add_middleware(ObsmlMiddleware, service="credit", model="best_model", version="10")``;
    any other keyword is a :class:`obsml.Settings` field (see the README for each).
    """

    def __init__(self, app: ASGIApp, **options: Any) -> None:
        self.app = app
        self._startup_error: ObsmlError | None = None
        self._hook_first_scope = False
        # Requests being served, so a shutdown can write those whose response is complete but
        # whose app has not returned yet: a server may stop its loop before they do.
        self._in_flight: set[_CaptureResponder] = set()
        try:
            settings = Settings.load(**options)
            if settings.strict:
                enable_strict()
            self.capturer = Capturer(settings, describe_scope)
            self._hook_first_scope = hook_asgi_app(app)
            # The set, not the middleware: a middleware the app lets go of is freed with its app.
            self.capturer.pipeline.writer.closing_hooks.append(functools.partial(_finish_answered, self._in_flight))
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
                await _Lifespan(self, receive, send).run(self.app, scope)
            else:
                if scope_type == "http":  # switched off: the writer still re-reads the control object
                    self.capturer.writer.start()
                await self.app(scope, receive, send)
            return
        if self._hook_first_scope:
            self._hook_first_scope = False
            hook_scope(scope)
        skip_path = self.capturer.skip_path
        if skip_path is not None and skip_path(scope["path"]) is not None:  # OBSML_SKIP_ROUTES: no span
            count("requests_skipped")
            await self.app(scope, receive, send)
            return
        try:
            extensions = scope.get("extensions")
            if extensions and (_PATHSEND in extensions or _ZEROCOPYSEND in extensions):
                # A copy for the app: the server's own scope and extensions stay as they were.
                extensions = {k: v for k, v in extensions.items() if k not in _UNSEEN_BODY_EXTENSIONS}
                scope = {**scope, "extensions": extensions}
            target_bytes = len(scope.get("path", "")) + len(scope.get("query_string", b""))
            capture = self.capturer.start(scope["headers"], scope, target_bytes)
        except Exception:
            report_internal_error("starting a capture", "span")
            await self.app(scope, receive, send)
            return
        await _CaptureResponder(self.app, capture, receive, send, scope, self._in_flight)()

    def flush_at_shutdown(self) -> None:
        with guarded("the shutdown flush"):
            _finish_answered(self._in_flight)
            self.capturer.flush(shutdown=True)


def _finish_answered(in_flight: set[_CaptureResponder]) -> None:
    """At shutdown: hand the writer every request whose response is complete though its app
    has not returned (Django still closing the response in a worker thread). granian ends a
    worker's loop without waiting for those; their spans would be lost, uncounted."""
    for responder in list(in_flight):
        if responder.capture.completed:
            responder.finish()


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
    __slots__ = ("app", "capture", "in_flight", "receive", "scope", "send")

    def __init__(
        self, app: ASGIApp, capture: Capture, receive: Receive, send: Send, scope: Scope,
        in_flight: set[_CaptureResponder],
    ) -> None:
        self.app = app
        self.capture = capture
        self.receive = receive
        self.send = send
        self.scope = scope
        self.in_flight = in_flight

    async def __call__(self) -> None:
        capture = self.capture
        self.in_flight.add(self)
        tokens = capture.activate()
        try:
            await self.app(self.scope, self.receive_with_capture, self.send_with_capture)
        except BaseException as exc:
            capture.fail(exc)
            raise
        finally:
            try:
                capture.deactivate(tokens)
                self.finish()
            except Exception:
                report_internal_error("finishing a capture", "span")

    def finish(self) -> None:
        """Hand the capture to the writer, once: when the app returns, or at shutdown."""
        try:
            self.in_flight.remove(self)  # atomic: of the app's return and a shutdown, one wins
        except KeyError:
            return
        capture, scope = self.capture, self.scope
        if capture.route is None:  # read here, while the scope is still this request's
            capture.route = asgi_route(scope)
        # The writer reads a copy of the scope as it is now, with what the app's router put in
        # it, and never the scope itself, which is not obsml's once the request ends.
        capture.info = dict(scope)
        capture.finish()

    async def receive_with_capture(self) -> Message:
        message = await self.receive()
        capture = self.capture
        try:
            kind = message["type"]
            if kind == "http.request":
                capture.request_body.feed(message.get("body", b""))
                if not message.get("more_body", False):
                    capture.request_ended = True
            elif kind == "http.disconnect":
                capture.request_ended = True
                # After a complete response the server reports a disconnect too (ASGI spec); that
                # one is the normal end of the exchange, not a client going away.
                if not capture.completed:
                    capture.disconnected = True
        except Exception:
            report_internal_error("capturing a request body")
        return message

    async def send_with_capture(self, message: Message) -> None:
        capture = self.capture
        last = False
        try:
            kind = message["type"]
            if kind == "http.response.body":
                capture.response_body.feed(message.get("body", b""))
                if not message.get("more_body", False):
                    capture.completed = last = True
            elif kind == "http.response.start":
                headers, held_bytes, echoed = echo_correlation_id(
                    message.get("headers", ()), _CORRELATION_HEADER, capture.correlation_bytes
                )
                if echoed:  # a copy: the app's message may be a constant it sends again for the next request
                    message = {**message, "headers": headers}
                capture.response_started(message["status"], headers, held_bytes)
            elif kind in _UNSEEN_BODY_EXTENSIONS:  # sent anyway, though not offered
                capture.response_body.unseen = kind
                if not message.get("more_body", False):
                    capture.completed = last = True
        except Exception:
            report_internal_error("capturing a response")
        # The last message goes to the server outside the request's capture: what the server does
        # with it is not the request's, and uvicorn's keep-alive timer copies the current context
        # and lives on, cancelled, in the loop's heap for seconds; with it, a finished capture, its
        # body tees and their lists. Some hundred of those alive at once made the young garbage
        # collections run every ~110 requests under load and promoted them (issue 16).
        outside = CURRENT_CAPTURE.set(None) if last else None
        try:
            await self.send(message)
        except OSError:
            capture.disconnected = True
            raise
        finally:
            if outside is not None:
                CURRENT_CAPTURE.reset(outside)


class _Lifespan:
    """The lifespan scope through obsml, which flushes once the app's shutdown is complete.

    An app that does not speak lifespan (Django raises at once, before receiving anything)
    would leave the server without it, and obsml without its shutdown flush (uvicorn skips
    atexit too): obsml then answers the lifespan messages itself, as an app with nothing to
    start. An app that received ``lifespan.startup`` and then failed, by raising or with
    ``lifespan.startup.failed``, fails exactly as it would without obsml.
    """

    __slots__ = ("middleware", "receive", "received", "send")

    def __init__(self, middleware: ObsmlMiddleware, receive: Receive, send: Send) -> None:
        self.middleware = middleware
        self.receive = receive
        self.send = send
        self.received = False

    async def run(self, app: ASGIApp, scope: Scope) -> None:
        try:
            await app(scope, self.app_receive, self.app_send)
        except Exception as exc:
            if self.received:
                raise
            outcome = f"raised {type(exc).__name__}: {exc}"
        else:
            if self.received:
                return
            outcome = "returned"
        logger.info("obsml answers the lifespan protocol for the app, which %s before receiving anything", outcome)
        await self.answer()

    async def app_receive(self) -> Message:
        self.received = True
        return await self.receive()

    async def app_send(self, message: Message) -> None:
        if message["type"] in _SHUTDOWN_DONE:
            self.middleware.flush_at_shutdown()
        await self.send(message)

    async def answer(self) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "lifespan.startup":
                await self.send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.middleware.flush_at_shutdown()
                await self.send({"type": "lifespan.shutdown.complete"})
                return


def describe_scope(scope: Scope, capturer: Capturer) -> Attributes:
    """HTTP attributes of an ASGI scope (OpenTelemetry semantic conventions); runs on the writer."""
    scheme = scope.get("scheme", "http")
    attributes: Attributes = {
        "http.request.method": scope.get("method", "GET"),
        "url.path": scope.get("path", ""),
        "url.scheme": scheme,
        "network.protocol.version": scope.get("http_version", "1.1"),
    }
    query = scope.get("query_string", b"")
    if query:
        attributes["url.query"] = capturer.redaction.query(query.decode("latin-1"))
    client = scope.get("client")
    if client:
        attributes["client.address"] = client[0]
        set_port(attributes, "client.port", client[1])  # granian gives ports as strings
    host = header_value(scope.get("headers", ()), b"host")
    if host:
        server_from_host(attributes, host.decode("latin-1"), scheme)
    else:
        server = scope.get("server")
        if server:
            attributes["server.address"] = server[0]
            set_port(attributes, "server.port", server[1])
    return attributes
