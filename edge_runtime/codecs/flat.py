"""Codecs over the whole update as one vector: its tensors flattened and concatenated in manifest order."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edge_runtime.codecs.base import FLOAT32_NORM_TOLERANCE, HEADER_BYTES, Encoded, VectorCodec, check_layout, nbytes
from edge_runtime.errors import WeightsError
from edge_runtime.manifest import WeightSpec
from edge_runtime.updates import l2_norm
from edge_runtime.weights import Weights, check_weights

_SHRINK_TRIES = 4


def flatten(update: Mapping[str, np.ndarray], specs: tuple[WeightSpec, ...]) -> np.ndarray:
    """The update as one float32 vector, its tensors in ``specs``' order (checked against them first)."""
    checked = check_weights(update, specs)
    if not specs:
        return np.zeros(0, np.float32)
    return np.concatenate([np.ravel(checked[spec.name]) for spec in specs]).astype(np.float32, copy=False)


def unflatten(x: np.ndarray, specs: tuple[WeightSpec, ...]) -> Weights:
    out: Weights = {}
    start = 0
    for spec in specs:
        size = math.prod(spec.shape)
        out[spec.name] = x[start: start + size].reshape(spec.shape)
        start += size
    return out


@dataclass(frozen=True)
class FlatCodec:
    """A ``VectorCodec`` applied to the flattened update.

    Every vector codec here decodes a vector of norm at most ``bound`` to one of
    norm at most ``bound`` in expectation or always; where stochastic rounding
    carries the decoded norm over the bound (an update clipped right at it), the
    device shrinks the scales by the ratio before sending. So the coordinator's
    norm check needs no more slack than float32's rounding.
    """

    name: str
    vector: VectorCodec

    @property
    def feedback(self) -> bool:
        return self.vector.biased

    def encode(self, update: Mapping[str, np.ndarray], specs: tuple[WeightSpec, ...], seed: int,
               bound: float) -> Encoded:
        x = flatten(update, specs)
        rng = np.random.default_rng(seed)
        tensors = self.vector.encode(x, rng, seed)
        decoded = self.vector.decode(tensors, x.size, seed)
        for _ in range(_SHRINK_TRIES):
            norm = l2_norm({"x": decoded})
            if norm <= bound:
                break
            tensors = self.vector.scaled(tensors, bound / norm * (1 - 1e-6))
            decoded = self.vector.decode(tensors, x.size, seed)
        else:
            raise WeightsError(f"codec {self.name} could not keep the update within the bound {bound:g}")
        return Encoded(tensors, unflatten(decoded, specs))

    def decode(self, tensors: Mapping[str, np.ndarray], specs: tuple[WeightSpec, ...], seed: int) -> Weights:
        n = sum(math.prod(spec.shape) for spec in specs)
        check_layout(tensors, self.vector.layout(n), self.name)
        with np.errstate(over="ignore", invalid="ignore"):  # huge scales: refused just below, not warned about
            x = self.vector.decode(tensors, n, seed)
        if not np.all(np.isfinite(x)):
            raise WeightsError(f"decodes to values beyond float32's range (codec {self.name}); its scales are too "
                               "large for any clipped update")
        return unflatten(x, specs)

    def max_norm(self, bound: float, parameter_count: int) -> float:
        return bound * (1.0 + FLOAT32_NORM_TOLERANCE)

    def payload_limit(self, parameter_count: int) -> int:
        return nbytes(self.vector.layout(parameter_count)) + HEADER_BYTES
