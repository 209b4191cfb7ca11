"""obsml's own failures: strict mode, the shared guard and its log throttle."""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pytest
from wsgi_apps import echo_app

import obsml
from obsml import ObsmlMiddleware, ObsmlWSGIMiddleware
from obsml._stats import guarded


async def asgi_app(scope: object, receive: object, send: object) -> None:
    return None


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return lambda data: None


def test_strict_mode_is_one_process_switch_that_a_later_middleware_cannot_turn_off(store: Path) -> None:
    ObsmlMiddleware(asgi_app, store=str(store), strict=True)
    wsgi = ObsmlWSGIMiddleware(echo_app, store=str(store), strict=False)
    # A status line obsml cannot read fails its own capture code: raised in strict mode, not counted.
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.input": io.BytesIO(), "HTTP_X_STATUS": "abc"}
    with pytest.raises(ValueError, match="invalid literal for int"):
        wsgi(environ, start_response)
    assert obsml.stats()["dropped"] == {}


def test_outside_strict_mode_the_guard_counts_and_logs_a_failure_once_a_minute(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("obsml._stats._strict", False)
    with caplog.at_level(logging.ERROR, logger="obsml"):
        for _ in range(3):
            with guarded("reading a route"):
                raise KeyError("route")
    assert obsml.stats()["dropped"] == {"internal_error": {"item": 3}}
    lines = [r for r in caplog.records if r.getMessage().startswith("obsml internal error in reading a route")]
    assert len(lines) == 1 and "KeyError: 'route'" in (lines[0].exc_text or "")
