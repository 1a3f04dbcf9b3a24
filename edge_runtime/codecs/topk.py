"""``topk:FRACTION[+VALUES]``: the ``k = ceil(FRACTION·n)`` values largest in magnitude, as their positions and
their values (after Deep Gradient Compression, Lin et al. 2018; with ``+sign`` it is close to Sattler et al.'s
sparse ternary compression).

``indices`` is uint16[k] when ``n <= 65536`` (uint32[k] above), strictly increasing, each below ``n``; the values
follow in the same order, encoded by the composed vector codec (float32 unless
named). Everything not sent is what the device's error feedback keeps.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edge_runtime.codecs.base import Layout, VectorCodec
from edge_runtime.errors import WeightsError
from edge_runtime.weights import Weights


def index_dtype(n: int) -> str:
    """Positions fit 16 bits up to 65,536 values."""
    return "uint16" if n <= 1 << 16 else "uint32"


@dataclass(frozen=True)
class TopK:
    fraction: float
    values: VectorCodec
    biased = True

    def kept(self, n: int) -> int:
        return min(n, max(1, math.ceil(self.fraction * n))) if n else 0

    def layout(self, n: int) -> Layout:
        k = self.kept(n)
        return {"indices": (index_dtype(n), (k,)), **self.values.layout(k)}

    def encode(self, x: np.ndarray, rng: np.random.Generator, seed: int) -> Weights:
        k = self.kept(x.size)
        top = np.argpartition(np.abs(x), x.size - k)[x.size - k:] if k < x.size else np.arange(x.size)
        indices = np.sort(top).astype(index_dtype(x.size))
        return {"indices": indices, **self.values.encode(x[indices], rng, seed)}

    def decode(self, tensors: Mapping[str, np.ndarray], n: int, seed: int) -> np.ndarray:
        indices = tensors["indices"]
        if indices.size > 1 and not np.all(indices[1:] > indices[:-1]):
            raise WeightsError("is not strictly increasing (unsorted or duplicated indices)", "indices")
        if indices.size and int(indices[-1]) >= n:
            raise WeightsError(f"holds index {int(indices[-1])}; expected indices below {n}", "indices")
        values = self.values.decode({k: v for k, v in tensors.items() if k != "indices"}, indices.size, seed)
        out = np.zeros(n, np.float32)
        out[indices] = values
        return out

    def scaled(self, tensors: Mapping[str, np.ndarray], factor: float) -> Weights:
        inner = self.values.scaled({k: v for k, v in tensors.items() if k != "indices"}, factor)
        return {"indices": tensors["indices"], **inner}
