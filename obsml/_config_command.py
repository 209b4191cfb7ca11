"""``obsml config set|unset|show``: the runtime switches in the store (README "Runtime switches").

``set`` and ``unset`` rewrite the control object (``_control.CONTROL_OBJECT``) whole and atomically
(a local file renamed into place; a blob uploaded whole), then add one history object per change
under ``_obsml/control-history/<yyyy>/<mm>/<dd>/``, never rewriting another. ``show`` prints the
effective value of each switch for a scope and where it comes from, as far as the command line
can know it, and what each live writer reports it runs with.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import socket
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO

from fsspec.implementations.local import LocalFileSystem

from ._control import (
    CONTROL_OBJECT,
    FORMAT,
    HISTORY_FOLDER,
    SWITCHES,
    ControlError,
    Values,
    parse_document,
    parse_value,
    resolve,
    scope_key,
)
from ._exceptions import ConfigError
from ._objects import one_line_error
from ._reader import StoreReader
from ._secrets import scrub
from ._settings import ENV_PREFIX, Settings


class _Refused(Exception):
    """A usage error: one line, exit status 2, nothing written."""


Scope = tuple[str | None, str | None, str | None]


def run_config_set(store: str, assignments: list[str], scope: Scope, out: TextIO | None = None) -> int:
    """``obsml config set k=v …``: 0 when written (or nothing changed), 2 on a bad value or store."""
    try:
        key = _scope(scope)
        values: dict[str, Any] = {}
        for assignment in assignments:
            name, sep, raw = assignment.partition("=")
            name = name.strip().lower()
            if not sep:
                raise _Refused(f"{assignment!r} is not NAME=VALUE")
            values[_switch(name)] = _parse(name, raw.strip())
        return _change(store, "set", key, lambda current: {**current, **values}, out or sys.stdout)
    except _Refused as exc:
        print(f"obsml config: {exc}", file=sys.stderr)
        return 2


def run_config_unset(store: str, names: list[str], scope: Scope, out: TextIO | None = None) -> int:
    """``obsml config unset k …``: the scope's switches removed, so what is below them applies again."""
    try:
        key = _scope(scope)
        gone = {_switch(name.strip().lower()) for name in names}
        return _change(store, "unset", key, lambda current: {k: v for k, v in current.items() if k not in gone},
                       out or sys.stdout)
    except _Refused as exc:
        print(f"obsml config: {exc}", file=sys.stderr)
        return 2


def run_config_show(store: str, scope: Scope, output: str = "text", out: TextIO | None = None) -> int:
    """``obsml config show``: each switch's effective value for the scope and its source; 2 on a bad store."""
    out = out or sys.stdout
    try:
        _scope(scope)
        settings = Settings.load(service=scope[0], model=scope[1], version=scope[2])
        reader = _open(store)
        data = _fetch(reader)
    except (_Refused, ConfigError) as exc:
        print(f"obsml config: {exc}", file=sys.stderr)
        return 2
    malformed = None
    document: dict[str, Any] = {}
    try:
        scopes = parse_document(data) if data is not None else {}
        document = json.loads(data) if data is not None else {}
    except ControlError as exc:
        scopes, malformed = {}, str(exc)
    found = resolve(scopes, settings.service, settings.model, settings.version)
    shown: dict[str, dict[str, Any]] = {}
    for name in SWITCHES:
        env_name = ENV_PREFIX + name.upper()
        if name in found:
            value, source, where = found[name][0], "control", found[name][1]
        elif env_name in os.environ:
            value, source, where = getattr(settings, name), "environment", env_name
        else:
            value, source, where = getattr(settings, name), "default", None
        shown[name] = {"value": value, "source": source, "where": where}
    writers = _live_writers(reader, settings)
    if output == "json":
        print(json.dumps({
            "store": scrub(reader.shown()),
            "scope": {"service": settings.service, "model": settings.model, "version": settings.version},
            "settings": shown,
            "control": {"changed_at": document.get("changed_at"), "changed_by": document.get("changed_by"),
                        "scopes": scopes, "malformed": malformed},
            "writers": writers,
        }, indent=2), file=out)
        return 0
    print(f"scope: service={settings.service} model={settings.model} version={settings.version}", file=out)
    for name, entry in shown.items():
        where = f" ({_label(entry['where'])})" if entry["source"] == "control" else \
            f" ({entry['where']})" if entry["where"] else ""
        print(f"  {name:<16} {_text(entry['value']):<6} {entry['source']}{where}", file=out)
    if malformed:
        print(f"the control object is malformed ({malformed}): writers keep the last good one", file=out)
    print("A server's own keyword arguments override its environment and defaults; the control object "
          "overrides them all.", file=out)
    if not writers:
        print("no live writer reports what it runs with (writers report in their status)", file=out)
    for writer in writers:
        for part in writer["applied"]:
            values = " ".join(f"{k}={_text(v)}" for k, v in part.items() if k not in ("scope", "part", "from_control"))
            print(f"  writer {writer['writer']} on {writer['host']} ({part['part']} {part['scope']}): {values}",
                  file=out)
    return 0


def _change(store: str, command: str, key: str, change: Callable[[Values], Values], out: TextIO) -> int:
    reader = _open(store)
    data = _fetch(reader)
    replaced = None
    try:
        document = json.loads(data) if data is not None else {}
        scopes = parse_document(data) if data is not None else {}
    except ControlError as exc:
        replaced, document, scopes = str(exc), {}, {}
        print(f"obsml config: replacing a malformed control object ({exc})", file=sys.stderr)
    old = scopes.get(key, {})
    new = change(old)
    changes = [{"setting": name, "old": old.get(name), "new": new.get(name)}
               for name in SWITCHES if old.get(name) != new.get(name)]
    if not changes and replaced is None:
        print(f"obsml config: nothing to change for {_label(key)}", file=out)
        return 0
    scopes = {k: v for k, v in {**scopes, key: new}.items() if v}
    now = datetime.now(timezone.utc)
    who = _who()
    document = {**document, "format": FORMAT, "scopes": scopes, "changed_at": now.isoformat(timespec="milliseconds"),
                "changed_by": f"{who['user']}@{who['host']}"}
    record = {"format": FORMAT, "at": document["changed_at"], "by": who, "command": command, "scope": key,
              "changes": changes, "replaced_malformed": replaced}
    history = f"{HISTORY_FOLDER}/{now:%Y/%m/%d}/{now:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(4)}.json"
    try:
        _write(reader, CONTROL_OBJECT, json.dumps(document, indent=2).encode())
    except Exception as exc:
        raise _Refused(f"cannot write to {scrub(reader.shown())}: {one_line_error(exc)}") from None
    try:
        _write(reader, history, json.dumps(record).encode())
    except Exception as exc:
        print(f"obsml config: the change is in force but its history was not written: {one_line_error(exc)}",
              file=sys.stderr)
        return 1
    for item in changes:
        print(f"{_label(key)}: {item['setting']} {_text(item['old'])} -> {_text(item['new'])}", file=out)
    return 0


def _open(store: str) -> StoreReader:
    try:
        return StoreReader.open(store)
    except ConfigError as exc:
        raise _Refused(str(exc)) from None


def _fetch(reader: StoreReader) -> bytes | None:
    try:
        return bytes(reader.fs.cat_file(f"{reader.root}/{CONTROL_OBJECT}"))
    except FileNotFoundError:
        return None
    except Exception as exc:  # whatever the filesystem raises (adlfs: the Azure SDK's errors), in one line
        raise _Refused(f"cannot read {scrub(reader.shown())}: {one_line_error(exc)}") from None


def _write(reader: StoreReader, relative: str, data: bytes) -> None:
    """``data`` as the object ``relative``, whole or not at all (a blob upload is; a file is renamed in)."""
    path = f"{reader.root}/{relative}"
    if not isinstance(reader.fs, LocalFileSystem):  # an object store puts an object whole
        reader.fs.pipe_file(path, data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{secrets.token_hex(4)}.tmp"
    with open(temporary, "wb") as file:
        file.write(data)
    os.replace(temporary, path)


def _scope(scope: Scope) -> str:
    service, model, version = scope
    if (model is not None and service is None) or (version is not None and model is None):
        raise _Refused("a scope is all services, --service S, --service S --model M, or all three with --version V")
    for name, value in zip(("service", "model", "version"), scope, strict=True):
        if value is not None:
            try:
                Settings.load(env={}, **{name: value})
            except ConfigError as exc:
                raise _Refused(f"--{exc}") from None
    return scope_key(service, model, version)


def _switch(name: str) -> str:
    if name not in SWITCHES:
        raise _Refused(f"{name} cannot be switched at runtime; the runtime switches are {', '.join(SWITCHES)}")
    return name


def _parse(name: str, raw: str) -> Any:
    try:
        return parse_value(name, raw)
    except ControlError as exc:
        raise _Refused(str(exc)) from None


def _live_writers(reader: StoreReader, settings: Settings) -> list[dict[str, Any]]:
    """The writers alive in the last day that report what they apply for this scope's service."""
    from ._status_command import _latest, _read, _with_state

    now = datetime.now(timezone.utc)
    try:
        statuses = _latest(_read(reader, now - timedelta(days=1), None))
    except Exception:  # the status files are a courtesy here: the switches were shown
        return []
    writers = []
    for status in statuses:
        control = status.get("control")
        if _with_state(status, now)["state"] != "alive" or not isinstance(control, dict):
            continue
        applied = [part for part in control.get("applied", []) if _within(part.get("scope", ""), settings)]
        if applied:
            writers.append({"writer": status["writer"], "host": status["host"], "pid": status["pid"],
                            "changed_at": control.get("changed_at"), "applied": applied})
    return sorted(writers, key=lambda writer: (writer["host"], writer["pid"]))


def _within(scope: str, settings: Settings) -> bool:
    return scope.split("/")[0] == settings.service


def _label(key: str) -> str:
    return "all services" if key == "*" else key


def _text(value: Any) -> str:
    if value is None:
        return "(unset)"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _who() -> dict[str, str]:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment nor the password database (a container)
        user = f"uid-{os.getuid()}"
    return {"user": user, "host": socket.gethostname()}
