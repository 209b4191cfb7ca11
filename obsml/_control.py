"""Runtime switches: the control object in the store, re-read on the writer (README "Runtime switches").

``obsml config set`` writes one small JSON object, ``_obsml/control/settings.json``, holding the
switches of every scope (all services, a service, a model, a version). Each pipeline's
:class:`ControlTicker` re-reads it on the writer thread: for a local store at each tick, by a
stat (the file is read only when the stat changed); for a remote fsspec store at most every
``OBSML_CONTROL_INTERVAL`` seconds, with one GET (made on a short-lived thread of its own, so that
an outage never stalls the writer). It then hands each subscriber (a middleware's
``Capturer``, a Collector's destination) the values of its scope, which the subscriber swaps
into the plain attributes its request path already reads: the request path does no more work.

A control object that cannot be parsed, or holds a value the settings' own rules refuse, is
ignored with one warning per distinct content; the last good one stays in force. A missing one
means no switch: keywords, environment and defaults apply again.
"""

from __future__ import annotations

import json
import os
import threading
import time
import weakref
from collections.abc import Mapping
from hashlib import sha256
from typing import TYPE_CHECKING, Any, Protocol

from ._forks import renew_locks_in_child
from ._objects import describe_error
from ._stats import logger

if TYPE_CHECKING:
    from ._settings import Settings
    from ._store import Store

FORMAT = 1
CONTROL_OBJECT = "_obsml/control/settings.json"
HISTORY_FOLDER = "_obsml/control-history"
# What may change while a server runs: each is read on the request path (or the writer) from an
# attribute the control swaps. Anything compiled into the middleware (redaction, routes, exporters,
# the store) needs a restart.
SWITCHES = ("enabled", "sample_rate", "collect_enabled", "capture_bodies")
ALL_SCOPES = "*"
_NOT_READ = object()
_MAX_BYTES = 1 << 20  # a control object is a few hundred bytes; a bigger file is malformed, not read whole

Values = dict[str, Any]
Outcome = tuple[bool, bytes | None] | Exception  # a read: (changed, bytes or None: no object), or its failure
Scopes = dict[str, Values]


class ControlError(ValueError):
    """A control object obsml cannot use; the message says why, without its content."""


class Subscriber(Protocol):
    """What a control applies to: a scope (service, model, version) and a swap of its values."""

    @property
    def control_scope(self) -> tuple[str, str, str]: ...

    def apply_control(self, values: Mapping[str, Any]) -> None:
        """Swap in ``values`` (the switches set for this scope; an empty mapping: none)."""

    def control_report(self) -> dict[str, Any]:
        """Its scope and the values it runs with, for the writer's status."""


def scope_key(service: str | None = None, model: str | None = None, version: str | None = None) -> str:
    """The key of a scope in the control object: ``*``, ``S``, ``S/M`` or ``S/M/V``."""
    names = [name for name in (service, model, version) if name is not None]
    return "/".join(names) if names else ALL_SCOPES


def resolve(scopes: Scopes, service: str, model: str, version: str) -> dict[str, tuple[Any, str]]:
    """Each switch set for this scope, as ``(value, scope key)``: the most specific scope wins."""
    found: dict[str, tuple[Any, str]] = {}
    for key in (ALL_SCOPES, scope_key(service), scope_key(service, model), scope_key(service, model, version)):
        for name, value in scopes.get(key, {}).items():
            found[name] = (value, key)
    return found


def parse_value(name: str, raw: Any) -> Any:
    """``raw`` checked and converted by the rule of the setting ``name`` (``_settings``' own)."""
    from ._settings import _PARSERS

    parse, accepted = _PARSERS[name]
    try:
        return parse(raw)
    except (TypeError, ValueError):
        raise ControlError(f"{name}={raw!r} is not valid: expected {accepted}") from None


def parse_document(data: bytes) -> Scopes:
    """The scopes of a control object; :class:`ControlError` when it is malformed."""
    from ._settings import SAFE_NAME

    try:
        document = json.loads(data)
    except ValueError as exc:
        raise ControlError(f"not JSON ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("scopes"), dict):
        raise ControlError("not a control object (no 'scopes' mapping)")
    if document.get("format") != FORMAT:
        raise ControlError(f"format {document.get('format')!r}, this obsml reads format {FORMAT}")
    scopes: Scopes = {}
    for key, values in document["scopes"].items():
        names = key.split("/")
        if key != ALL_SCOPES and (len(names) > 3 or not all(SAFE_NAME.fullmatch(n) for n in names)):
            raise ControlError(f"scope {key!r} is not '*', 'service', 'service/model' or 'service/model/version'")
        if not isinstance(values, dict):
            raise ControlError(f"scope {key!r} is not a mapping of settings")
        unknown = sorted(set(values) - set(SWITCHES))
        if unknown:
            raise ControlError(f"scope {key!r}: {', '.join(unknown)} cannot be switched at runtime")
        scopes[key] = {name: parse_value(name, raw) for name, raw in values.items()}
    return scopes


class ControlTicker:
    """A writer's ticker re-reading the control object and handing each subscriber its values."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._local = not store.remote
        self._interval = settings.control_interval
        self._path = store.path(CONTROL_OBJECT)
        self._lock = threading.Lock()
        self._reading = threading.Lock()
        renew_locks_in_child(self, "_lock", "_reading")
        self._subscribers: weakref.WeakSet[Any] = weakref.WeakSet()
        self.scopes: Scopes = {}  # the control in force (the last good one)
        self.changed_at: str | None = None  # its ``changed_at``, for the writer's status
        self._seen: object = _NOT_READ  # the local file's stat when it was last read (None: no file)
        self._bad: str | None = None  # the digest of the last malformed content warned about
        self._problem: str | None = None  # the last read error warned about
        self._pid = os.getpid()
        self._fs: Any = store.fs
        self._next_read = 0.0
        self._getting: threading.Thread | None = None  # a remote store's GET under way
        self._got: Outcome = (False, None)

    def subscribe(self, subscriber: Subscriber) -> None:
        """Apply the control in force to ``subscriber`` now (no I/O), and every change from now on."""
        with self._lock:  # applied under the lock: a change installed meanwhile is never undone by an older one
            self._subscribers.add(subscriber)
            subscriber.apply_control(_values(self.scopes, subscriber))

    def read_now(self) -> None:
        """Read the control object at once: a middleware starting on a local store (a stat and a small
        read), so that a server restarted while switched off serves no request switched on."""
        if self._local:
            self._read()

    def tick(self, force: bool) -> None:
        # ``force`` (a flush, the close) is ignored: obsml.flush() may come per request, and a remote
        # store is read at most once per OBSML_CONTROL_INTERVAL.
        if force:
            return
        if self._pid != os.getpid():  # a forked worker re-reads on its own writer
            self._pid, self._seen, self._next_read, self._getting = os.getpid(), _NOT_READ, 0.0, None
            if not self._local:  # the parent's client belongs to the parent's event loop
                self._fs = type(self._fs)(*self._fs.storage_args, **self._fs.storage_options)
        if self._local:
            self._read()
            return
        # A remote GET may hang for as long as the SDK retries (an Azure outage: minutes): it runs on a
        # thread of its own, so that the writer never waits on the network; its outcome is taken up here.
        getting = self._getting
        if getting is not None:
            if getting.is_alive():
                return
            self._getting = None
            self._take(self._got)
        now = time.monotonic()
        if now >= self._next_read:
            self._next_read = now + self._interval
            self._getting = threading.Thread(target=self._get, name="obsml-control", daemon=True)
            try:
                self._getting.start()
            except RuntimeError:  # the interpreter is shutting down: no new thread, no need
                self._getting = None

    def _read(self) -> None:
        with self._reading:  # the writer's tick and a middleware starting beside it: one read after the other
            try:
                outcome: Outcome = self._fetch_local()
            except OSError as exc:
                outcome = exc
            self._take(outcome)

    def _get(self) -> None:
        """On the ``obsml-control`` thread: one GET of a remote store's control object."""
        try:
            self._got = (True, bytes(self._fs.cat_file(self._path)))
        except FileNotFoundError:
            self._got = (True, None)
        except Exception as exc:  # whatever the filesystem raises (adlfs: the Azure SDK's errors)
            self._got = exc

    def _take(self, outcome: Outcome) -> None:
        """Writer side: install what was read, or warn once per distinct failure or malformed content."""
        if isinstance(outcome, Exception):
            problem = describe_error(outcome)
            if problem != self._problem:
                self._problem = problem
                logger.warning("obsml: cannot read the control object %s (%s); the control in force stays",
                               CONTROL_OBJECT, problem)
            return
        self._problem = None
        changed, data = outcome
        if not changed:
            return
        if data is None:
            self._install({}, None)
            return
        try:
            scopes = parse_document(data)
        except ControlError as exc:
            digest = sha256(data).hexdigest()
            if digest != self._bad:  # one warning per content, not one per poll
                self._bad = digest
                logger.warning("obsml: the control object %s is malformed (%s); the last good one stays in force",
                               CONTROL_OBJECT, exc)
            return
        self._bad = None
        changed_at = json.loads(data).get("changed_at")
        self._install(scopes, changed_at if isinstance(changed_at, str) else None)

    def _fetch_local(self) -> tuple[bool, bytes | None]:
        """(whether the file may have changed, its bytes or None when there is none): a stat, and a
        read only when the stat changed."""
        try:
            stat = os.stat(self._path)
        except FileNotFoundError:
            changed, self._seen = self._seen is not None, None
            return changed, None
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if seen == self._seen:
            return False, None
        with open(self._path, "rb") as file:
            data = file.read(_MAX_BYTES)
        self._seen = seen
        return True, data

    def _install(self, scopes: Scopes, changed_at: str | None) -> None:
        with self._lock:
            self.changed_at = changed_at
            if scopes == self.scopes:
                return
            self.scopes = scopes
            for subscriber in list(self._subscribers):  # a few attribute swaps each: cheap under the lock
                subscriber.apply_control(_values(scopes, subscriber))

    def applied(self) -> list[dict[str, Any]]:
        """What each subscriber runs with, for the writer's status (``obsml config show``)."""
        with self._lock:
            subscribers = list(self._subscribers)
        return [subscriber.control_report() for subscriber in subscribers]


def _values(scopes: Scopes, subscriber: Subscriber) -> dict[str, Any]:
    return {name: value for name, (value, _) in resolve(scopes, *subscriber.control_scope).items()}
