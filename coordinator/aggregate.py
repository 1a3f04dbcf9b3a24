"""Arithmetic shared by aggregation strategies: a streaming weighted sum of named tensors."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edge_runtime.weights import Weights


class WeightedSum:
    """Running ``sum(weight * tensors)`` in float64: one model's memory however many updates arrive."""

    def __init__(self, template: Mapping[str, np.ndarray]) -> None:
        self._sums = {name: np.zeros(np.shape(value), np.float64) for name, value in template.items()}
        self._scratch = {name: np.empty_like(total) for name, total in self._sums.items()}
        self.total_weight = 0.0
        self.count = 0

    def add(self, tensors: Mapping[str, np.ndarray], weight: float) -> None:
        if weight <= 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        for name, total in self._sums.items():
            scratch = self._scratch[name]
            np.multiply(tensors[name], weight, out=scratch, dtype=np.float64)  # no per-update allocation
            total += scratch
        self.total_weight += weight
        self.count += 1

    def mean(self) -> Weights:
        """The weighted mean, as float32; an empty sum has no mean."""
        if self.count == 0:
            raise ValueError("no tensors were added")
        return {name: (total / self.total_weight).astype(np.float32) for name, total in self._sums.items()}
