"""FedAdam (Reddi et al., ICLR 2021): Adam on the server, fed with the round's weighted mean update.

``v <- beta2 * v + (1 - beta2) * delta ** 2``, an exponential average of the
squared mean update; the rest of the round (``m``, the step, the state, the
initial ``v = tau ** 2``) is shared with FedYogi and FedAdagrad, see
``_adaptive.py``. No bias correction, as in the paper's Algorithm 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from coordinator.server_state import Arrays
from coordinator.strategies._adaptive import AdaptiveOptimizer
from coordinator.strategies.arith import decayed
from coordinator.strategies.base import check_fraction
from edge_runtime.weights import Weights


@dataclass(frozen=True)
class FedAdam(AdaptiveOptimizer):
    name: ClassVar[str] = "fedadam"
    server_lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        check_fraction(self.beta2, "beta2")

    def second_moment(self, v: Arrays, squared: Weights) -> Weights:
        return decayed(v, squared, self.beta2, 1.0 - self.beta2)
