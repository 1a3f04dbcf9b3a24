"""Exceptions raised by the coordinator, carrying the file, field, round or device they concern."""

from __future__ import annotations

from edge_runtime.errors import EdgeflError


class CoordinatorError(EdgeflError):
    """Base class for every error the coordinator raises on purpose."""


class ConfigError(CoordinatorError):
    """A configuration value (flag or TOML key) is missing or wrong."""

    def __init__(self, source: str, key: str, expected: str, found: object) -> None:
        super().__init__(f"{source}: {key!r}: expected {expected}, found {found!r}")
        self.source = source
        self.key = key
        self.expected = expected
        self.found = found


class CheckpointError(CoordinatorError):
    """A state folder cannot be used: unreadable, for another artifact, or would be overwritten."""
