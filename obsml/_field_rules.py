"""Which fields redaction names: the default list, ``OBSML_REDACT_FIELDS``, and the patterns (issue 15).

Compiled once at start-up; used on the writer by body redaction (``_body_redaction``), the query
string (``_redact``) and the Collector's feature names.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ._exceptions import ConfigError

# Field names redacted unless OBSML_REDACT_FIELDS=none, compared normalized (lower case, without
# "_", "-", "." and spaces) and matching a key that ends with them (db_password, x-api-key).
# Sources: sentry_sdk/scrubber.py DEFAULT_DENYLIST (password, passwd, secret, api_key, apikey, auth,
# credentials, mysql_pwd, privatekey, private_key, token, session, csrftoken, sessionid, cookie,
# authorization, csrf, xsrf-token, ...) and logfire's scrubbing DEFAULT_PATTERNS (password, passwd,
# mysql_pwd, secret, auth, credential, private key, api key, session, cookie, social security,
# credit card, csrf, xsrf, jwt, ssn), plus the card and bank fields of issue 15.
DEFAULT_FIELDS = (
    "apikey", "auth", "authorization", "cardnumber", "cookie", "creditcard", "credential", "credentials", "csrf",
    "csrftoken", "cvc", "cvv", "iban", "jwt", "passphrase", "passwd", "password", "privatekey", "secret", "session",
    "sessionid", "socialsecurity", "socialsecuritynumber", "ssn", "token", "xsrf", "xsrftoken",
)
_SEPARATORS = str.maketrans("", "", "_-. ")
_CACHE_LIMIT = 4096


def normalized(name: str) -> str:
    return name.lower().translate(_SEPARATORS)


class FieldRules:
    """Which keys lose their values: names at any depth (by suffix, normalized) and dotted paths."""

    def __init__(self, fields: Iterable[str]) -> None:
        fields = [f.strip() for f in fields if f.strip()]
        defaults = () if "none" in (f.lower() for f in fields) else DEFAULT_FIELDS
        names: set[str] = set(defaults)
        self.paths: dict[int, list[tuple[str, ...]]] = {}
        for field in fields:
            if field.lower() == "none":
                continue
            segments = tuple(s if s == "*" else normalized(s) for s in field.split("."))
            if len(segments) == 1:
                names.add(segments[0])
            else:
                self.paths.setdefault(len(segments), []).append(segments)
        self.names = frozenset(n for n in names if n)
        self.known_names: dict[str, bool] = {}  # key -> whether it is redacted, for the first keys seen
        self._normalized: dict[str, str] = {}

    def normalized(self, key: str) -> str:
        """:func:`normalized`, cached (documents repeat their keys)."""
        norm = self._normalized.get(key)
        if norm is None:
            norm = normalized(key)
            if len(self._normalized) < _CACHE_LIMIT:
                self._normalized[key] = norm
        return norm

    def __bool__(self) -> bool:
        return bool(self.names or self.paths)

    def redacts_name(self, key: str) -> bool:
        """Whether a key at any depth loses its value (cached: documents repeat their keys)."""
        found = self.known_names.get(key)
        if found is None:
            norm = self.normalized(key)
            found = any(norm[i:] in self.names for i in range(len(norm)))
            if len(self.known_names) < _CACHE_LIMIT:
                self.known_names[key] = found
        return found

    def redacts_path(self, segments: Sequence[str]) -> bool:
        """Whether the value at ``segments`` (normalized keys and list indices) matches a dotted path."""
        for rule in self.paths.get(len(segments), ()):
            if all(r == "*" or r == s for r, s in zip(rule, segments, strict=True)):
                return True
        return False

    def hidden_columns(self, columns: Sequence[str]) -> frozenset[str]:
        """The Collector's feature names whose values are replaced by the marker."""
        return frozenset(
            c for c in columns if self.redacts_name(c) or self.redacts_path([normalized(s) for s in c.split(".")])
        )


def compile_patterns(patterns: Sequence[str]) -> Any:
    """One linear-time (RE2) expression for all patterns; :class:`ConfigError` names a bad one."""
    if not patterns:
        return None
    import re2  # google-re2: no backtracking, so no pattern can take more than linear time

    options = re2.Options()
    options.log_errors = False
    for pattern in patterns:
        try:
            re2.compile(pattern, options)
        except re2.error as exc:
            detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise ConfigError(
                f"OBSML_REDACT_PATTERNS: {pattern!r} is not a pattern obsml can run in linear time (RE2 syntax: "
                f"no backreferences or lookarounds): {detail}"
            ) from None
    return re2.compile("|".join(f"(?:{p})" for p in patterns), options)
