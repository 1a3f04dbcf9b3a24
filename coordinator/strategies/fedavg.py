"""FedAvg (McMahan et al., 2017) with a server learning rate.

The new global model is ``global + server_lr * mean(update)``, the mean
weighted as the round's ``--weighting`` says (by example count by default).
With ``server_lr = 1`` that is the weighted average of the devices' local
models. Streaming: one model's memory however many updates arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from coordinator.server_state import EMPTY, Arrays, ServerState
from coordinator.strategies.arith import WeightedSum, step
from coordinator.strategies.base import Diagnostics, RoundContext, check_positive
from edge_runtime.updates import l2_norm


@dataclass(frozen=True)
class FedAvg:
    name: ClassVar[str] = "fedavg"
    streaming: ClassVar[bool] = True
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        check_positive(self.server_lr, "server-lr")

    def init(self, weights: Arrays) -> Arrays:
        return EMPTY

    def begin(self, weights: Arrays, capacity: int, context: RoundContext | None = None) -> WeightedSum:
        return WeightedSum(weights)

    def apply(self, state: ServerState, accumulated: WeightedSum) -> tuple[ServerState, Diagnostics]:
        mean = accumulated.mean()
        return replace(state, weights=step(state.weights, mean, self.server_lr)), {"update_norm": l2_norm(mean)}
