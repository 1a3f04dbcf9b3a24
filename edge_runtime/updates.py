"""Model updates: the difference local - global, its L2 norm, and clipping to a norm bound.

The device computes and clips an update here; the coordinator checks the same
norm (with the slack its codec's rounding adds, ``Codec.max_norm``), so both
sides agree on what "within the bound" means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from edge_runtime.weights import Weights


def difference(local: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray]) -> Weights:
    """``local - base`` per tensor, in ``base``'s order, as float32."""
    return {name: (np.asarray(local[name], np.float32) - value).astype(np.float32) for name, value in base.items()}


def l2_norm(tensors: Mapping[str, np.ndarray]) -> float:
    """The L2 norm of all tensors taken together, accumulated in float64."""
    # einsum accumulates in float64 without materialising float64 copies of the tensors.
    return math.sqrt(sum(float(np.einsum("i,i->", flat, flat, dtype=np.float64))
                         for flat in (np.ravel(t) for t in tensors.values())))


def clip(update: Mapping[str, np.ndarray], bound: float) -> tuple[Weights, float]:
    """``update`` scaled down to L2 norm ``bound`` if it is longer; returns it and its norm before clipping."""
    norm = l2_norm(update)
    scale = 1.0 if norm <= bound else bound / norm
    return {name: (value * np.float32(scale)).astype(np.float32) for name, value in update.items()}, norm

