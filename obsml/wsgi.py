"""The WSGI adapter (PEP 3333): as thin as the ASGI one, over the same capture core.

The request body is teed as the app reads ``wsgi.input``; obsml never reads on the app's
behalf, so bytes the app leaves unread are not captured (the span says how many, from
Content-Length). The response is teed as the server iterates it, chunk by chunk, and the
capture ends when the server calls ``close()``: only then is the exchange over.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from ._attributes import server_from_host, set_port
from ._capture import Capture
from ._frameworks import hook_wsgi_app, wsgi_route
from ._headers import CORRELATION_HEADER, echo_correlation_id
from ._pipeline import Capturer
from ._settings import Settings
from ._stats import count, enable_strict, report_internal_error
from ._types import Attributes, Environ, ExcInfo, StartResponse, Write, WSGIApp
from ._writer import flush_on_sigterm
from ._wsgi_io import EnvironHeaders, InputTee, Latin1Pairs


class ObsmlWSGIMiddleware:
    """Capture every request of a WSGI app as one OpenTelemetry SERVER span.

    ``app.wsgi_app = ObsmlWSGIMiddleware(app.wsgi_app, service="credit", model="best_model")``;
    any other keyword is a :class:`obsml.Settings` field (see the README for each).
    """

    def __init__(self, app: WSGIApp, **options: Any) -> None:
        self.app = app
        settings = Settings.load(**options)
        if settings.strict:
            enable_strict()
        self.capturer = Capturer(settings, describe_environ)
        if settings.flush_on_sigterm:
            flush_on_sigterm()
        hook_wsgi_app(app)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        capturer = self.capturer
        if not capturer.enabled:
            capturer.writer.start()  # switched off: the writer still re-reads the control object
            return self.app(environ, start_response)
        skip_path = capturer.skip_path
        if skip_path is not None and skip_path(_request_path(environ)) is not None:  # OBSML_SKIP_ROUTES: no span
            count("requests_skipped")
            return self.app(environ, start_response)
        try:
            found, held_bytes = capturer.header_slots.scan_environ(environ)
            capture = Capture(capturer, found, EnvironHeaders(environ), environ, held_bytes)
            environ["wsgi.input"] = InputTee(environ["wsgi.input"], capture)
        except Exception:
            report_internal_error("starting a capture", "span")
            return self.app(environ, start_response)
        return _CaptureResponse(capture, start_response).call(self.app, environ)


class _CaptureResponse:
    """One exchange: wraps ``start_response`` and ``write``, and is the iterable the server gets.

    The request's capture is made current when the app is called and stays current until the
    server closes the response, as OpenTelemetry's WSGI middleware does: a generator response
    runs the app's code while the server iterates, and its logs must join the request.
    """

    __slots__ = ("capture", "closed", "iterable", "iterator", "start_response", "tokens", "write")

    def __init__(self, capture: Capture, start_response: StartResponse) -> None:
        self.capture = capture
        self.start_response = start_response
        self.write: Write | None = None
        self.iterable: Iterable[bytes] = ()
        self.iterator: Iterator[bytes] = iter(())
        self.tokens: Any = None
        self.closed = False

    def call(self, app: WSGIApp, environ: Environ) -> _CaptureResponse:
        capture = self.capture
        self.tokens = capture.activate()
        try:
            self.iterable = app(environ, self.start_response_with_capture)
            self.iterator = iter(self.iterable)
        except BaseException as exc:
            capture.fail(exc)
            self._deactivate()
            self.closed = True  # no response for the server to close: __del__ must not finish it again
            self._finish()
            raise
        return self

    def _deactivate(self) -> None:
        tokens, self.tokens = self.tokens, None
        if tokens is not None:
            # ValueError: a server that closes the response in another thread's context. Not
            # contextlib.suppress: its object costs every request half a microsecond.
            try:  # noqa: SIM105
                self.capture.deactivate(tokens)
            except ValueError:
                pass

    def start_response_with_capture(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Write:
        capture = self.capture
        try:
            headers, held_bytes, _ = echo_correlation_id(headers, CORRELATION_HEADER, capture.correlation_id)
            capture.response_started(int(status[:3]), Latin1Pairs(headers), held_bytes)
            if capture.route is None:
                capture.route = wsgi_route(capture.info)
        except Exception:
            report_internal_error("capturing a response")
        # Pass exc_info only when given: some servers' start_response takes two arguments.
        if exc_info:
            self.write = self.start_response(status, headers, exc_info)
        else:
            self.write = self.start_response(status, headers)
        return self.write_with_capture

    def write_with_capture(self, data: bytes) -> object:
        """The legacy ``write()`` callable (PEP 3333): teed like the iterable's chunks."""
        try:
            self.capture.response_body.feed(data)
        except Exception:
            report_internal_error("capturing a response body")
        assert self.write is not None
        return self.write(data)

    def __iter__(self) -> Iterator[bytes]:
        # A generator rather than __next__: the server's for loop resumes it without a Python call
        # per chunk, and the app's iterable ends without a StopIteration caught and raised again.
        capture = self.capture
        try:
            for chunk in self.iterator:
                try:
                    capture.response_body.feed(chunk)
                except Exception:
                    report_internal_error("capturing a response body")
                yield chunk
        except GeneratorExit:  # the server dropped the iterator early: close() says so
            raise
        except BaseException as exc:
            capture.fail(exc)
            raise
        capture.completed = True

    def close(self) -> None:
        """Close the app's iterable exactly once (PEP 3333), then hand the capture to the writer."""
        if self.closed:
            return
        self.closed = True
        capture = self.capture
        close = getattr(self.iterable, "close", None)
        try:
            if close is not None:
                close()
        except BaseException as exc:
            capture.fail(exc)
            raise
        finally:
            self._deactivate()
            if not capture.completed and capture.exception is None:
                # The server stopped iterating early: the client went away (or the server gave up).
                capture.disconnected = True
            self._finish()

    def __del__(self) -> None:
        # A server that never calls close() breaks PEP 3333 (werkzeug's test client does,
        # until its response is closed): the capture still ends, when the response is dropped.
        if not self.closed:
            self.closed = True
            self._finish()

    def _finish(self) -> None:
        try:
            capture = self.capture
            # The writer reads a copy of the environ taken now, after the app (so a ProxyFix inside
            # obsml has run) and before close() returns: servers reuse the environ once the response
            # is closed (uWSGI clears and refills one dict per core). A shallow copy is the cheap
            # way: the CGI keys and HTTP_* headers the writer reads are strings.
            capture.info = capture.request_headers.environ = dict(capture.info)
            capture.finish()
        except Exception:
            report_internal_error("finishing a capture", "span")


def describe_environ(environ: Environ, capturer: Capturer) -> Attributes:
    """HTTP attributes of a WSGI environ (OpenTelemetry semantic conventions); runs on the writer.

    It reads the copy of the environ taken when the response closed, after the app ran, so a
    proxy-fixing middleware inside obsml (werkzeug's ProxyFix) shows the real client and scheme.
    The route (Flask's URL rule) was read on the request path, in ``start_response``.
    """
    path = _text(environ.get("SCRIPT_NAME", "")) + _text(environ.get("PATH_INFO", ""))
    scheme = environ.get("wsgi.url_scheme", "http")
    attributes: Attributes = {
        "http.request.method": environ.get("REQUEST_METHOD", "GET"),
        "url.path": path or "/",
        "url.scheme": scheme,
    }
    protocol = environ.get("SERVER_PROTOCOL", "")
    if protocol.startswith("HTTP/"):
        attributes["network.protocol.version"] = protocol[5:]
    query = environ.get("QUERY_STRING")
    if query:
        attributes["url.query"] = capturer.redaction.query(_text(query))
    client = environ.get("REMOTE_ADDR")
    if client:
        attributes["client.address"] = client
        set_port(attributes, "client.port", environ.get("REMOTE_PORT"))  # granian sets none
    host = environ.get("HTTP_HOST")
    if host:  # what the semantic conventions name (waitress's SERVER_NAME is "waitress.invalid")
        server_from_host(attributes, _text(host), scheme)
    elif environ.get("SERVER_NAME"):
        attributes["server.address"] = environ["SERVER_NAME"]
        set_port(attributes, "server.port", environ.get("SERVER_PORT"))
    return attributes


def _request_path(environ: Environ) -> str:
    """The path as ``url.path`` records it, for the skip globs (decoded only when not ASCII)."""
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    return (path if path.isascii() else _text(path)) or "/"


def _text(wsgi_string: str) -> str:
    # PEP 3333 strings carry raw bytes as latin-1; URLs are UTF-8 on the wire.
    return wsgi_string.encode("latin-1").decode("utf-8", "backslashreplace")


