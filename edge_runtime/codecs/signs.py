"""``sign`` and ``rotated-sign``: one bit per value and a float32 scale per block.

``sign``: a value >= 0 is bit 1 and decodes to ``+s``, a negative one is bit 0
and decodes to ``-s``, ``s`` its block's mean magnitude (blocks of 1024
values). With ``s = ||x_b||_1 / m`` for a block of ``m`` values, the decoded
block has norm ``||x_b||_1 / sqrt(m) <= ||x_b||_2``: it never lengthens an
update. It is biased (the scale minimizes the error, it does not remove its
mean): devices use error feedback with it.

``rotated-sign`` (after DRIVE and EDEN, Vargaftik et al. 2021-2022): the signs
of the update rotated by ``edge_runtime.codecs.rotation``, block by block,
decoded by the inverse rotation; rotating first spreads the update's energy
evenly, so one bit per coordinate loses less whatever the update looks like.
Its scale is EDEN's ``||y_b||_2^2 / ||y_b||_1``, which makes the decoding
unbiased over the random rotation: the devices' errors average out in the
round's mean, with no residual to keep. That scale lengthens a block (by about
sqrt(pi/2) for Gaussian-like values); an update it carries over the bound is
shrunk to it by ``FlatCodec``, as for int8.

Bits are packed eight per byte, most significant first; padding bits are 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edge_runtime.codecs.base import Layout, blocks, check_scales
from edge_runtime.codecs.rotation import block_size, rotate, unrotate
from edge_runtime.errors import WeightsError
from edge_runtime.weights import Weights

SIGN_BLOCK = 1024


def _pack(grid: np.ndarray, n: int) -> np.ndarray:
    return np.packbits(grid.ravel()[:n] >= 0)


def _unpack(bits: np.ndarray, n: int) -> np.ndarray:
    """+1/-1 per value; the padding bits of the last byte must be 0."""
    flat = np.unpackbits(bits)
    if np.any(flat[n:]):
        raise WeightsError(f"padding bits after the {n} values are not 0", "bits")
    return (2.0 * flat[:n] - 1.0).astype(np.float32)


def _scales(grid: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return (np.sum(np.abs(grid), axis=1, dtype=np.float64) / counts).astype(np.float32)


@dataclass(frozen=True)
class Signs:
    block: int = SIGN_BLOCK
    biased = True

    def layout(self, n: int) -> Layout:
        return {"bits": ("uint8", (blocks(n, 8),)), "scales": ("float32", (blocks(n, self.block),))}

    def encode(self, x: np.ndarray, rng: np.random.Generator, seed: int) -> Weights:
        padded = np.zeros(blocks(x.size, self.block) * self.block, np.float32)
        padded[: x.size] = x
        grid = padded.reshape(-1, self.block)
        counts = np.minimum(self.block, x.size - self.block * np.arange(grid.shape[0]))
        return {"bits": _pack(grid, x.size), "scales": _scales(grid, counts)}

    def decode(self, tensors: Mapping[str, np.ndarray], n: int, seed: int) -> np.ndarray:
        check_scales(tensors["scales"], "scales")
        out: np.ndarray = _unpack(tensors["bits"], n) * np.repeat(tensors["scales"], self.block)[:n]
        return out

    def scaled(self, tensors: Mapping[str, np.ndarray], factor: float) -> Weights:
        return {"bits": tensors["bits"], "scales": (tensors["scales"] * np.float32(factor)).astype(np.float32)}


@dataclass(frozen=True)
class RotatedSigns:
    """``unbiased``: each block's scale is ``||y_b||^2 / ||y_b||_1`` (EDEN, Vargaftik et al. 2022), whose decoding
    is unbiased over the random rotation, so many devices' errors average out without error feedback; otherwise
    ``||y_b||_1 / B`` (DRIVE's least-error scale), biased, with feedback."""

    unbiased: bool = True

    @property
    def biased(self) -> bool:
        return not self.unbiased

    def layout(self, n: int) -> Layout:
        size = block_size(n)
        count = blocks(n, size)
        return {"bits": ("uint8", (blocks(count * size, 8),)), "scales": ("float32", (count,))}

    def encode(self, x: np.ndarray, rng: np.random.Generator, seed: int) -> Weights:
        size = block_size(x.size)
        y = rotate(x, seed, size)
        l1 = np.sum(np.abs(y), axis=1, dtype=np.float64)
        if self.unbiased:
            energy = np.sum(np.square(y, dtype=np.float64), axis=1)
            scales = np.divide(energy, l1, out=np.zeros_like(l1), where=l1 > 0).astype(np.float32)
        else:
            scales = (l1 / size).astype(np.float32)
        return {"bits": _pack(y, y.size), "scales": scales}

    def decode(self, tensors: Mapping[str, np.ndarray], n: int, seed: int) -> np.ndarray:
        check_scales(tensors["scales"], "scales")
        size = block_size(n)
        scales = tensors["scales"]
        y = _unpack(tensors["bits"], scales.size * size).reshape(-1, size) * scales[:, None]
        return unrotate(y.astype(np.float32), seed, n)

    def scaled(self, tensors: Mapping[str, np.ndarray], factor: float) -> Weights:
        return {"bits": tensors["bits"], "scales": (tensors["scales"] * np.float32(factor)).astype(np.float32)}
