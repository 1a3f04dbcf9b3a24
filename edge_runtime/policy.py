"""Eligibility: whether training now costs the device's owner nothing.

The agent asks its policy before it accepts a task and again between
training steps. ``AlwaysEligible`` is the policy of a device with no
constraints (a lab machine, a test).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Decision:
    """An eligibility decision and the reasons for it (why not, or what held)."""

    eligible: bool
    reasons: tuple[str, ...] = ()


class EligibilityPolicy(Protocol):
    def check(self) -> Decision: ...


class AlwaysEligible:
    """Eligible at every check."""

    def check(self) -> Decision:
        return Decision(True, ("no policy configured",))
