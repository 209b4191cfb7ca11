"""One settings object: keyword arguments, then ``OBSML_*`` environment variables, then defaults.

Every value is checked here, at start-up; a bad one raises :class:`ConfigError` naming the
setting and what it accepts. Nothing in this module runs per request.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from ._exceptions import ConfigError

ENV_PREFIX = "OBSML_"

# A name that may become part of a storage path: no separators, no "..", no control characters.
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
QUERY_KEY = re.compile(r"[A-Za-z0-9._~-]+")  # RFC 3986 unreserved: a key as compared, percent-decoded


@dataclasses.dataclass(frozen=True)
class Settings:
    """What obsml captures and where it goes. See the README for each ``OBSML_*`` variable."""

    service: str = "default"
    model: str = "default"
    version: str = "0"
    store: str = "./obsml-data"
    exporters: tuple[str, ...] = ("jsonl",)
    inline_limit: int = 65536
    max_capture: int = 100 * 1024 * 1024
    sample_rate: float = 1.0
    enabled: bool = True
    correlation_headers: tuple[str, ...] = ("x-correlation-id", "x-request-id")
    redact_headers: tuple[str, ...] = ()
    redact_query: tuple[str, ...] = ()
    queue_max_items: int = 10_000
    queue_max_bytes: int = 64 * 1024 * 1024
    flush_interval: float = 1.0
    flush_timeout: float = 5.0
    spool_dir: str = ""  # empty: ~/.cache/obsml/spool (XDG_CACHE_HOME)
    spool_max_bytes: int = 1024 * 1024 * 1024
    flush_on_sigterm: bool = True
    strict: bool = False
    collect_format: str = "jsonl"
    collect_enabled: bool = True
    status: bool = True
    # How often a remote store's control object is read (README "Runtime switches"; _control.py).
    control_interval: float = 10.0
    # What the application's global TracerProvider gets of obsml's spans (issue 17 item 4; _tracing.py).
    global_provider: str = "bodyless"
    # Capture policy (README "Capture policies"): which requests get a span, which keep their bodies.
    capture_bodies: str = "all"
    capture_routes: tuple[str, ...] = ()
    skip_routes: tuple[str, ...] = ()
    # Body redaction (issue 15 items 1-5 and 7; README "Privacy: redaction"): compiled in _body_redaction.
    redact_fields: tuple[str, ...] = ()  # added to the default list; "none" turns the default list off
    redact_patterns: tuple[str, ...] = ()
    redact_max_bytes: int = 8 * 1024 * 1024
    redact_unparseable: str = "keep"
    redactors: tuple[str, ...] = ()  # names of obsml.redactors entry points
    redact: Callable[..., Any] | None = None  # a hook given as a keyword argument only
    # What the scoring code says and calls (issue 18; README "Logs, prints and dependencies").
    log_level: str = "info"  # the lowest level of the app's log records kept with a request; "off": none
    capture_print: bool = False  # lines written to stdout/stderr during a request, as log records
    dependencies: tuple[str, ...] = ("auto",)  # outbound HTTP clients instrumented: auto, none or a list

    def __repr__(self) -> str:
        # The store URL may carry credentials (a SAS token in a query string): show its scheme only.
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        shown["store"] = _scheme_of(self.store)
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None, **options: Any) -> Settings:
        """Build settings from ``options``, then ``env`` (default ``os.environ``), then defaults."""
        env = os.environ if env is None else env
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - fields)
        if unknown:
            raise ConfigError(f"unknown obsml setting(s) {', '.join(unknown)}; accepted: {', '.join(sorted(fields))}")
        values: dict[str, Any] = {}
        for name in sorted(fields):
            env_name = ENV_PREFIX + name.upper()
            if name in options and options[name] is not None:
                raw, label = options[name], f"{name}="
            elif env_name in env:
                raw, label = env[env_name], f"{env_name}="
            else:
                continue
            parse, accepted = _PARSERS[name]
            try:
                values[name] = parse(raw)
            except ConfigError:
                raise  # a parser that names the problem itself (a redaction pattern RE2 refuses)
            except (TypeError, ValueError):
                shown = "<hidden>" if name == "store" else repr(raw)
                raise ConfigError(f"{label}{shown} is not valid: expected {accepted}") from None
        return cls(**values)


def _scheme_of(url: str) -> str:
    scheme, sep, _ = url.partition("://")
    return f"{scheme}://…" if sep else "<local path>"


def _boolean(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _integer(minimum: int) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        if isinstance(raw, (bool, float)):
            raise TypeError(raw)
        value = int(str(raw).strip().replace("_", ""))
        if value < minimum:
            raise ValueError(raw)
        return value

    return parse


def _number(low: float, high: float | None) -> Callable[[Any], float]:
    def parse(raw: Any) -> float:
        if isinstance(raw, bool):
            raise TypeError(raw)
        value = float(str(raw).strip())
        if not (value >= low and (high is None or value <= high)):  # also rejects NaN
            raise ValueError(raw)
        return value

    return parse


def _names(pattern: re.Pattern[str], lower: bool, allow_empty: bool) -> Callable[[Any], tuple[str, ...]]:
    def parse(raw: Any) -> tuple[str, ...]:
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        names = tuple(str(item).strip() for item in items if str(item).strip())
        if not names and not allow_empty:
            raise ValueError(raw)
        for name in names:
            if not pattern.fullmatch(name):
                raise ValueError(name)
        return tuple(n.lower() for n in names) if lower else names

    return parse


def _safe_name(raw: Any) -> str:
    text = str(raw)
    if not SAFE_NAME.fullmatch(text) or set(text) == {"."}:
        raise ValueError(raw)
    return text


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        text = str(raw).strip().lower()
        if text not in choices:
            raise ValueError(raw)
        return text

    return parse


def _store(raw: Any) -> str:
    text = os.fspath(raw)
    if not isinstance(text, str) or not text.strip() or any(ord(c) < 32 for c in text):
        raise ValueError("store")
    return text


def _path_or_empty(raw: Any) -> str:
    text = os.fspath(raw)
    if not isinstance(text, str) or any(ord(c) < 32 for c in text):
        raise ValueError("path")
    return text.strip()


def _patterns(raw: Any) -> tuple[str, ...]:
    # Regular expressions hold commas, so the variable is one pattern or a JSON array of them;
    # each is compiled here, so that a bad one fails start-up with RE2's reason.
    from ._field_rules import compile_patterns

    if isinstance(raw, str):
        text = raw.strip()
        patterns = json.loads(text) if text.startswith("[") else [text] if text else []
    else:
        patterns = list(raw)
    if not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(raw)
    compile_patterns(patterns)
    return tuple(patterns)


def _hook(raw: Any) -> Callable[..., Any]:
    if not callable(raw):
        raise TypeError(raw)
    return raw  # type: ignore[no-any-return]


DEPENDENCY_CLIENTS = ("httpx", "requests", "urllib3", "aiohttp")


def _dependencies(raw: Any) -> tuple[str, ...]:
    names = _names(re.compile(r"[a-z0-9]+", re.IGNORECASE), lower=True, allow_empty=False)(raw)
    if len(names) == 1 and names[0] in ("auto", "none"):
        return names
    if not set(names) <= set(DEPENDENCY_CLIENTS) or len(set(names)) != len(names):
        raise ValueError(raw)
    return names


_PARSERS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "service": (_safe_name, "1-128 characters of A-Z a-z 0-9 . _ -"),
    "model": (_safe_name, "1-128 characters of A-Z a-z 0-9 . _ -"),
    "version": (_safe_name, "1-128 characters of A-Z a-z 0-9 . _ -"),
    "store": (_store, "an fsspec URL or a local path"),
    "exporters": (
        _names(re.compile(r"[a-z0-9_]+"), lower=False, allow_empty=True),
        "a comma-separated list of exporter names such as jsonl,console (lower-case, digits, _)",
    ),
    "inline_limit": (_integer(0), "an integer number of bytes >= 0"),
    "max_capture": (_integer(0), "an integer number of bytes >= 0"),
    "sample_rate": (_number(0.0, 1.0), "a number from 0 to 1"),
    "enabled": (_boolean, "true or false (also 1/0, yes/no, on/off)"),
    "correlation_headers": (
        _names(HEADER_NAME, lower=True, allow_empty=False),
        "a comma-separated list of one or more HTTP header names",
    ),
    "redact_headers": (
        _names(HEADER_NAME, lower=True, allow_empty=True),
        "a comma-separated list of HTTP header names",
    ),
    "redact_query": (
        _names(QUERY_KEY, lower=True, allow_empty=True),
        "a comma-separated list of query keys (A-Z a-z 0-9 . _ ~ -)",
    ),
    "queue_max_items": (_integer(1), "an integer >= 1"),
    "queue_max_bytes": (_integer(1), "an integer number of bytes >= 1"),
    "flush_interval": (_number(0.01, 3600.0), "a number of seconds from 0.01 to 3600"),
    "flush_timeout": (_number(0.0, 3600.0), "a number of seconds from 0 to 3600"),
    "spool_dir": (_path_or_empty, "a local directory path"),
    "spool_max_bytes": (_integer(0), "an integer number of bytes >= 0"),
    "flush_on_sigterm": (_boolean, "true or false (also 1/0, yes/no, on/off)"),
    "strict": (_boolean, "true or false"),
    "collect_format": (_choice("jsonl", "csv", "parquet"), "one of jsonl, csv, parquet"),
    "collect_enabled": (_boolean, "true or false (also 1/0, yes/no, on/off)"),
    # Body redaction (issue 15).
    "redact_fields": (
        _names(re.compile(r"[A-Za-z0-9_*-]+(\.[A-Za-z0-9_*-]+)*"), lower=False, allow_empty=True),
        "a comma-separated list of field names or dotted paths (applicant.ssn, items.*.card), or none",
    ),
    "redact_patterns": (_patterns, "a regular expression, or a JSON array of them"),
    "redact_max_bytes": (_integer(0), "an integer number of bytes >= 0"),
    "redact_unparseable": (_choice("keep", "drop"), "keep or drop"),
    "redactors": (
        _names(re.compile(r"[A-Za-z0-9_.-]+"), lower=False, allow_empty=True),
        "a comma-separated list of obsml.redactors entry-point names",
    ),
    "redact": (_hook, "a callable (keyword argument only; packages use OBSML_REDACTORS)"),
    "status": (_boolean, "true or false (also 1/0, yes/no, on/off)"),
    "control_interval": (_number(0.1, 3600.0), "a number of seconds from 0.1 to 3600"),
    "global_provider": (_choice("use", "bodyless", "ignore"), "one of use, bodyless, ignore"),
    "log_level": (
        _choice("debug", "info", "warning", "error", "critical", "off"),
        "one of debug, info, warning, error, critical, off",
    ),
    "capture_print": (_boolean, "true or false (also 1/0, yes/no, on/off)"),
    "dependencies": (_dependencies, "auto, none, or a comma-separated list of httpx, requests, urllib3, aiohttp"),
}


# Capture policy: route globs (README "Capture policies"), matched by obsml/_policy.py.


def _globs(raw: Any) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    globs = tuple(str(item).strip() for item in items if str(item).strip())
    for glob in globs:
        if any(ord(c) < 32 or ord(c) == 127 for c in glob):
            raise ValueError(glob)
    return globs


_PARSERS.update({
    "capture_bodies": (_choice("all", "none", "errors"), "one of all, none, errors"),
    "capture_routes": (_globs, "a comma-separated list of globs over route templates or paths, such as /predict*"),
    "skip_routes": (_globs, "a comma-separated list of globs over route templates or paths, such as /health*"),
})
