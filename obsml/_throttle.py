"""obsml's one log throttle: a line of each kind at once the first time, then at most once a minute.

A failure that repeats on every request or every retry must not flood the application's log
(compare OpenTelemetry's ``DuplicateFilter``); what the skipped lines would have said is counted
elsewhere (``obsml.stats()``), so nothing is lost but repetition.
"""

from __future__ import annotations

import threading

LOG_INTERVAL_S = 60.0


class LogThrottle:
    """When the next log line of each kind (a key) is due. Thread-safe; cheap enough per failure."""

    __slots__ = ("_last", "_lock", "interval")

    def __init__(self, interval: float = LOG_INTERVAL_S) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def due(self, key: str, now: float) -> bool:
        """Whether a line of ``key`` may be logged at ``now`` (``time.monotonic()``); if so, it is counted
        as logged."""
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.interval:
                return False
            self._last[key] = now
            return True

    def last(self, key: str) -> float | None:
        """When the last line of ``key`` was logged, or None if none was (since :meth:`forget`)."""
        return self._last.get(key)

    def next_due(self, key: str, now: float) -> float:
        """When a line of ``key`` held back at ``now`` may be logged."""
        return self._last.get(key, now) + self.interval

    def forget(self, key: str | None = None) -> None:
        """Let the next line of ``key`` (of every key, when None) out at once."""
        with self._lock:
            if key is None:
                self._last.clear()
            else:
                self._last.pop(key, None)
