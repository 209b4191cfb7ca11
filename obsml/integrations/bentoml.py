"""BentoML services under obsml: ``instrument(Service)`` after the service class, in its module.

- The store: BentoML runs a service from ``--working-dir``, where a relative path such as
  obsml's default ``./obsml-data`` would follow it. Unless a store is given (``store=`` or
  ``OBSML_STORE``), the spans go to ``obsml-data`` under BentoML's home (``$BENTOML_HOME``,
  default ``~/bentoml``), wherever the service is run from.
- Exceptions: BentoML answers an exception from the service with a 500 of its own, and logs it;
  obsml puts it on the span from that log record (a client error, a 4xx, is not an event).
- Trace context: BentoML starts an OpenTelemetry span for each request before the service's
  middleware runs; obsml's span joins it, as its child, so the two share a trace id.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from opentelemetry import trace

from .._capture import record_exception
from .._types import Receive, Scope, Send
from ..asgi import ObsmlMiddleware

__all__ = ["instrument"]


def instrument(service: Any, **options: Any) -> None:
    """Add obsml to a BentoML service (a class decorated with ``@bentoml.service``); ``options``
    are :class:`obsml.Settings` fields, over the ``OBSML_*`` variables."""
    if "store" not in options and not os.environ.get("OBSML_STORE"):
        home = os.environ.get("BENTOML_HOME") or os.path.join("~", "bentoml")
        options["store"] = os.path.join(os.path.abspath(os.path.expanduser(home)), "obsml-data")
    service.add_asgi_middleware(_ObsmlInBentoTrace, **options)
    # The module that calls this is imported in each worker: once per process.
    errors_logger = logging.getLogger(_ERRORS_LOGGER)
    if not any(isinstance(installed, _RecordAnsweredExceptions) for installed in errors_logger.filters):
        errors_logger.addFilter(_RecordAnsweredExceptions())


# Where BentoML logs the exceptions it answers (bentoml._internal.server.http_app.log_exception).
_ERRORS_LOGGER = "bentoml._internal.server.http_app"


class _RecordAnsweredExceptions(logging.Filter):
    """Puts the exception of a record BentoML logs, in the request's context, on the request's span."""

    def __init__(self) -> None:
        super().__init__()
        from bentoml.exceptions import BentoMLException
        from pydantic import ValidationError

        self.bentoml_exception = BentoMLException
        self.validation_error = ValidationError

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and not self.is_client_error(exc):
            record_exception(exc)
        return True

    def is_client_error(self, exc: BaseException) -> bool:
        if isinstance(exc, self.validation_error):
            return True
        return isinstance(exc, self.bentoml_exception) and int(exc.error_code) < 500


class _ObsmlInBentoTrace(ObsmlMiddleware):
    """obsml's middleware, its span a child of BentoML's (the current OpenTelemetry span)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
                scope = {**scope, "headers": [
                    *(header for header in scope["headers"] if header[0] != b"traceparent"),
                    (b"traceparent", traceparent.encode("ascii")),
                ]}
        await super().__call__(scope, receive, send)
