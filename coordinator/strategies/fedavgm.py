"""FedAvgM (Hsu et al., 2019): FedAvg with momentum on the server.

Each committed round, with ``delta`` the weighted mean of the round's updates
(weighted as ``--weighting`` says)::

    v <- server_momentum * v + delta
    x <- x + server_lr * v

``v`` starts at 0 and is kept as ``momentum/<weight>`` (float32) in the
server state, so it survives a checkpoint. With ``server_momentum = 0`` this
is FedAvg. Streaming: one model's memory however many updates arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from coordinator.server_state import Arrays, ServerState
from coordinator.strategies.arith import WeightedSum, decayed, step
from coordinator.strategies.base import (
    Diagnostics,
    RoundContext,
    check_fraction,
    check_positive,
    named,
    slot,
    zeros_like,
)
from edge_runtime.updates import l2_norm


@dataclass(frozen=True)
class FedAvgM:
    name: ClassVar[str] = "fedavgm"
    streaming: ClassVar[bool] = True
    server_lr: float = 1.0
    server_momentum: float = 0.9

    def __post_init__(self) -> None:
        check_positive(self.server_lr, "server-lr")
        check_fraction(self.server_momentum, "server-momentum")

    def init(self, weights: Arrays) -> Arrays:
        return zeros_like(weights, "momentum")

    def begin(self, weights: Arrays, capacity: int, context: RoundContext | None = None) -> WeightedSum:
        return WeightedSum(weights)

    def apply(self, state: ServerState, accumulated: WeightedSum) -> tuple[ServerState, Diagnostics]:
        delta = accumulated.mean()
        momentum = decayed(slot(state.strategy_state, "momentum", delta), delta, self.server_momentum, 1.0)
        after = replace(state, weights=step(state.weights, momentum, self.server_lr),
                        strategy_state=named("momentum", momentum))
        return after, {"update_norm": l2_norm(delta), "momentum_norm": l2_norm(momentum)}
