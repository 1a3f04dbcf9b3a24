"""A seeded randomized Hadamard rotation, blockwise: ``y = H·D·x / sqrt(B)`` for each block of ``B`` values.

``H`` is the ``B x B`` Walsh-Hadamard matrix (``B`` a power of two), ``D`` a
diagonal of random signs. ``H / sqrt(B)`` is orthonormal and its own inverse,
so ``x = D·H·y / sqrt(B)``. The signs are a stream both sides derive from the
task's seed, written so any language can: SHA-256 of ``b"edgefl-rotation"``,
the seed as 8 bytes little-endian and a block counter as 4 bytes little-endian
(0, 1, ...), concatenated; bit ``j`` of the stream (most significant bit of
each byte first) is the sign of coordinate ``j``, 1 meaning -1.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

MAX_BLOCK = 1024
_DOMAIN = b"edgefl-rotation"


def block_size(n: int) -> int:
    """The rotation's block: the next power of two at or above ``n``, at most ``MAX_BLOCK``."""
    size = 1
    while size < min(max(n, 1), MAX_BLOCK):
        size *= 2
    return size


def random_signs(seed: int, count: int) -> np.ndarray:
    """``count`` float32 values of +1 or -1 from the seed's stream."""
    key = _DOMAIN + (seed % 2**64).to_bytes(8, "little")
    chunks = -(-count // 256)
    stream = b"".join(hashlib.sha256(key + i.to_bytes(4, "little")).digest() for i in range(chunks))
    bits = np.unpackbits(np.frombuffer(stream, np.uint8))[:count]
    return (1.0 - 2.0 * bits).astype(np.float32)


@functools.lru_cache(maxsize=16)
def sylvester(size: int) -> np.ndarray:
    """Sylvester's Hadamard matrix of order ``size`` (a power of two): ``H_2k = [[H_k, H_k], [H_k, -H_k]]``."""
    h = np.ones((1, 1), np.float32)
    while h.shape[0] < size:
        h = np.block([[h, h], [h, -h]])
    return h


def hadamard(grid: np.ndarray) -> np.ndarray:
    """The unnormalized Walsh-Hadamard transform of each row of ``grid`` (rows of a power-of-two length).

    Sylvester's ``H_(a·b)`` is ``H_a ⊗ H_b``: a row reshaped to ``a x b`` (row-major) is transformed as
    ``H_a · X · H_b``, two small matrix products instead of log2(size) passes over the data.
    """
    rows, size = grid.shape
    a = 1 << ((size.bit_length() - 1) // 2)
    b = size // a
    square = grid.astype(np.float32, copy=False).reshape(rows, a, b)
    out: np.ndarray = (sylvester(a) @ square @ sylvester(b)).reshape(rows, size)
    return out


def rotate(x: np.ndarray, seed: int, size: int) -> np.ndarray:
    """``x`` padded with zeros to whole blocks and rotated: shape (blocks, size)."""
    padded = np.zeros(-(-x.size // size) * size, np.float32)
    padded[: x.size] = x
    padded *= random_signs(seed, padded.size)
    return hadamard(padded.reshape(-1, size)) / np.float32(np.sqrt(size))


def unrotate(y: np.ndarray, seed: int, n: int) -> np.ndarray:
    """The first ``n`` values of the inverse rotation of ``y`` (shape (blocks, size))."""
    size = y.shape[1]
    x = hadamard(y).ravel() / np.float32(np.sqrt(size))
    out: np.ndarray = (x * random_signs(seed, x.size))[:n]
    return out
