"""Errors of the fleet emulator's inputs: device profiles, profile mixes."""

from __future__ import annotations

from edge_runtime.errors import EdgeflError


class FleetError(EdgeflError):
    """A fleet run could not start or keep its processes (broker, workers) alive, or its folder is not its own."""


class ProfileError(EdgeflError):
    """A device profile (or a mix of profiles) has a missing or bad field."""

    def __init__(self, source: object, field: str, problem: str) -> None:
        super().__init__(f"{source}: {field}: {problem}")
        self.source = source
        self.field = field
        self.problem = problem
