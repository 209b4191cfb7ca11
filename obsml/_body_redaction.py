"""Redaction of stored bodies: field names and paths, patterns over text, user hooks (issue 15).

One :class:`BodyRedactor` per middleware, compiled once at start-up, used only on the background
writer. What it returns is what the store holds: the redacted document, or the body as it came
when no rule changed anything (byte-exact). A body it cannot read (binary, broken JSON, cut at
the capture limit, over ``OBSML_REDACT_MAX_BYTES``) follows ``OBSML_REDACT_UNPARSEABLE``; a hook
that raises always drops the body. Values are replaced by :data:`REDACTED`; the span gets the
number of replacements and their paths, never the values, and no hash of the original.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple
from urllib.parse import quote_plus, unquote_plus, urlencode

from ._field_rules import FieldRules, compile_patterns, normalized
from ._secrets import REDACTED
from ._stats import DropReason, is_strict, note_error

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
_BOUNDARY = re.compile(rb'(?i);\s*boundary=(?:"([^"]{1,70})"|([^\s;]{1,70}))')
_PART_NAME = re.compile(rb'(?i)content-disposition:[^\r\n]*?;\s*name="([^"]*)"')
_MAX_PATHS = 64  # paths named on a span; the count covers them all
_MAX_PATH_LENGTH = 256

Kind = Literal["json", "jsonl", "form", "multipart", "text", "binary", "unknown"]
Plan = Literal["direct", "redact", "drop"]
Hook = Callable[..., Any]


class Redacted(NamedTuple):
    """What the store holds for a body, and what the span says about it."""

    data: bytes
    replaced: int
    paths: tuple[str, ...]
    rebuilt: bool = False  # the stored bytes are the redacted (or hook's) document, not the body as sent


class _Found:
    """One body's replacements: the count, and the first paths (a per-body state object)."""

    __slots__ = ("count", "paths")

    def __init__(self) -> None:
        self.count = 0
        self.paths: dict[str, None] = {}

    def add(self, path: str, n: int = 1) -> None:
        self.count += n
        if len(self.paths) < _MAX_PATHS:
            self.paths[path[:_MAX_PATH_LENGTH] or "$"] = None


class _Unparseable(Exception):
    pass


_KINDS: dict[bytes | None, Kind] = {}  # body_kind's answers for the first media types seen
_KINDS_LIMIT = 256


def body_kind(media: bytes | None) -> Kind:
    """What kind of body a Content-Type announces (cached: a server sees few of them, issue 16)."""
    try:
        kind = _KINDS.get(media)
    except TypeError:  # not hashable (a bytearray an app sent): not cached
        return _body_kind(media)
    if kind is None:
        kind = _body_kind(media)
        if len(_KINDS) < _KINDS_LIMIT:
            _KINDS[media] = kind
    return kind


_JSON_KINDS = ("json", "jsonl")


def _kind_of(data: bytes, media: bytes | None) -> Kind:
    """A body's kind, by its media type, or by its first byte when none says (``unknown``)."""
    kind = body_kind(media)
    if kind == "unknown":
        kind = "json" if data.lstrip()[:1] in (b"{", b"[") else "text"
    return kind


def _body_kind(media: bytes | None) -> Kind:
    if not media:
        return "unknown"
    essence = media.split(b";", 1)[0].strip().lower()
    if essence == b"application/json" or essence.endswith(b"+json"):
        return "json"
    if essence in (b"application/x-ndjson", b"application/jsonl", b"application/x-jsonlines", b"application/jsonlines"):
        return "jsonl"
    if essence == b"application/x-www-form-urlencoded":
        return "form"
    if essence == b"multipart/form-data":
        return "multipart"
    if essence.startswith(b"text/"):
        return "text"
    return "binary"


class BodyRedactor:
    """Field rules, patterns and hooks, compiled once; :attr:`active` is False when none is set."""

    def __init__(
        self,
        fields: Iterable[str],
        patterns: Sequence[str],
        *,
        hooks: Sequence[Hook] = (),
        unparseable: str = "keep",
        max_bytes: int = DEFAULT_MAX_BYTES,
        raw_dir: Path | None = None,
    ) -> None:
        self.fields = FieldRules(fields)
        self.pattern = compile_patterns(patterns)
        self.hooks = tuple(hooks)
        self.drop_unparseable = unparseable == "drop"
        self.max_bytes = max_bytes
        self.active = bool(self.fields or self.pattern is not None or self.hooks)
        self._key_screen = None if self.hooks or self.drop_unparseable else _key_screen(self.fields)
        self._key_ends = tuple(n.encode("utf-8") for n in sorted(_key_needles(self.fields) or ()))
        self._raw_dir = raw_dir
        self._raw_dir_made = False
        self.raw_in_memory = 0  # bytes of offloaded bodies waiting in memory (``_raw_body``), on the writer

    def plan(self, media: bytes | None) -> Plan:
        """For a body over the inline limit (at its first chunk, on the writer): stream it to the store
        as today, spool it privately for redaction, or keep nothing of it."""
        if not self.active:
            return "direct"
        kind = body_kind(media)
        if kind == "binary" or (kind == "text" and self.pattern is None and not self.hooks):
            return "drop" if self.drop_unparseable else "direct"
        return "redact"

    def raw_file(self) -> IO[bytes]:
        """A private file for a body's raw bytes until it is redacted: 0600, outside the store, and
        without a name where the system allows (Linux's O_TMPFILE), so that a crash leaves nothing."""
        directory = self._raw_dir
        if directory is None:
            return tempfile.TemporaryFile()
        if not self._raw_dir_made:  # made once, not looked up per body
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._raw_dir_made = True
        try:
            return tempfile.TemporaryFile(dir=directory)
        except FileNotFoundError:  # removed since (a cleaner of temporary folders): made again
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            return tempfile.TemporaryFile(dir=directory)

    def redact(self, data: bytes, media: bytes | None, direction: str, whole: bool = True) -> Redacted | None:
        """What to store for ``data``: redacted, unchanged, or None (drop it, as ``unredactable``).

        ``whole`` is False for a body cut short (at the capture limit, or by a client that went
        away): half a document is never parsed, and one of a kind obsml redacts is never kept.
        A hook's exception is raised as :class:`HookFailed` (see :func:`redact_or_drop`).
        """
        if not self.active or not data:  # an unread body (the app failed first) has no field to redact
            return Redacted(data, 0, ())
        kind = _kind_of(data, media)
        try:
            if kind == "binary" or (kind == "text" and self.pattern is None and not self.hooks):
                raise _Unparseable
            if not whole:
                return None
            if len(data) > self.max_bytes:
                raise _Unparseable
            if kind in _JSON_KINDS and self._nothing_to_find(data):
                return Redacted(data, 0, ())  # what the parse would find: nothing, so the body as it came
            return self._redact(data, kind, media, direction)
        except (_Unparseable, ValueError, RecursionError):
            return None if self.drop_unparseable else Redacted(data, 0, ())

    def stored_as_is(self, data: bytes, media: bytes | None) -> bool:
        """Whether :meth:`redact` of this body, whole, returns it as it came because the key screen
        finds nothing in it (a JSON body), told without its bookkeeping (issue 16: a body's redaction
        cost as much again around the screen as the screen). False: ask :meth:`redact`, which also
        answers any error of this one."""
        try:
            return (
                bool(data) and len(data) <= self.max_bytes and _kind_of(data, media) in _JSON_KINDS
                and self._nothing_to_find(data)
            )
        except Exception:
            return False

    def _redact(self, data: bytes, kind: Kind, media: bytes | None, direction: str) -> Redacted:
        found = _Found()
        rebuilt: bytes | None
        if kind == "json":
            rebuilt = self._json(data, found, media, direction)
        elif kind == "jsonl":
            rebuilt = self._json_lines(data, found, media, direction)
        elif kind == "form":
            rebuilt = self._form(data, found, media, direction)
        elif kind == "multipart":
            rebuilt = self._multipart(data, found, media)
        else:
            rebuilt = self._text(data, found, media, direction)
        if rebuilt is None:  # nothing replaced, no hook: the body stays byte-exact
            return Redacted(data, 0, ())
        return Redacted(rebuilt, found.count, tuple(sorted(found.paths)), rebuilt=True)

    def _hook(self, document: Any, media: bytes | None, direction: str) -> Any:
        content_type = media.decode("latin-1") if media else None
        for hook in self.hooks:
            try:
                returned = hook(document, direction=direction, content_type=content_type)
            except Exception as exc:
                # Only the type: the message may quote the very values the hook was to remove.
                raise HookFailed(f"the redact hook {_name_of(hook)} raised {type(exc).__name__}") from None
            if returned is not None:  # None: the hook changed the document in place
                document = returned
        return document

    def _json(self, data: bytes, found: _Found, media: bytes | None, direction: str) -> bytes | None:
        duplicates = _Duplicates()
        document = json.loads(data, object_pairs_hook=duplicates.object)
        document = self._document(document, "", found, self._may_match(data))
        if self.hooks:
            document = self._hook(document, media, direction)
        elif not found.count and not duplicates.seen:
            return None  # (a duplicate key's shadowed value would survive in the raw bytes)
        return _dump(document)

    def _json_lines(self, data: bytes, found: _Found, media: bytes | None, direction: str) -> bytes | None:
        strings = self._may_match(data)
        lines = data.split(b"\n")
        numbers = [number for number, line in enumerate(lines) if line.strip()]
        duplicates = _Duplicates()
        # One parse for all lines (a line per document: every line gives at least one value, so as
        # many values as lines means one each).
        documents = json.loads(b"[" + b",".join(lines[n] for n in numbers) + b"]", object_pairs_hook=duplicates.object)
        if len(documents) != len(numbers):
            raise _Unparseable
        changed = duplicates.seen
        for index, number in enumerate(numbers):
            before = found.count
            documents[index] = self._document(documents[index], str(number), found, strings)
            if found.count != before:  # only changed lines are written anew
                lines[number] = _dump(documents[index])
                changed = True
        if self.hooks or duplicates.seen:
            if self.hooks:
                documents = self._hook(documents, media, direction)
            ending = b"\n" if data.endswith(b"\n") else b""
            return b"\n".join(_dump(d) for d in documents) + ending
        return b"\n".join(lines) if changed else None

    def _nothing_to_find(self, data: bytes) -> bool:
        """Whether a JSON (or JSON lines) body holds no key a rule names and no string a pattern
        matches, proven without parsing it (issue 16: the parse was a third of the writer's time).

        Only for plain ASCII text without escapes or NUL bytes (no UTF-16/32 either): there every
        quote opens or closes a string and every key is its own bytes between quotes, so a key whose
        normalized form ends with a name (or equals a path's segment) leaves that name followed by a
        quote in the body lowercased with the separators taken out. A body of many strings is
        searched in one RE2 pass for all of them; one of few (long) strings has its keys looked at
        one by one, as RE2 over long text costs more than the parse. A body that is not valid JSON
        is kept as it came either way (``unparseable="drop"`` turns the screen off).
        """
        screen = self._key_screen
        if screen is None or not data.isascii() or b"\\" in data or b"\x00" in data:
            return False
        if data.count(b'"') * _BYTES_PER_QUOTE > len(data):
            if screen.search(data.translate(_LOWER, _SEPARATOR_BYTES)) is not None:
                return False
        else:
            strings = data.split(b'"')  # odd items are strings; a key is followed by a colon
            ends = self._key_ends
            for index in range(1, len(strings) - 1, 2):
                if strings[index + 1].lstrip()[:1] == b":" and strings[index].translate(
                    _LOWER, _SEPARATOR_BYTES
                ).endswith(ends):
                    return False
        return self.pattern is None or not self._may_match(data)

    def _may_match(self, data: bytes) -> bool:
        """Whether a pattern may match a string of this JSON text: one pass over it, so that the
        strings are searched one by one only when one may match (escapes hide text from the pass)."""
        if self.pattern is None:
            return False
        return b"\\u" in data or self.pattern.search(data.decode("utf-8", "replace")) is not None

    def _form(self, data: bytes, found: _Found, media: bytes | None, direction: str) -> bytes | None:
        text = data.decode("utf-8")
        fields = text.split("&")
        changed = False
        for index, field in enumerate(fields):
            raw_key, equals, raw_value = field.partition("=")
            key = unquote_plus(raw_key)
            if not equals:
                continue
            if self.fields.redacts_name(key) or self.fields.redacts_path([normalized(s) for s in key.split(".")]):
                fields[index] = f"{raw_key}={REDACTED}"
                found.add(key)
                changed = True
            elif self.pattern is not None:
                value, n = self.pattern.subn(REDACTED, unquote_plus(raw_value))
                if n:
                    fields[index] = f"{raw_key}={quote_plus(value, safe='[]')}"
                    found.add(key, n)
                    changed = True
        if self.hooks:
            pairs = [(unquote_plus(k), unquote_plus(v)) for k, _, v in (f.partition("=") for f in fields if f)]
            return urlencode(self._hook(pairs, media, direction), safe="[]").encode()
        return "&".join(fields).encode() if changed else None

    def _multipart(self, data: bytes, found: _Found, media: bytes | None) -> bytes | None:
        """A ``multipart/form-data`` upload (RFC 7578): the values of fields the rules name are
        replaced, patterns searched in text fields; files and every other byte are kept as sent.
        Hooks are not called: a part may be megabytes of an image."""
        boundary = _BOUNDARY.search(media or b"")
        if boundary is None:
            raise _Unparseable
        delimiter = b"--" + (boundary[1] or boundary[2])
        parts = data.split(delimiter)
        if len(parts) < 3 or not parts[-1].startswith(b"--"):
            raise _Unparseable  # no closing delimiter: not a whole multipart body
        changed = False
        for index in range(1, len(parts) - 1):
            head, blank, value = parts[index].partition(b"\r\n\r\n")
            named = _PART_NAME.search(head)
            if not blank or not value.endswith(b"\r\n") or named is None:
                raise _Unparseable
            name = named[1].decode("utf-8", "replace")
            if self.fields.redacts_name(name) or self.fields.redacts_path([normalized(p) for p in name.split(".")]):
                parts[index] = head + blank + REDACTED.encode() + b"\r\n"
                found.add(name)
                changed = True
            elif self.pattern is not None and b"filename=" not in head.lower():
                try:
                    text, n = self.pattern.subn(REDACTED, value[:-2].decode("utf-8"))
                except UnicodeDecodeError:
                    continue
                if n:
                    parts[index] = head + blank + text.encode("utf-8") + b"\r\n"
                    found.add(name, n)
                    changed = True
        return delimiter.join(parts) if changed else None

    def _text(self, data: bytes, found: _Found, media: bytes | None, direction: str) -> bytes | None:
        text = data.decode("utf-8")
        if self.pattern is not None:
            text, n = self.pattern.subn(REDACTED, text)
            if n:
                found.add("$", n)
        if self.hooks:
            text = self._hook(text, media, direction)
        elif not found.count:
            return None
        return str(text).encode("utf-8")

    def _document(self, root: Any, prefix: str, found: _Found, strings: bool) -> Any:
        """``root`` with matching values replaced, walked without recursion (documents may be deep).

        ``strings``: search string values with the patterns too.
        """
        fields, pattern = self.fields, self.pattern if strings else None
        if isinstance(root, str):
            if pattern is not None:
                root, n = pattern.subn(REDACTED, root)
                if n:
                    found.add(prefix, n)
            return root
        if not isinstance(root, (dict, list)):
            return root  # a number, true, false or null
        # Normalized paths are followed only as deep as the longest dotted rule.
        deepest = max(fields.paths, default=0)
        # (container, its shown path, its normalized path or None when no rule reaches below it)
        stack: list[tuple[Any, str, tuple[str, ...] | None]] = [(root, prefix, () if deepest else None)]
        known = fields.known_names  # the name cache, read inline: this loop runs once per value
        while stack:
            container, shown, path = stack.pop()
            named = isinstance(container, dict)
            items: Iterable[tuple[Any, Any]] = container.items() if named else enumerate(container)
            for key, value in items:
                child_path = None
                if path is not None and len(path) < deepest:
                    child_path = (*path, fields.normalized(key) if named else str(key))
                hidden = named and known.get(key)
                if hidden is None:
                    hidden = fields.redacts_name(key)
                if hidden or (child_path is not None and fields.redacts_path(child_path)):
                    container[key] = REDACTED
                    found.add(f"{shown}.{key}" if shown else str(key))
                elif isinstance(value, (dict, list)):
                    stack.append((value, f"{shown}.{key}" if shown else str(key), child_path))
                elif pattern is not None and isinstance(value, str):
                    replaced, n = pattern.subn(REDACTED, value)
                    if n:
                        container[key] = replaced
                        found.add(f"{shown}.{key}" if shown else str(key), n)
        return root


_LOWER = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", b"abcdefghijklmnopqrstuvwxyz")
_SEPARATOR_BYTES = b"_-. "  # what ``normalized`` takes out of a key


_BYTES_PER_QUOTE = 32  # past one quote in this many bytes, RE2 over the body beats a loop over its strings


def _key_needles(fields: FieldRules) -> set[str] | None:
    """What a key a rule could name ends with (normalized): each name, and one segment of each path.
    None when a path has no such segment (all ``*`` or list indices): then every body is parsed."""
    needles = set(fields.names)
    for rules in fields.paths.values():
        for rule in rules:
            segment = next((s for s in rule if s != "*" and not s.isdigit()), None)
            if segment is None:
                return None
            needles.add(segment)
    return needles or None


def _key_screen(fields: FieldRules) -> Any:
    """One RE2 expression finding, in a normalized body, the end of any key a rule could name."""
    needles = _key_needles(fields)
    if needles is None:
        return None
    import re2

    options = re2.Options()
    options.log_errors = False
    return re2.compile(b"|".join(re.escape(n.encode("utf-8")) + b'"' for n in sorted(needles)), options)


class HookFailed(Exception):
    """A user's redact hook raised: the body is dropped as ``unredactable``."""


def _name_of(hook: Hook) -> str:
    return f"{getattr(hook, '__module__', '?')}.{getattr(hook, '__qualname__', type(hook).__name__)}"


def redact_or_drop(
    redactor: BodyRedactor, data: bytes, media: bytes | None, direction: str, whole: bool = True
) -> Redacted | DropReason:
    """What to store for a body, or why nothing is: never raises but in strict mode, and never
    lets an unredacted body through when something fails (a hook, or obsml itself)."""
    try:
        result = redactor.redact(data, media, direction, whole)
    except HookFailed as exc:
        note_error("unredactable", str(exc))
        return "unredactable"
    except Exception as exc:
        if is_strict():
            raise
        note_error("internal_error", f"redacting a body: {type(exc).__name__}")
        return "internal_error"
    return "unredactable" if result is None else result


class _Duplicates:
    """Notes a JSON object with a repeated key: its raw bytes hold a value the parse hides."""

    __slots__ = ("seen",)

    def __init__(self) -> None:
        self.seen = False

    def object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result = dict(pairs)
        if len(result) != len(pairs):
            self.seen = True
        return result


def _dump(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
