"""Errors obsml raises, all at start-up or from explicit calls, never inside a request.

ObsmlError
 ├── ConfigError          a setting has a bad value (names the setting and what it accepts)
 └── PluginError          an exporter or sink plugin cannot be used
      └── PluginImportError   the plugin is unknown or its package failed to import
"""

from __future__ import annotations


class ObsmlError(Exception):
    """Base class of every error obsml raises."""


class ConfigError(ObsmlError, ValueError):
    """A setting (keyword argument or ``OBSML_*`` variable) has a value obsml cannot use."""


class PluginError(ObsmlError):
    """An exporter or sink plugin is unusable."""


class PluginImportError(PluginError, ImportError):
    """A configured plugin is unknown, or installed but failing to import."""
