"""How ``obsml logs`` and ``obsml tail`` print requests: aligned lines, their bodies, or JSON lines.

A line is time, status, duration, request, model/version, correlation id and exception, aligned
in columns that only grow (so ``tail``'s later lines stay aligned with its first) and cut to the
terminal's width. Text from requests (paths, ids, messages) may hold control characters: they are
shown escaped on a line, and in bodies written to a terminal, so a request cannot drive the
user's terminal. Bodies over the inline limit are fetched by their URI through the store's
filesystem. ``--format json`` writes one object a line with the ``spans`` view's column names,
and bodies whole: as text, or base64 when they are not UTF-8.

A request's timeline (``--correlation-id``, issue 18) follows its line: each log record and outbound
call on a line of its own, its time in the time column, indented under the request::

    2026-11-30T19:35:29.137Z  500     12.4ms  POST /score  best_model/10  LOAN-2231  RuntimeError: no rows
    2026-11-30T19:35:29.139Z  INFO              scoring: scoring 3 rows
    2026-11-30T19:35:29.140Z  503      5.1ms    → GET http://features:8080/rows  ERROR
    2026-11-30T19:35:29.146Z  ERROR             scoring: no rows  ValueError: no rows

In JSON, each entry is an object after its request's, with ``"record": "log"`` or ``"dependency"``
and the ``logs`` or ``dependencies`` view's column names (the request's has ``"record": "request"``).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

from ._objects import one_line_error

Row = dict[str, Any]
#: A request's log records and outbound calls, by the request's (trace id, span id), in time order.
Timeline = dict[tuple[str, str], list[Row]]
SIDES = ("request", "response")
# C0 and C1 controls and DEL, shown as \xNN; bodies keep their line breaks and tabs.
_ON_A_LINE = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_IN_A_BODY = {code: text for code, text in _ON_A_LINE.items() if chr(code) not in "\n\t"}
# The widest a grown column gets before its values are cut with an ellipsis.
_MAX_WIDTHS = {"request": 48, "model": 32, "correlation_id": 36}


@dataclass(frozen=True)
class Body:
    """One side's body as the span describes it, with its bytes (``None`` when they could not be read)."""

    data: bytes | None
    size: int | None
    content_type: str | None
    uri: str | None
    truncated: bool
    captured_size: int | None
    error: str | None = None


class Printer:
    """Writes rows of the ``spans`` view to ``out`` as lines (``text``) or JSON objects (``json``).

    ``width`` is the terminal's (``None``: lines are never cut); ``terminal`` escapes control
    characters in bodies; ``fetch`` reads an offloaded body by URI (needed with ``bodies``).
    """

    def __init__(
        self, out: BinaryIO, *, format: str = "text", bodies: bool = False, width: int | None = None,
        terminal: bool = False, fetch: Callable[[str], bytes] | None = None, notes: BinaryIO | None = None,
        command: str = "logs",
    ) -> None:
        self._command = command
        self.bodies = bodies
        self._out = out
        self._notes = notes or out
        self._json = format == "json"
        self._width = width
        self._terminal = terminal
        self._fetch = fetch
        self._widths = {"request": 0, "model": 0, "correlation_id": 0}

    def rows(self, rows: list[Row], timeline: Timeline | None = None) -> None:
        """Print ``rows``, each followed by its entries in ``timeline`` when there is one."""
        if self._json:
            for row in rows:
                found = _json_object(row, self._bodies(row))
                self._write(json.dumps(found if timeline is None else {"record": "request", **found},
                                       ensure_ascii=False) + "\n")
                for entry in (timeline or {}).get((row["trace_id"], row["span_id"]), []):
                    self._write(json.dumps(entry, ensure_ascii=False, default=_iso) + "\n")
        else:
            cells = [_cells(row) for row in rows]
            for name, width in self._widths.items():  # grown to the widest so far, never shrunk
                self._widths[name] = min(_MAX_WIDTHS[name], max([width, *(len(line[name]) for line in cells)]))
            for row, line in zip(rows, cells, strict=True):
                self._write(self._line(line) + "\n")
                for side, body in self._bodies(row).items():
                    if body is not None:
                        self._write_body(side, body)
                for entry in (timeline or {}).get((row["trace_id"], row["span_id"]), []):
                    self._write(self._fitted(_entry_line(entry)) + "\n")
        self._out.flush()

    def note(self, message: str) -> None:
        """One line about the output, not in it (on the notes stream, so JSON output stays JSON)."""
        self._notes.write(f"obsml {self._command}: {message}\n".encode())
        self._notes.flush()

    def _line(self, cells: dict[str, str]) -> str:
        parts = [cells["time"], f"{cells['status']:>3}", f"{cells['duration']:>9}"]
        parts += [_fit(cells[name], width) for name, width in self._widths.items()]
        line = "  ".join(parts) + ("  " + cells["exception"] if cells["exception"] else "")
        return self._fitted(line)

    def _fitted(self, line: str) -> str:
        line = line.rstrip()
        return _fit(line, self._width) if self._width and len(line) > self._width else line

    def _bodies(self, row: Row) -> dict[str, Body | None]:
        return {side: self._body(row, side) for side in SIDES} if self.bodies else {}

    def _body(self, row: Row, side: str) -> Body | None:
        inline, uri = row[f"{side}_body"], row[f"{side}_body_uri"]
        if inline is None and uri is None:
            return None
        data, error = None, None
        if uri is not None:
            try:
                data = self._fetch(uri) if self._fetch else None
            except Exception as exc:  # a body gone or unreadable is said, the other requests still print
                error = one_line_error(exc)
        elif row[f"{side}_body_encoding"] == "base64":
            data = base64.b64decode(inline)
        else:
            data = inline.encode("utf-8", "surrogatepass")
        captured = row[f"{side}_body_captured_size"]
        return Body(
            data, row[f"{side}_body_size"], row[f"{side}_body_content_type"], uri,
            row[f"{side}_body_truncated"] == "true", int(captured) if captured is not None else None, error,
        )

    def _write_body(self, side: str, body: Body) -> None:
        facts = [body.content_type] if body.content_type else []
        facts.append(f"{body.size} bytes" if body.size is not None else "size unknown")
        if body.truncated:
            facts.append(f"truncated: {body.captured_size} bytes kept")
        text = _text(body.data)
        if body.error is not None:
            facts.append(f"not read from {body.uri}: {body.error}")
        elif text is None and body.data:
            facts.append("binary, not shown (--format json has it as base64)")
        self._write("  " + f"{side}: {', '.join(facts)}".translate(_ON_A_LINE) + "\n")
        if text:
            if self._terminal:
                self._write(text.translate(_IN_A_BODY) + ("" if text.endswith("\n") else "\n"))
            else:  # the bytes as they are, for a file or a pipe
                self._out.write(body.data or b"")
                self._write("" if text.endswith("\n") else "\n")

    def _write(self, text: str) -> None:
        self._out.write(text.encode("utf-8", "backslashreplace"))


def _cells(row: Row) -> dict[str, str]:
    start: datetime = row["start_time"]
    exception = _joined(row["exception_type"], row["exception_message"])
    cells = {
        "time": _time(start),
        "status": "---" if row["status_code"] is None else str(row["status_code"]),
        "duration": _duration(row["duration_ms"]),
        "request": " ".join(str(part) for part in (row["method"], row["route"] or row["path"]) if part),
        "model": "/".join(str(part) for part in (row["model"], row["version"]) if part),
        "correlation_id": row["correlation_id"] or "-",
        "exception": exception or ("ERROR" if row["error"] else ""),
    }
    return {name: value.translate(_ON_A_LINE) for name, value in cells.items()}


def _entry_line(entry: Row) -> str:
    """One line of a request's timeline: a log record, or an outbound call with its status and duration."""
    if entry["record"] == "log":
        moment: datetime = entry["time"]
        head = f"{entry['severity_text'] or entry['severity_number'] or '-':<14}"
        text = f"{entry['logger']}: {entry['message'] if entry['message'] is not None else ''}"
        failure = _joined(entry["exception_type"], entry["exception_message"])
    else:
        moment = entry["start_time"]
        status = "---" if entry["status_code"] is None else str(entry["status_code"])
        head = f"{status:>3}  {_duration(entry['duration_ms']):>9}"
        text = "→ " + " ".join(str(part) for part in (entry["method"], entry["url"] or entry["name"]) if part)
        # error.type is the status code itself for an HTTP error status, already on the line: then ERROR.
        error_type = entry["error_type"] if entry["error_type"] != status else None
        failure = _joined(entry["exception_type"], entry["exception_message"]) or (
            error_type or ("ERROR" if entry["error"] else ""))
    cells = [_time(moment), head, "  " + text, failure]
    return "  ".join(cell for cell in cells if cell).translate(_ON_A_LINE)


def _joined(kind: str | None, message: str | None) -> str:
    return ": ".join(str(part) for part in (kind, message) if part)


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _iso(value: Any) -> Any:
    """Times in a timeline entry's JSON as ISO-8601 (what ``json`` cannot write by itself)."""
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    return f"{ms:.1f}ms" if ms < 1000 else f"{ms / 1000:.2f}s"


def _fit(text: str, width: int) -> str:
    """``text`` padded to ``width``, or cut to it with an ellipsis."""
    return text.ljust(width) if len(text) <= width else text[: width - 1] + "…"


def _text(data: bytes | None) -> str | None:
    try:
        return None if data is None else data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _json_object(row: Row, bodies: dict[str, Body | None]) -> dict[str, Any]:
    found = {name: value for name, value in row.items() if not name.startswith(("request_body", "response_body"))}
    found["start_time"] = row["start_time"].isoformat()
    for side, body in bodies.items():
        text = None if body is None else _text(body.data)
        found[f"{side}_body"] = text if text is not None or body is None or body.data is None else (
            base64.b64encode(body.data).decode("ascii")
        )
        found[f"{side}_body_encoding"] = None if body is None or body.data is None else (
            "utf-8" if text is not None else "base64"
        )
        for name in ("size", "content_type", "uri", "truncated", "error"):
            found[f"{side}_body_{name}"] = None if body is None else getattr(body, name)
    return found
