"""Request path of the request logs (issue 18): Python ``logging`` records and printed lines of a request.

One :class:`RequestLogHandler` per process on the root logger. It looks at a record only while a
request obsml samples is current in that thread or task (``CURRENT_CAPTURE``), at or above the
level of that request's own middleware, and never at the loggers of obsml, OpenTelemetry, the
Azure SDK, urllib3, requests or msal (their own traffic must not loop back as the app's logs).
For such a record it formats the message, takes the request's ids and submits one
:class:`~obsml._log_records.LogEntry` to the request's pipeline writer; everything else (the
exception's text, ``extra=`` fields, JSON) is the writer's. The app's logging configuration (root
level, handlers) is left alone: Python makes no record below a logger's effective level.

With ``capture_print``, ``sys.stdout`` and ``sys.stderr`` are wrapped once per process by a
:class:`PrintTee`, which writes through unchanged and, during a sampled request, cuts what it
writes into lines, each a log entry of logger ``stdout`` (INFO) or ``stderr`` (ERROR).
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import TYPE_CHECKING, Any, TextIO

from ._capture import CURRENT_CAPTURE
from ._log_records import LogEntry, LogSettings, PrintedLine
from ._stats import record_drop, report_internal_error

if TYPE_CHECKING:
    from ._capture import Capture

IGNORED_LOGGERS = ("obsml", "opentelemetry", "azure", "urllib3", "requests", "msal")
OFF = logging.CRITICAL + 100  # a log level no record reaches
# A printed line is kept up to this many characters; the rest, up to its end, is counted in the
# record's ``obsml.print.truncated_characters`` (one print must not fill the queue or the store).
MAX_PRINT_LINE = 16 * 1024


def ignored_logger(name: str) -> bool:
    return name.partition(".")[0] in IGNORED_LOGGERS


_ignored: dict[str, bool] = {}  # logger name -> ignored: one lookup per record instead of a split


def _submit(settings: LogSettings, entry: LogEntry | PrintedLine) -> None:
    writer = settings.writer
    if not writer.submit(entry):
        record_drop("log", writer.refusal)


class RequestLogHandler(logging.Handler):
    """On the root logger: records emitted during a sampled request go to that request's pipeline."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)

    def handle(self, record: logging.LogRecord) -> bool:
        # No handler lock and no filters of its own: the app's threads must not queue up behind it.
        self.emit(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:
        capture = CURRENT_CAPTURE.get()
        if capture is None or not capture.sampled:
            if record.levelno >= logging.WARNING:
                self._last_resort(record)
            return
        try:
            settings: LogSettings = capture.capturer  # type: ignore[assignment]  # the Capturer is both
            name = record.name
            ignored = _ignored.get(name)
            if ignored is None:
                ignored = ignored_logger(name)
                if len(_ignored) < 4096:  # loggers named per object must not grow it without bound
                    _ignored[name] = ignored
            if record.levelno >= settings.log_level and not ignored:
                try:
                    message = record.getMessage()
                except Exception:  # a bad format string must not cost the record
                    message = str(record.msg)
                _submit(settings, LogEntry(capture, record, message))
            if record.levelno >= logging.WARNING:
                self._last_resort(record)
        except Exception:
            report_internal_error("capturing a log record", "log")

    def _last_resort(self, record: logging.LogRecord) -> None:
        """Python prints a warning nobody handles to stderr (``logging.lastResort``) only when no
        handler at all is found; this handler must not silence that, so it does the printing then."""
        last = logging.lastResort
        if last is None or record.levelno < last.level:
            return
        found = logging.root if record.name == "root" else logging.Logger.manager.loggerDict.get(record.name)
        current = found if isinstance(found, logging.Logger) else None
        while current is not None:
            if any(handler is not self for handler in current.handlers):
                return
            if not current.propagate:
                break
            current = current.parent
        last.handle(record)


class PrintTee:
    """``sys.stdout`` or ``sys.stderr``, written through unchanged; during a sampled request whose
    middleware captures prints, its complete lines also become log entries."""

    def __init__(self, stream: TextIO, name: str) -> None:
        self._obsml_stream = stream
        self._obsml_name = name

    def write(self, text: str) -> int:
        written = self._obsml_stream.write(text)
        capture = CURRENT_CAPTURE.get()
        if capture is not None and capture.sampled:
            try:
                settings: LogSettings = capture.capturer  # type: ignore[assignment]  # the Capturer is both
                # A logging handler writing to this stream (logging.lastResort, basicConfig's): its
                # record is the handler's to capture, not a printed line.
                if settings.capture_print and sys._getframe(1).f_globals.get("__name__") != "logging":
                    self._lines(capture, settings, text)
            except Exception:
                report_internal_error("capturing a printed line", "log")
        return written

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def _lines(self, capture: Capture, settings: LogSettings, text: str) -> None:
        # The unended line of each stream is kept on the capture: print() writes its text and its
        # "\n" in two calls, and concurrent requests never share a line.
        pending = capture.printed
        if pending is None:
            pending = capture.printed = {}
        name = self._obsml_name
        if "\n" not in text:  # print()'s text, its "\n" comes next
            head, cut = pending.get(name, _NOTHING_PENDING)
            pending[name] = _bounded(head, text, cut)
            return
        head, cut = pending.pop(name, _NOTHING_PENDING)
        *complete, rest = text.split("\n")
        for piece in complete:
            line, cut = _bounded(head, piece, cut)
            _submit(settings, PrintedLine(capture, name, line, cut))
            head, cut = "", 0
        if rest:
            pending[name] = _bounded("", rest, 0)

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, flush, buffer, ...
        return getattr(self._obsml_stream, name)

    def __iter__(self) -> Any:
        return iter(self._obsml_stream)


_NOTHING_PENDING = ("", 0)


def _bounded(head: str, more: str, cut: int) -> tuple[str, int]:
    """``head + more`` within :data:`MAX_PRINT_LINE`, with the characters cut so far."""
    room = MAX_PRINT_LINE - len(head)
    if len(more) <= room:
        return (head + more if head else more), cut
    return head + more[:room], cut + len(more) - room


_lock = threading.Lock()
_handler: RequestLogHandler | None = None


def install_log_handler() -> None:
    """The one handler of the process on the root logger (again if a logging reconfiguration removed it)."""
    global _handler
    with _lock:
        if _handler is None:
            _handler = RequestLogHandler()
        root = logging.getLogger()
        if _handler not in root.handlers:
            root.addHandler(_handler)


def install_print_capture() -> None:
    """Wrap ``sys.stdout`` and ``sys.stderr`` once per process (a stream already wrapped stays as it is)."""
    with _lock:
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is not None and not isinstance(stream, PrintTee):
                setattr(sys, name, PrintTee(stream, name))
