"""An obsml sink that stores every captured object in one SQLite database: ``sqlite:///abs/path/obsml.db``.

``traces/…`` part files become one ``spans`` row per line; every other object (the ``payloads/…``
bodies over the inline limit) becomes one ``payloads`` row holding its bytes. Each put is one
transaction that first claims the object's relative path in ``objects``, so an object appears
whole or not at all, and putting it again (obsml may, after a crash) changes nothing.
"""

from __future__ import annotations

import json
import sqlite3
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from obsml import Sink

if TYPE_CHECKING:
    from obsml import ObjectData, Settings

__all__ = ["SqliteSink", "make_sink"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    relative TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    stored_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS spans (
    object TEXT NOT NULL REFERENCES objects (relative),
    line INTEGER NOT NULL,
    trace_id TEXT, span_id TEXT, name TEXT, start_time TEXT, duration_ms REAL, status TEXT,
    correlation_id TEXT, model_name TEXT, model_version TEXT,
    json TEXT NOT NULL,
    PRIMARY KEY (object, line)
);
CREATE INDEX IF NOT EXISTS spans_by_correlation_id ON spans (correlation_id);
CREATE INDEX IF NOT EXISTS spans_by_trace_id ON spans (trace_id, span_id);
CREATE TABLE IF NOT EXISTS payloads (
    relative TEXT PRIMARY KEY REFERENCES objects (relative),
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    data BLOB NOT NULL
);
"""


class SqliteSink(Sink):
    """obsml's objects in the SQLite database at ``path``, created (with its tables) on the first put."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None

    def put(self, relative: str, data: ObjectData, size: int) -> None:
        content = data.read(size)
        if len(content) != size:  # raising makes obsml keep the object in its spool and retry
            raise OSError(f"{relative}: read {len(content)} of {size} bytes")
        connection = self._connection or self._connect()
        with connection:  # one transaction: commits on success, rolls back on any exception
            claimed = connection.execute(
                "INSERT OR IGNORE INTO objects (relative, size) VALUES (?, ?)", (relative, size)
            ).rowcount
            if not claimed:
                return  # put before: the first put stored it whole
            if relative.startswith("traces/"):
                connection.executemany(
                    "INSERT INTO spans VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    span_rows(relative, content),
                )
            else:
                connection.execute(
                    "INSERT INTO payloads VALUES (?, ?, ?, ?)",
                    (relative, size, sha256(content).hexdigest(), content),
                )

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Created lazily, on obsml's delivery thread, which makes every put and the close().
        # timeout: several worker processes may share one database file, each waiting its turn.
        connection = sqlite3.connect(self.path, timeout=30)
        connection.execute("PRAGMA journal_mode=WAL")  # readers (your queries) never block the sink
        connection.executescript(SCHEMA)
        self._connection = connection
        return connection

    def __repr__(self) -> str:
        return f"<SqliteSink {self.path}>"


def span_rows(relative: str, content: bytes) -> list[tuple[Any, ...]]:
    """One row per line of a part file (one JSON span per line)."""
    rows = []
    # Not splitlines(): U+2028 may sit inside a JSON string.
    for number, line in enumerate(filter(None, content.split(b"\n")), start=1):
        text = line.decode("utf-8")
        span = json.loads(text)
        attributes = span.get("attributes", {})
        rows.append((
            relative, number, span.get("trace_id"), span.get("span_id"), span.get("name"),
            span.get("start_time"), span.get("duration_ms"), (span.get("status") or {}).get("code"),
            attributes.get("obsml.correlation_id"), attributes.get("obsml.model.name"),
            attributes.get("obsml.model.version"), text,
        ))
    return rows


def make_sink(url: str, *, settings: Settings) -> SqliteSink:
    """The ``obsml.sinks`` entry point for the ``sqlite`` scheme: ``sqlite:///abs/path/to/obsml.db``."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or parts.netloc or parts.query or parts.fragment or not parts.path.startswith("/"):
        # Never echo the URL itself: obsml treats store URLs as secrets.
        raise ValueError("the store URL must be sqlite:///absolute/path/to/file.db (no host, query or fragment)")
    return SqliteSink(Path(unquote(parts.path)))
