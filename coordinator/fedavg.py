"""FedAvg (McMahan et al., 2017) with a server learning rate.

The new global model is ``global + server_lr * mean(update)``, the mean
weighted by each device's example count. With ``server_lr = 1`` that is the
example-weighted average of the devices' local models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from coordinator.aggregate import WeightedSum
from edge_runtime.weights import Weights


@dataclass(frozen=True)
class FedAvg:
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        if not self.server_lr > 0:
            raise ValueError(f"server_lr must be > 0, got {self.server_lr}")

    def begin(self, global_weights: Mapping[str, np.ndarray]) -> WeightedSum:
        return WeightedSum(global_weights)

    def accumulate(self, state: WeightedSum, update: Mapping[str, np.ndarray], examples: int) -> None:
        state.add(update, float(examples))

    def apply(self, global_weights: Mapping[str, np.ndarray], state: WeightedSum) -> Weights:
        step = state.mean()
        return {name: (np.asarray(value, np.float32) + np.float32(self.server_lr) * step[name]).astype(np.float32)
                for name, value in global_weights.items()}
