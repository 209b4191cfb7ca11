"""The plugin's own log: logger ``obsml.azure_monitor``, warnings at most once a minute per kind."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

logger = logging.getLogger("obsml.azure_monitor")

_EVERY_S = 60.0
_last: dict[str, float] = {}
_lock = threading.Lock()


def warn_now_and_then(key: str, message: str, *args: Any, exc_info: bool = False) -> None:
    """Log a warning, unless one of the same kind was logged in the last minute."""
    now = time.monotonic()
    with _lock:
        last = _last.get(key)
        if last is not None and now - last < _EVERY_S:
            return
        _last[key] = now
    logger.warning(message, *args, exc_info=exc_info)
