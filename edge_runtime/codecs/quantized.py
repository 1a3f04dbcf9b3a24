"""``int8`` and ``int4``: unbiased stochastic rounding with a float32 scale per block of 256 values.

A block's scale is its largest magnitude divided by the largest level (127 or
7), so its values map into [-L, L]; each value goes to one of its two
neighbouring levels, the upper with probability equal to its distance from the
lower: the decoded value's expectation is the value itself. int8 sends one
byte per value; int4 packs two values per byte, low nibble first, each as
level + 8 (1-15; nibble 0 is refused).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edge_runtime.codecs.base import Layout, blocks, check_scales
from edge_runtime.errors import WeightsError
from edge_runtime.weights import Weights

BLOCK = 256


@dataclass(frozen=True)
class Quantized:
    bits: int
    block: int = BLOCK
    biased = False

    @property
    def levels(self) -> int:
        return int(2 ** (self.bits - 1) - 1)

    def layout(self, n: int) -> Layout:
        q = ("int8", (n,)) if self.bits == 8 else ("uint8", (blocks(n, 2),))
        return {"q": q, "scales": ("float32", (blocks(n, self.block),))}

    def encode(self, x: np.ndarray, rng: np.random.Generator, seed: int) -> Weights:
        n = x.size
        padded = np.zeros(blocks(n, self.block) * self.block, np.float32)
        padded[:n] = x
        grid = padded.reshape(-1, self.block)
        scales = (np.max(np.abs(grid), axis=1) / np.float32(self.levels)).astype(np.float32)
        safe = np.where(scales > 0, scales, np.float32(1))[:, None]
        levels = np.floor(grid / safe + rng.random(grid.shape, np.float32))
        q = np.clip(levels, -self.levels, self.levels).astype(np.int8).ravel()[:n]
        return {"q": q if self.bits == 8 else _pack_nibbles(q), "scales": scales}

    def decode(self, tensors: Mapping[str, np.ndarray], n: int, seed: int) -> np.ndarray:
        scales = tensors["scales"]
        check_scales(scales, "scales")
        q = tensors["q"] if self.bits == 8 else _unpack_nibbles(tensors["q"], n)
        if q.size and int(np.max(np.abs(q.astype(np.int16)))) > self.levels:
            raise WeightsError(f"holds a level beyond +-{self.levels} (codec int{self.bits})", "q")
        out: np.ndarray = q.astype(np.float32) * np.repeat(scales, self.block)[:n]
        return out

    def scaled(self, tensors: Mapping[str, np.ndarray], factor: float) -> Weights:
        return {"q": tensors["q"], "scales": (tensors["scales"] * np.float32(factor)).astype(np.float32)}


def _pack_nibbles(q: np.ndarray) -> np.ndarray:
    nibbles = (q.astype(np.int16) + 8).astype(np.uint8)
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(8))  # a level-0 pad
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def _unpack_nibbles(packed: np.ndarray, n: int) -> np.ndarray:
    nibbles = np.empty(packed.size * 2, np.uint8)
    nibbles[0::2] = packed & 0x0F
    nibbles[1::2] = packed >> 4
    if n % 2 and nibbles[-1] != 8:
        raise WeightsError("its padding nibble is not level 0 (8)", "q")
    nibbles = nibbles[:n]
    if nibbles.size and int(nibbles.min()) == 0:
        raise WeightsError("holds nibble 0 (level -8); expected levels -7..7 as nibbles 1..15", "q")
    return (nibbles.astype(np.int16) - 8).astype(np.int8)
