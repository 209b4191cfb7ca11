"""The plugin registry: exporters (built-ins by name, plugins through ``obsml.exporters``) and
body redactors (``obsml.redactors``, named in ``OBSML_REDACTORS``).

Only configured names are imported, at start-up. An unknown name, a package that is not
installed and a package whose own import fails each get their own message.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any

from ._exceptions import PluginError, PluginImportError

EXPORTER_GROUP = "obsml.exporters"

# name -> "module:attribute"; kept sorted (a test checks it).
_BUILTIN_EXPORTERS = {
    "console": "obsml._exporters:console_exporter",
    "jsonl": "obsml._exporters:jsonl_exporter",
    "otlp": "obsml._exporters:otlp_exporter",
}

# What to install for a plugin we know of but do not ship, or for a built-in's optional package.
_INSTALL_HINTS = {
    "azure_monitor": "pip install obsml-azure-monitor (the package in plugins/obsml-azure-monitor)",
    "otlp": "pip install 'obsml[otlp]'",
}

builtin_exporters = MappingProxyType(_BUILTIN_EXPORTERS)


def install_hint(name: str) -> str:
    return _INSTALL_HINTS[name]


def import_target(target: str) -> Any:
    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def exporter_target(name: str) -> str:
    """The ``module:attribute`` registered for exporter ``name``; :class:`PluginImportError` if none is."""
    target = _BUILTIN_EXPORTERS.get(name)
    if target is not None:
        return target
    found = [ep for ep in entry_points(group=EXPORTER_GROUP) if ep.name == name]
    if not found:
        known = sorted({*_BUILTIN_EXPORTERS, *(ep.name for ep in entry_points(group=EXPORTER_GROUP))})
        hint = _INSTALL_HINTS.get(
            name, f"install a package that registers it in the entry-point group {EXPORTER_GROUP!r}"
        )
        raise PluginImportError(
            f"OBSML_EXPORTERS: unknown exporter {name!r} (available: {', '.join(known)}); to use it, {hint}"
        )
    return str(found[0].value)


def load_exporter(name: str) -> Callable[..., Any]:
    """The factory registered for exporter ``name``; raises :class:`PluginImportError` if unusable."""
    return _load_callable("exporter", name, exporter_target(name))


REDACTOR_GROUP = "obsml.redactors"


def load_redactor(name: str) -> Callable[..., Any]:
    """The hook registered as ``name`` in ``obsml.redactors`` (named in ``OBSML_REDACTORS``), loaded
    at start-up; one that is missing or fails to import fails start-up, as a configured exporter does."""
    found = [ep for ep in entry_points(group=REDACTOR_GROUP) if ep.name == name]
    if not found:
        known = sorted(ep.name for ep in entry_points(group=REDACTOR_GROUP))
        raise PluginImportError(
            f"OBSML_REDACTORS: unknown redactor {name!r} (available: {', '.join(known) or 'none'}); install a "
            f"package that registers it in the entry-point group {REDACTOR_GROUP!r}"
        )
    return _load_callable("redactor", name, str(found[0].value))


def _load_callable(kind: str, name: str, target: str) -> Callable[..., Any]:
    try:
        loaded = import_target(target)
    except Exception as exc:  # a plugin's own import may fail with anything
        raise PluginImportError(
            f"{kind} {name!r} ({target}) is installed but its import failed: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(loaded):
        raise PluginError(f"{kind} {name!r}: entry point {target} is not callable")
    return loaded  # type: ignore[no-any-return]
