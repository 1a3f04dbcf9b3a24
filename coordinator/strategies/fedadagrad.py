"""FedAdagrad (Reddi et al., ICLR 2021): Adagrad on the server, fed with the round's weighted mean update.

``v <- v + delta ** 2``: the squared mean updates summed over every round, so
each coordinate's step shrinks as the updates it has seen add up. There is no
``beta2``; ``beta1`` defaults to 0 (no momentum: ``m`` is this round's
``delta``). The rest is shared with FedAdam and FedYogi, see ``_adaptive.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from coordinator.server_state import Arrays
from coordinator.strategies._adaptive import AdaptiveOptimizer
from coordinator.strategies.arith import decayed
from edge_runtime.weights import Weights


@dataclass(frozen=True)
class FedAdagrad(AdaptiveOptimizer):
    name: ClassVar[str] = "fedadagrad"
    server_lr: float = 0.1
    beta1: float = 0.0

    def second_moment(self, v: Arrays, squared: Weights) -> Weights:
        return decayed(v, squared, 1.0, 1.0)
