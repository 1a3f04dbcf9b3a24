"""Masks for secure aggregation: a seed stretched into a vector of integers mod 2**bits.

``expand`` is a cryptographic PRG (AES-256 in counter mode): without the seed,
its output cannot be told apart from uniform integers, so a masked update
``q + mask`` reveals nothing about ``q``; with the seed, anyone recomputes the
mask exactly, so pairwise masks cancel in the sum and rebuilt seeds remove
the rest. A seed must be used for one vector only (seeds are derived per
round): the counter always starts at zero.

The stream, for a client in another language: AES-256 with the 32-byte seed
as key, in CTR mode whose 16-byte initial counter block is all zeros and is
incremented as one big-endian 128-bit integer (Java's ``AES/CTR/NoPadding``
with a zero ``IvParameterSpec``), encrypting ``width * length`` zero bytes,
``width`` being 4 when ``modulus_bits <= 32`` and 8 above. Value ``i`` is the
bytes ``[width*i, width*(i+1))`` read as an unsigned little-endian integer,
keeping its low ``modulus_bits`` bits.
"""

from __future__ import annotations

import os

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from edge_runtime.secagg.errors import SecAggError, describe

SEED_BYTES = 32
MAX_MODULUS_BITS = 62
_ZERO_COUNTER = bytes(16)


def new_seed() -> bytes:
    """A fresh random 32-byte seed (a device's self-mask seed)."""
    return os.urandom(SEED_BYTES)


def dtype_for(modulus_bits: int) -> np.dtype[np.unsignedinteger]:
    """The array type of values mod ``2**modulus_bits``: uint32 up to 32 bits, uint64 up to 62."""
    if isinstance(modulus_bits, bool) or not isinstance(modulus_bits, int) \
            or not 1 <= modulus_bits <= MAX_MODULUS_BITS:
        raise SecAggError("bad_modulus", f"modulus bits must be an int in 1..{MAX_MODULUS_BITS}, got {modulus_bits!r}")
    return np.dtype(np.uint32 if modulus_bits <= 32 else np.uint64)


def expand(seed: bytes, length: int, modulus_bits: int) -> np.ndarray:
    """``length`` pseudorandom integers mod ``2**modulus_bits`` from ``seed`` (see the module doc for the bytes)."""
    dtype = dtype_for(modulus_bits)
    if not isinstance(seed, bytes) or len(seed) != SEED_BYTES:
        raise SecAggError("bad_seed", f"a mask seed is {SEED_BYTES} bytes, got {describe(seed)}")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise SecAggError("bad_length", f"a mask length must be a non-negative int, got {length!r}")
    size = dtype.itemsize * length
    out = bytearray(size + 15)  # update_into wants room for one block beyond the data
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_COUNTER)).encryptor()
    encryptor.update_into(bytes(size), out)
    values = np.frombuffer(out, dtype.newbyteorder("<"), count=length).astype(dtype, copy=False)
    if modulus_bits < 8 * dtype.itemsize:
        values &= dtype.type((1 << modulus_bits) - 1)
    return values


def add_mod(a: np.ndarray, b: np.ndarray, modulus_bits: int) -> np.ndarray:
    """``(a + b) mod 2**modulus_bits``, elementwise, for two arrays of ``dtype_for(modulus_bits)``."""
    dtype = _check_pair(a, b, modulus_bits)
    return _reduce(a + b, dtype, modulus_bits)


def sub_mod(a: np.ndarray, b: np.ndarray, modulus_bits: int) -> np.ndarray:
    """``(a - b) mod 2**modulus_bits``, elementwise, for two arrays of ``dtype_for(modulus_bits)``."""
    dtype = _check_pair(a, b, modulus_bits)
    return _reduce(a - b, dtype, modulus_bits)


def _reduce(values: np.ndarray, dtype: np.dtype[np.unsignedinteger], modulus_bits: int) -> np.ndarray:
    """Unsigned arithmetic wraps mod 2**32 or 2**64; keeping the low bits finishes the reduction."""
    if modulus_bits < 8 * dtype.itemsize:
        values &= dtype.type((1 << modulus_bits) - 1)
    return values


def _check_pair(a: np.ndarray, b: np.ndarray, modulus_bits: int) -> np.dtype[np.unsignedinteger]:
    dtype = dtype_for(modulus_bits)
    for name, array in (("a", a), ("b", b)):
        if not isinstance(array, np.ndarray) or array.dtype != dtype:
            found = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
            raise SecAggError("bad_modulus", f"{name} must be an array of {dtype} for {modulus_bits} bits, got {found}")
    if a.shape != b.shape:
        raise SecAggError("bad_length", f"arrays of different shapes: {a.shape} and {b.shape}")
    return dtype
