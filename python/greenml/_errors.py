"""The error hierarchy: every message says what to do next."""

from __future__ import annotations


class GreenmlError(Exception):
    """Base class of every error greenml raises on purpose."""


class ConfigError(GreenmlError, ValueError):
    """An option or environment variable has an invalid value."""


class SensorError(GreenmlError):
    """Nothing can be measured or estimated where a measurement was required."""


class LogError(GreenmlError):
    """A record file cannot be written or read."""
