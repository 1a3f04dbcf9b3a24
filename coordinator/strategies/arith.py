"""Arithmetic shared by aggregation strategies: the two accumulators and the element-wise rules.

``WeightedSum`` streams (one model's memory however many updates arrive);
``UpdateBuffer`` keeps the round's accepted updates for rules that need them
all at once (median, trimmed mean, Krum). The rest are pure functions over
named tensors; none modifies its inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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

    def add_sum(self, total: Mapping[str, np.ndarray], count: int) -> None:
        """Add the sum of ``count`` updates of weight 1 at once (secure aggregation: only the sum is known)."""
        if count <= 0:
            raise ValueError(f"count must be > 0, got {count}")
        for name, running in self._sums.items():
            running += np.asarray(total[name], np.float64)
        self.total_weight += count
        self.count += count

    def mean(self) -> Weights:
        """The weighted mean, as float32; an empty sum has no mean."""
        if self.count == 0:
            raise ValueError("no tensors were added")
        return {name: (total / self.total_weight).astype(np.float32) for name, total in self._sums.items()}

    def total(self) -> dict[str, np.ndarray]:
        """The weighted sum itself, in float64 (copies: changing them changes nothing here)."""
        return {name: total.copy() for name, total in self._sums.items()}


class UpdateBuffer:
    """The round's accepted updates and their weights, at most ``capacity`` of them (the round's selection)."""

    def __init__(self, template: Mapping[str, np.ndarray], capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.names = tuple(template)
        self.capacity = capacity
        self.updates: list[Weights] = []
        self.weights: list[float] = []

    @property
    def count(self) -> int:
        return len(self.updates)

    def add(self, tensors: Mapping[str, np.ndarray], weight: float) -> None:
        if weight <= 0:
            raise ValueError(f"weight must be > 0, got {weight}")
        if self.count >= self.capacity:
            raise ValueError(f"the buffer holds {self.capacity} updates already (the round's selection)")
        # its own float32 copies: a caller reusing or changing its arrays cannot change a buffered update
        self.updates.append({name: np.array(tensors[name], np.float32) for name in self.names})
        self.weights.append(weight)

    def stacked(self, name: str) -> np.ndarray:
        """Tensor ``name`` of every update, stacked on a new first axis: shape ``(count, *shape)``."""
        if not self.updates:
            raise ValueError("no tensors were added")
        return np.stack([update[name] for update in self.updates])


def step(weights: Mapping[str, np.ndarray], direction: Mapping[str, np.ndarray], lr: float) -> Weights:
    """``weights + lr * direction`` per tensor, as float32."""
    return {name: (np.asarray(value, np.float32) + np.float32(lr) * np.asarray(direction[name], np.float32))
            .astype(np.float32) for name, value in weights.items()}


def coordinate_median(buffer: UpdateBuffer) -> Weights:
    """The median of every coordinate over the buffered updates (the mean of the middle two for an even count)."""
    return {name: np.median(buffer.stacked(name), axis=0).astype(np.float32) for name in buffer.names}


def trimmed_mean(buffer: UpdateBuffer, per_side: int) -> Weights:
    """Per coordinate, the mean after dropping the ``per_side`` largest and ``per_side`` smallest values."""
    if not 0 <= 2 * per_side < buffer.count:
        raise ValueError(f"cannot drop {per_side} from each side of {buffer.count} updates")
    out: Weights = {}
    for name in buffer.names:
        ordered = np.sort(buffer.stacked(name), axis=0)
        out[name] = ordered[per_side: buffer.count - per_side].mean(axis=0, dtype=np.float64).astype(np.float32)
    return out


def pairwise_sq_distances(updates: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    """Squared L2 distances between every pair of updates (all tensors together), in float64.

    Built from the Gram matrix one tensor at a time, so beyond the updates it needs one tensor of every
    update in float64 (``count * largest tensor * 8`` bytes), not a float64 copy of them all."""
    count = len(updates)
    gram = np.zeros((count, count), np.float64)
    for name in updates[0] if updates else ():
        flat = np.stack([np.ravel(np.asarray(update[name], np.float64)) for update in updates])
        gram += flat @ flat.T
    norms = np.diag(gram)
    distances = norms[:, None] + norms[None, :] - 2.0 * gram
    np.fill_diagonal(distances, 0.0)
    return np.asarray(np.maximum(distances, 0.0), np.float64)


def krum_scores(distances: np.ndarray, attackers: int) -> np.ndarray:
    """Krum's score of each update: the sum of squared distances to its ``n - f - 2`` nearest others
    (at least one neighbour when the round is too small for that, as Blanchard et al. require n > 2f + 2)."""
    n = len(distances)
    if n == 1:
        return np.zeros(1)
    neighbours = max(1, min(n - 1, n - attackers - 2))
    ordered = np.sort(distances + np.diag(np.full(n, np.inf)), axis=1)  # the update itself is not a neighbour
    return np.asarray(ordered[:, :neighbours].sum(axis=1), np.float64)


def squares(tensors: Mapping[str, np.ndarray]) -> Weights:
    return {name: np.square(np.asarray(value, np.float32)) for name, value in tensors.items()}


def decayed(previous: Mapping[str, np.ndarray], value: Mapping[str, np.ndarray], decay: float,
            gain: float) -> Weights:
    """``decay * previous + gain * value`` per tensor, in float64, as float32: one step of a momentum or of a
    moment estimate."""
    return {name: (decay * np.asarray(old, np.float64) + gain * np.asarray(value[name], np.float64))
            .astype(np.float32) for name, old in previous.items()}


def adaptive_direction(m: Mapping[str, np.ndarray], v: Mapping[str, np.ndarray], tau: float) -> Weights:
    """``m / (sqrt(v) + tau)`` per tensor, in float64, as float32: an adaptive server optimizer's step."""
    return {name: (np.asarray(first, np.float64) / (np.sqrt(np.asarray(v[name], np.float64)) + tau))
            .astype(np.float32) for name, first in m.items()}
