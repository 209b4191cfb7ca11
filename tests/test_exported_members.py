from __future__ import annotations

import obsml
from obsml._registry import _BUILTIN_EXPORTERS


def test_the_public_api_is_exactly_what_the_package_exports() -> None:
    assert obsml.__all__ == [
        "Collected",
        "Collector",
        "ConfigError",
        "ObjectData",
        "ObjectStore",
        "ObsmlError",
        "ObsmlMiddleware",
        "ObsmlWSGIMiddleware",
        "PluginError",
        "PluginImportError",
        "RequestIds",
        "Settings",
        "Sink",
        "__version__",
        "current_request",
        "flush",
        "record_exception",
        "stats",
    ]
    for name in obsml.__all__:
        if not name.startswith("__"):
            assert getattr(obsml, name).__module__ == "obsml", name


def test_the_builtin_exporter_table_stays_sorted() -> None:
    assert list(_BUILTIN_EXPORTERS) == sorted(_BUILTIN_EXPORTERS)
