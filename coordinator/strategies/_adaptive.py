"""What FedAdam, FedYogi and FedAdagrad share: Reddi et al., "Adaptive Federated Optimization" (ICLR 2021),
Algorithm 2, without bias correction.

Each committed round, with ``delta`` the weighted mean of the round's updates::

    m <- beta1 * m + (1 - beta1) * delta
    v <- the optimizer's own rule over v and delta ** 2        (``second_moment``)
    x <- x + server_lr * m / (sqrt(v) + tau)

The optimizers differ only in the rule for ``v``; each file holds its rule and
its defaults, this module the rest. The state is ``m/<weight>`` and
``v/<weight>``, float32. ``m`` starts at 0 and ``v`` at ``tau ** 2``: the
paper asks for ``v >= tau ** 2`` before the first round, and its smallest
value damps the first steps least (a larger start divides them by more).
The moments are computed in float64 and stored as float32; the
step uses the stored values, so a resumed run takes exactly the steps an
uninterrupted one would. Streaming: one model's memory for the round.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from coordinator.server_state import Arrays, ServerState
from coordinator.strategies.arith import WeightedSum, adaptive_direction, decayed, squares, step
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
from edge_runtime.weights import Weights


@dataclass(frozen=True)
class AdaptiveOptimizer(ABC):
    """The shared part of an adaptive server optimizer; a subclass gives its name, its defaults for
    ``server_lr`` and ``beta1`` (``tau`` is 1e-3 for all three), and its ``v`` rule."""

    name: ClassVar[str]
    streaming: ClassVar[bool] = True
    server_lr: float
    beta1: float
    tau: float = 1e-3

    def __post_init__(self) -> None:
        check_positive(self.server_lr, "server-lr")
        check_fraction(self.beta1, "beta1")
        check_positive(self.tau, "tau")

    @abstractmethod
    def second_moment(self, v: Arrays, squared: Weights) -> Weights:
        """The next ``v`` from the stored one and the square of this round's mean update, per tensor."""

    def init(self, weights: Arrays) -> Arrays:
        v = {name: np.full(np.shape(value), self.tau**2, np.float32) for name, value in weights.items()}
        return {**zeros_like(weights, "m"), **named("v", v)}

    def begin(self, weights: Arrays, capacity: int, context: RoundContext | None = None) -> WeightedSum:
        return WeightedSum(weights)

    def apply(self, state: ServerState, accumulated: WeightedSum) -> tuple[ServerState, Diagnostics]:
        delta = accumulated.mean()
        m = decayed(slot(state.strategy_state, "m", delta), delta, self.beta1, 1.0 - self.beta1)
        v = self.second_moment(slot(state.strategy_state, "v", delta), squares(delta))
        direction = adaptive_direction(m, v, self.tau)
        after = replace(state, weights=step(state.weights, direction, self.server_lr),
                        strategy_state={**named("m", m), **named("v", v)})
        return after, {"update_norm": l2_norm(delta), "step_norm": self.server_lr * l2_norm(direction)}
