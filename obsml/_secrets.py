"""Credentials never leave in a log line or an error message: one scrubber for obsml's output.

Connection strings, SAS tokens and keys reach obsml only through the environment (adlfs and
fsspec read them there). Anything obsml logs or raises about a store passes through
:func:`scrub`, and a filter on the ``obsml`` logger scrubs every record, traceback included, and
escapes its control characters (no log injection).
"""

from __future__ import annotations

import logging
import os
import re
import traceback
from urllib.parse import unquote

# The one marker of a removed credential: in log lines here, in span attributes (obsml/_redact.py).
REDACTED = "[REDACTED]"

# key=value pairs whose values are credentials, in connection strings and URLs.
_SECRET_PAIRS = re.compile(
    r"(?i)\b(AccountKey|SharedAccessSignature|SharedAccessKey|sig|client_secret|password|InstrumentationKey)"
    r"=([^;&\s'\"]+)"
)
_SECRET_VARIABLES = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
)


def _known_secrets() -> list[str]:
    values = []
    for name in _SECRET_VARIABLES:
        value = os.environ.get(name, "")
        if len(value) >= 8:
            values.append(value)
            values.extend(m[2] for m in _SECRET_PAIRS.finditer(value) if len(m[2]) >= 8)
        if name.endswith("_HEADERS"):  # OTLP: "key1=value1,key2=value2", values URL-encoded
            for pair in value.split(","):
                header_value = unquote(pair.partition("=")[2].strip())
                if len(header_value) >= 8:
                    values.append(header_value)
    return sorted(values, key=len, reverse=True)


# Control characters (C0 but tab, DEL, C1, the Unicode line separators) in a log line would let
# text from outside (a path, an error message, a sink's name) forge log lines or drive a terminal
# (ANSI escapes): each is written escaped instead, as \n or \x1b. A traceback keeps its line breaks.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return match[0].encode("unicode_escape").decode("ascii")


def neutralize(text: str) -> str:
    """``text`` on one line, with no control character left raw (for a log line)."""
    return _CONTROL.sub(_escaped, text)


def scrub(text: str) -> str:
    """``text`` with every credential obsml can know of replaced by ``[REDACTED]``."""
    for secret in _known_secrets():
        text = text.replace(secret, REDACTED)
    return _SECRET_PAIRS.sub(lambda m: f"{m[1]}={REDACTED}", text)


class ScrubFilter(logging.Filter):
    """Scrubs a log record's message and traceback before any handler formats it, and escapes
    their control characters: the one place every line obsml logs passes through."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = neutralize(scrub(record.getMessage()))
        record.args = None
        if record.exc_info:
            record.exc_text = _traceback_text(record.exc_info[1])
            record.exc_info = None
        return True


def _traceback_text(exc: BaseException | None) -> str:
    """A traceback as logging shows it, scrubbed and escaped. Its frames keep their line breaks;
    an exception's own text (which may quote anything) is kept on one line."""
    if exc is None:
        return ""
    messages: set[str] = set()
    seen: set[int] = set()
    chain: list[BaseException | None] = [exc]
    while chain:
        link = chain.pop()
        if link is None or id(link) in seen:
            continue
        seen.add(id(link))
        messages.update(traceback.format_exception_only(type(link), link))
        chain += (link.__cause__, link.__context__)
    parts = []
    for chunk in traceback.format_exception(type(exc), exc, exc.__traceback__):
        if chunk in messages:
            parts.append(neutralize(scrub(chunk.removesuffix("\n"))) + "\n")
        else:
            parts.append(_CONTROL_BUT_NEWLINE.sub(_escaped, scrub(chunk)))
    return "".join(parts).removesuffix("\n")


def install_log_scrubbing(logger: logging.Logger) -> None:
    if not any(isinstance(f, ScrubFilter) for f in logger.filters):
        logger.addFilter(ScrubFilter())
