"""Outbound HTTP calls of the scoring code as CLIENT child spans of the request (issue 18, items 3-4).

OpenTelemetry's contrib instrumentations (httpx, requests, urllib3, aiohttp-client) are
instrumented once per process with obsml's :class:`DependencyTracerProvider`, never set as the
global one. Its tracers record a span only inside a sampled request obsml is capturing
(``CURRENT_CAPTURE``), as a child of the request's span; anywhere else (obsml's own writer,
delivery and exporter threads, the app outside a request) they hand back a non-recording span,
so obsml's own calls are never recorded. A finished span goes to the writer of the request's
pipeline as a job; there :func:`dependency_attributes` gives it the stable semantic-convention
names and redacts its URL, and the pipeline exports it with the request spans.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, SpanContext, SpanKind, StatusCode, TraceFlags
from opentelemetry.util._decorator import _agnosticcontextmanager
from opentelemetry.util.types import Attributes as OtelAttributes

from ._capture import CURRENT_CAPTURE
from ._exceptions import ConfigError
from ._stats import record_drop, report_internal_error
from ._writer import Writer

logger = logging.getLogger("obsml")

INSTALL_HINT = "pip install 'obsml[dependencies]'"
# name in OBSML_DEPENDENCIES -> (the client library's module, its instrumentor, its distribution)
CLIENTS: Mapping[str, tuple[str, str, str]] = {
    "aiohttp": (
        "aiohttp", "opentelemetry.instrumentation.aiohttp_client:AioHttpClientInstrumentor",
        "opentelemetry-instrumentation-aiohttp-client",
    ),
    "httpx": (
        "httpx", "opentelemetry.instrumentation.httpx:HTTPXClientInstrumentor", "opentelemetry-instrumentation-httpx",
    ),
    "requests": (
        "requests", "opentelemetry.instrumentation.requests:RequestsInstrumentor",
        "opentelemetry-instrumentation-requests",
    ),
    "urllib3": (
        "urllib3", "opentelemetry.instrumentation.urllib3:URLLib3Instrumentor",
        "opentelemetry-instrumentation-urllib3",
    ),
}
assert list(CLIENTS) == sorted(CLIENTS)
# The instrumentation's module (the tracer's name) -> the client it instruments.
_CLIENT_OF_SCOPE = {target.partition(":")[0]: name for name, (_, target, _) in CLIENTS.items()}

_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
# Dependency spans started and not yet ended, in all requests of the process: a span that is never
# ended (a client abandoned mid-call) must not grow the table without bound.
MAX_OPEN_SPANS = 10_000
_SPAN_BYTES = 2048  # what a finished span holds in memory, roughly, against the writer's byte bound


class DependencyCapturer(Protocol):
    """What a dependency span needs of the request's middleware (``_pipeline.Capturer``)."""

    @property
    def writer(self) -> Writer: ...
    @property
    def dependency_clients(self) -> frozenset[str]: ...
    def emit_dependency(self, span: ReadableSpan, correlation_id: str) -> None: ...


class _DependencySpan:
    """A finished CLIENT span on its way to the writer of the request's pipeline."""

    __slots__ = ("capturer", "correlation_id", "span")
    nbytes = _SPAN_BYTES

    def __init__(self, span: ReadableSpan, capturer: DependencyCapturer, correlation_id: str) -> None:
        self.span = span
        self.capturer = capturer
        self.correlation_id = correlation_id

    def run(self) -> None:
        self.capturer.emit_dependency(self.span, self.correlation_id)


# span id -> (the request's middleware, its correlation id), from start to end.
_OPEN: dict[int, tuple[DependencyCapturer, str]] = {}


class _ToTheWriter(SpanProcessor):
    """Hands each finished span to the writer of the request it was started in (on the request path:
    a dict pop and a queue submit)."""

    def on_end(self, span: ReadableSpan) -> None:
        try:  # in the app's call: never raise into it
            context = span.context
            owner = _OPEN.pop(context.span_id, None) if context is not None else None
            if owner is None:
                return
            capturer, correlation_id = owner
            writer = capturer.writer
            if not writer.submit(_DependencySpan(span, capturer, correlation_id)):
                record_drop("span", writer.refusal)
        except Exception:
            report_internal_error("ending a dependency span", kind="span")


class _DependencyTracer(trace.Tracer):
    """The tracer one instrumentation is given: real spans only inside a captured, sampled request."""

    def __init__(self, client: str, tracer: trace.Tracer) -> None:
        self._client = client
        self._tracer = tracer

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: OtelAttributes = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        capture = CURRENT_CAPTURE.get()
        if capture is None or not capture.sampled:
            return INVALID_SPAN  # obsml's own traffic, the app outside a request, or an unsampled request
        try:  # in the app's call: never raise into it
            capturer = cast(DependencyCapturer, capture.capturer)
            if self._client not in capturer.dependency_clients:
                return INVALID_SPAN
            if len(_OPEN) >= MAX_OPEN_SPANS:
                record_drop("span", "queue_full")
                return INVALID_SPAN
            if not trace.get_current_span(context).get_span_context().is_valid:
                # obsml makes no OpenTelemetry context current unless the app configured OpenTelemetry:
                # the request's span is the parent (the app's own current span, when it has one, is).
                request = SpanContext(capture.trace_id, capture.span_id, False, _SAMPLED)
                context = trace.set_span_in_context(NonRecordingSpan(request), context)
            span = self._tracer.start_span(
                name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
            )
            _OPEN[span.get_span_context().span_id] = (capturer, capture.correlation_id)
        except Exception:
            report_internal_error("starting a dependency span", kind="span")
            return INVALID_SPAN
        return span

    @_agnosticcontextmanager  # the decorator of OpenTelemetry's own tracers: the same return type
    def start_as_current_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: OtelAttributes = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace.Span]:
        span = self.start_span(
            name, context, kind, attributes, links, start_time, record_exception, set_status_on_exception
        )
        if span is INVALID_SPAN:  # nothing to make current: the instrumentation's span is a no-op
            yield span
            return
        with trace.use_span(
            span, end_on_exit=end_on_exit, record_exception=record_exception,
            set_status_on_exception=set_status_on_exception,
        ) as current:
            yield current


class DependencyTracerProvider(trace.TracerProvider):
    """What obsml instruments the HTTP clients with: a private SDK provider behind the request check."""

    def __init__(self) -> None:
        # ALWAYS_ON: obsml sampled the request already. The resource is replaced by the pipeline's
        # on the writer (one provider per process serves every pipeline).
        self._sdk = TracerProvider(sampler=ALWAYS_ON, resource=Resource.get_empty(), shutdown_on_exit=False)
        self._sdk.add_span_processor(_ToTheWriter())

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: OtelAttributes = None,
    ) -> trace.Tracer:
        client = _CLIENT_OF_SCOPE.get(instrumenting_module_name, instrumenting_module_name)
        tracer = self._sdk.get_tracer(instrumenting_module_name, instrumenting_library_version, schema_url, attributes)
        return _DependencyTracer(client, tracer)


_PROVIDER: DependencyTracerProvider | None = None
_HANDLED: dict[str, bool] = {}  # client -> whether obsml instrumented it in this process (False: the app did)
_UNAVAILABLE: set[str] = set()  # clients `auto` found without their library or instrumentation
_AWAITED: set[str] = set()  # clients `auto` instruments when the app first imports them
# Reentrant: instrumenting one client can import another whose import hook is waiting.
_LOCK = threading.RLock()


def instrument_dependencies(choice: Sequence[str]) -> frozenset[str]:
    """Instrument the clients of ``OBSML_DEPENDENCIES`` (once per process); those obsml records.

    ``auto``: every client library installed whose instrumentation is installed too (one INFO line
    for a library without it). One the app has not imported yet is instrumented when it first
    does: importing aiohttp, httpx and requests for an app that uses none of them cost ~0.6 s of
    start-up, ~19 MiB and a heap that made every full garbage collection 2-4x longer (issue 16).
    A client named explicitly is instrumented at once; if its library or instrumentation is
    missing, that is a :class:`ConfigError`. A client the app instrumented itself is left to the app.
    """
    if tuple(choice) == ("none",):
        return frozenset()
    explicit = tuple(choice) != ("auto",)
    recorded = set()
    with _LOCK:
        for name in choice if explicit else CLIENTS:
            if name not in _HANDLED:
                if not explicit and (name in _UNAVAILABLE or name in _AWAITED):
                    if name in _AWAITED:
                        recorded.add(name)
                    continue
                if not explicit and CLIENTS[name][0] not in sys.modules:
                    if _await_import(name):
                        recorded.add(name)
                    continue
                _instrument(name, explicit)
            if _HANDLED.get(name):
                recorded.add(name)
    return frozenset(recorded)


def _instrument(name: str, explicit: bool) -> None:
    """Instrument one client now, under ``_LOCK``; ``_HANDLED`` says how it went."""
    global _PROVIDER
    instrumentor = _instrumentor(name, explicit)
    if instrumentor is None:
        _UNAVAILABLE.add(name)
        return
    if instrumentor.is_instrumented_by_opentelemetry:
        logger.info(
            "obsml uses the application's own %s instrumentation: its spans go to the "
            "application's tracer provider, not to obsml's store", name,
        )
        _HANDLED[name] = False
        return
    if _PROVIDER is None:
        _PROVIDER = DependencyTracerProvider()
    # The instrumentations' own metrics would count obsml's traffic too: obsml
    # records http.client.request.duration from the spans it keeps, on the writer.
    instrumentor.instrument(tracer_provider=_PROVIDER, meter_provider=NoOpMeterProvider())
    # It declines (and logs why) when the installed library's version conflicts.
    _HANDLED[name] = bool(instrumentor.is_instrumented_by_opentelemetry)
    if explicit and not _HANDLED[name]:
        raise ConfigError(
            f"OBSML_DEPENDENCIES names {name}, but its OpenTelemetry instrumentation declined "
            f"the installed {name} (see its error above): {INSTALL_HINT} --upgrade"
        )


def _await_import(name: str) -> bool:
    """Instrument ``auto``'s client ``name`` when the app imports it; False when it cannot be.

    Whether library and instrumentation are installed is asked of the import system without
    importing either (the instrumentation imports its library).
    """
    library, target, _ = CLIENTS[name]
    if not _installed(library):
        _UNAVAILABLE.add(name)
        return False
    if not _installed(target.partition(":")[0]):
        _say_not_instrumented(name)
        _UNAVAILABLE.add(name)
        return False
    import wrapt  # the instrumentations' own dependency: installed with any of them

    wrapt.register_post_import_hook(lambda module: _imported(name), library)
    _AWAITED.add(name)
    return True


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def _imported(name: str) -> None:
    """The app imported ``name``'s library: instrument it before the import returns, never
    raising into that import."""
    try:
        with _LOCK:
            _AWAITED.discard(name)
            if name in _HANDLED:
                return
            module_name, _, class_name = CLIENTS[name][1].partition(":")
            partial = sys.modules.get(module_name)
            if partial is not None and not hasattr(partial, class_name):
                # The app is importing the instrumentation itself (which imported the library):
                # it is about to instrument the client with its own provider.
                logger.info("obsml leaves %s to the application's own OpenTelemetry instrumentation", name)
                _HANDLED[name] = False
                return
            _instrument(name, explicit=False)
    except Exception:
        logger.warning(
            "obsml could not instrument %s as it was imported: its calls are not recorded", name, exc_info=True
        )


def _instrumentor(name: str, explicit: bool) -> Any:
    """The client's instrumentor, None when ``auto`` skips it; raises for an explicit name."""
    library, target, distribution = CLIENTS[name]
    if importlib.util.find_spec(library) is None:
        if explicit:
            raise ConfigError(
                f"OBSML_DEPENDENCIES names {name}, but {library} is not installed: install it, or leave "
                f"{name} out of OBSML_DEPENDENCIES"
            )
        return None
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name is not None and module_name.startswith(exc.name):  # not installed (else: its import failed)
            if explicit:
                raise ConfigError(
                    f"OBSML_DEPENDENCIES names {name}, but its OpenTelemetry instrumentation is not installed: "
                    f"{INSTALL_HINT} (or pip install {distribution})"
                ) from exc
            _say_not_instrumented(name)
            return None
        raise ConfigError(f"the OpenTelemetry instrumentation of {name} failed to import: {exc}") from exc
    return getattr(module, class_name)()


def _say_not_instrumented(name: str) -> None:
    logger.info("obsml does not record %s calls: its instrumentation is not installed (%s)", name, INSTALL_HINT)


# Writer side ---------------------------------------------------------------------------------

# The instrumentations write the pre-1.21 HTTP names unless OTEL_SEMCONV_STABILITY_OPT_IN says
# "http" or "http/dup", a process-wide choice of the app's: obsml's records carry the stable ones.
_STABLE_NAMES = {
    "http.method": "http.request.method",
    "http.url": "url.full",
    "http.status_code": "http.response.status_code",
    "net.peer.name": "server.address",
    "net.peer.port": "server.port",
    "http.scheme": "url.scheme",
    "http.flavor": "network.protocol.version",
    "net.peer.ip": "network.peer.address",
    "http.user_agent": "user_agent.original",
}
_OLD_ONLY = frozenset({"http.host", "http.target"})  # parts of url.full


def dependency_attributes(
    span: ReadableSpan, redact_query: Callable[[str], str], base: Mapping[str, Any], correlation_id: str
) -> tuple[dict[str, Any], Callable[[str], str]]:
    """A finished CLIENT span's attributes as obsml records them, and the function that takes
    the URL's redacted query values out of a text (an exception message quotes the URL).

    Stable semantic-convention names; ``url.full`` without userinfo and with the query values
    obsml redacts in request URLs; ``server.address`` / ``server.port`` from the URL when the
    instrumentation left them out; ``error.type`` for a failed call (the status code, else the
    exception's type); the request's correlation id, service, model and version.
    """
    attributes: dict[str, Any] = dict(base)
    attributes["obsml.correlation_id"] = correlation_id
    given = span.attributes or {}  # a new read-only view at each read of the property: read once
    for key, value in given.items():
        if key in _OLD_ONLY:
            continue
        stable = _STABLE_NAMES.get(key)
        if stable is None:
            attributes[key] = value
        elif stable not in given:
            attributes[stable] = value
    scrub: Callable[[str], str] = _unchanged
    url = attributes.get("url.full")
    if isinstance(url, str):
        clean, scrub = _clean_url(url, redact_query)
        attributes["url.full"] = clean
        try:
            parts = urlsplit(clean)
            scheme, host, port = parts.scheme, parts.hostname, parts.port
        except ValueError:  # a port that is not a number: the URL says no more
            scheme, host, port = "", None, None
        if host and "server.address" not in attributes:
            attributes["server.address"] = host
        if host and "server.port" not in attributes and (port or scheme in ("http", "https")):
            attributes["server.port"] = port or (443 if scheme == "https" else 80)
    if span.status.status_code is StatusCode.ERROR or "error.type" in attributes:
        # Derived the same way in every semantic-convention mode (the stable-mode instrumentations
        # name an exception by its bare class name, some of them, where the event has its full name).
        attributes["error.type"] = _error_type(span, attributes.get("http.response.status_code"), attributes)
    return attributes, scrub


def _unchanged(text: str) -> str:
    return text


def _clean_url(url: str, redact_query: Callable[[str], str]) -> tuple[str, Callable[[str], str]]:
    head, question, rest = url.partition("?")
    scheme, sep, after = head.partition("://")
    authority, slash, path = after.partition("/")
    if sep and "@" in authority:  # the instrumentations strip userinfo already; never trust it
        head = f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"
    if not question:
        return head, _unchanged
    query, hash_mark, fragment = rest.partition("#")
    redacted = redact_query(query)
    clean = f"{head}?{redacted}{hash_mark}{fragment}"
    if redacted == query:
        return clean, _unchanged
    return clean, lambda text: text.replace(query, redacted)


def _error_type(span: ReadableSpan, status: Any, attributes: Mapping[str, Any]) -> str:
    if isinstance(status, int) and not isinstance(status, bool) and status >= 400:
        return str(status)
    for event in span.events:
        if event.name == "exception" and event.attributes and "exception.type" in event.attributes:
            return str(event.attributes["exception.type"])
    return str(attributes.get("error.type", "_OTHER"))
