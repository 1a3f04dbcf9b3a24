"""What the robust rules (median, trimmed mean, Krum, Multi-Krum) share: a buffered round and a plain step.

A robust rule needs every accepted update at once, so its accumulator is an
``UpdateBuffer`` holding at most the round's selection (``selected *
parameters * 4`` bytes). At commit the rule reduces the buffer to one
aggregate update, and the new model is ``x + server_lr * aggregate``.

The rules ignore the updates' weights (example counts): a weight is a
device's own claim, and letting it count would hand back to an attacker the
influence the rule takes away. Every accepted update counts once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

from coordinator.server_state import EMPTY, Arrays, ServerState
from coordinator.strategies.arith import UpdateBuffer, step
from coordinator.strategies.base import Diagnostics, RoundContext, check_positive
from edge_runtime.updates import l2_norm
from edge_runtime.weights import Weights


@dataclass(frozen=True)
class RobustRule(ABC):
    """The shared part of a buffered robust rule; a subclass gives its name, options and ``aggregate``."""

    name: ClassVar[str]
    streaming: ClassVar[bool] = False
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        check_positive(self.server_lr, "server-lr")

    @abstractmethod
    def aggregate(self, buffer: UpdateBuffer) -> tuple[Weights, Diagnostics]:
        """The round's aggregate update from the buffered updates (at least one), and what to report about it."""

    def init(self, weights: Arrays) -> Arrays:
        return EMPTY

    def begin(self, weights: Arrays, capacity: int, context: RoundContext | None = None) -> UpdateBuffer:
        return UpdateBuffer(weights, capacity)

    def apply(self, state: ServerState, accumulated: UpdateBuffer) -> tuple[ServerState, Diagnostics]:
        aggregate, diagnostics = self.aggregate(accumulated)
        after = replace(state, weights=step(state.weights, aggregate, self.server_lr))
        return after, {"update_norm": l2_norm(aggregate), **diagnostics}
