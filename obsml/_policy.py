"""Capture policies: which requests leave a span, and which spans keep their bodies.

Compiled once per middleware from ``OBSML_CAPTURE_BODIES``, ``OBSML_CAPTURE_ROUTES`` and
``OBSML_SKIP_ROUTES`` (README "Capture policies"). The request path only matches the request's
path against the skip globs, once, when there are some. What needs the route template (which
some frameworks know only after the app ran) or the request's outcome is decided on the
writer, where bodies kept until then are discarded when the policy says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from fnmatch import translate

from ._exceptions import ConfigError

Matcher = Callable[[str], "re.Match[str] | None"]


def glob_matcher(globs: Iterable[str]) -> Matcher | None:
    """One compiled pattern for all ``globs``, matching a whole string (``*`` crosses ``/`` too);
    None when there are no globs, so that callers skip the match altogether."""
    patterns = [translate(glob) for glob in globs]
    if not patterns:
        return None
    return re.compile("|".join(patterns)).match


class CapturePolicy:
    """Which requests are skipped (no span at all) and which spans keep their bodies."""

    __slots__ = ("_capture_routes", "bodies", "skip")

    def __init__(self, bodies: str, capture_routes: Iterable[str], skip_routes: Iterable[str]) -> None:
        capture_routes = tuple(capture_routes)
        if bodies == "none" and capture_routes:
            raise ConfigError(
                "capture_routes has no effect with capture_bodies=none (no body is kept): "
                "use capture_bodies=all (or errors) to keep the bodies of those routes only"
            )
        self.bodies = bodies
        # Matched against the request path on the request path, and against the route template on
        # the writer (a request skipped by its template costs its capture, but leaves nothing).
        self.skip = glob_matcher(skip_routes)
        self._capture_routes = glob_matcher(capture_routes)

    def skips_route(self, route: str | None) -> bool:
        return self.skip is not None and route is not None and self.skip(route) is not None

    def keeps_bodies(self, path: str, route: str | None, failed: bool) -> bool:
        """Whether a finished request's bodies are kept (writer side)."""
        if self.bodies == "none" or (self.bodies == "errors" and not failed):
            return False
        match = self._capture_routes
        return match is None or match(path) is not None or (route is not None and match(route) is not None)
