"""Unheld locks in a forked child.

``os.fork()`` copies each lock as it is at that instant. A lock one of obsml's threads held then
(the writer amid a part file's write, gunicorn ``--preload`` forking a master whose writer runs)
stays held for ever in the child, where that thread does not exist: the child's writer waits on
it from its first record, and everything the worker serves is lost at its exit. Whatever such a
lock guarded may be half-changed in the child; its owner starts afresh there anyway (a child
keeps none of its parent's part files, re-reads the control object).
"""

from __future__ import annotations

import os
import threading
import weakref

_OWNERS: weakref.WeakKeyDictionary[object, tuple[str, ...]] = weakref.WeakKeyDictionary()


def renew_locks_in_child(owner: object, *names: str) -> None:
    """Give ``owner`` a new ``threading.Lock`` in each of the attributes ``names`` in every forked child."""
    _OWNERS[owner] = names


def _renew() -> None:
    for owner, names in list(_OWNERS.items()):
        for name in names:
            setattr(owner, name, threading.Lock())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew)
