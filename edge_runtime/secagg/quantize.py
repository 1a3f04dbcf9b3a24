"""Quantization whose sum survives secure aggregation.

Masks live in the integers mod 2**modulus_bits, so updates are turned into
integers first. Each coordinate is clamped to [-clip, clip] and mapped
affinely onto the levels 0..L, L = 2**value_bits - 1, with step
2·clip / L; it goes to one of its two neighbouring levels, the upper with
probability equal to its distance from the lower (floor(y + U), U uniform
in [0, 1)), so the decoded value's expectation is the clamped value itself.
The modular sum of ``count`` such vectors equals their integer sum as long
as count·L < 2**modulus_bits (``check_no_wrap``); ``dequantize_sum`` then
maps it back: total·step - count·clip.

Defaults: ``MODULUS_BITS = 32`` (uint32 arrays, 4 bytes a value on the
wire) and ``VALUE_BITS = 16``: a step of clip/32767.5, finer than float16,
leaving 16 bits of headroom, so up to 65,537 devices can be summed.
"""

from __future__ import annotations

import math

import numpy as np

from edge_runtime.secagg.errors import SecAggError
from edge_runtime.secagg.masks import dtype_for

VALUE_BITS = 16
MODULUS_BITS = 32
MAX_VALUE_BITS = 48  # float64 keeps the rounding fraction exact enough below this


def headroom_bits(count: int) -> int:
    """The bits a sum of ``count`` values needs beyond one value's: ceil(log2(count))."""
    _check_count(count)
    return (count - 1).bit_length()


def check_no_wrap(count: int, value_bits: int, modulus_bits: int) -> None:
    """Refuse a sum of ``count`` vectors of ``value_bits`` levels that could reach 2**modulus_bits."""
    _check_count(count)
    _check_bits(value_bits, modulus_bits)
    levels = 2**value_bits - 1
    if count * levels >= 2**modulus_bits:
        most = (2**modulus_bits - 1) // levels
        raise SecAggError("would_wrap", f"{count} vectors of {value_bits}-bit values can sum past 2**{modulus_bits}; "
                                        f"expected at most {most} devices, or fewer value bits")


def quantize(x: np.ndarray, clip: float, value_bits: int, modulus_bits: int,
             rng: np.random.Generator) -> np.ndarray:
    """``x`` clamped to [-clip, clip] and stochastically rounded to levels 0..2**value_bits - 1."""
    dtype = _check_bits(value_bits, modulus_bits)
    _check_clip(clip)
    if not isinstance(x, np.ndarray) or not np.issubdtype(x.dtype, np.floating):
        raise SecAggError("bad_value", f"expected an array of floats to quantize, got {getattr(x, 'dtype', type(x))}")
    if not np.all(np.isfinite(x)):
        raise SecAggError("bad_value", "the update holds NaN or infinity; expected finite values")
    levels = 2**value_bits - 1
    y = (np.clip(x.astype(np.float64), -clip, clip) + clip) * (levels / (2.0 * clip))
    q = np.floor(y + rng.random(y.shape))
    out: np.ndarray = np.clip(q, 0, levels, out=q).astype(dtype)
    return out


def dequantize_sum(total: np.ndarray, count: int, clip: float, value_bits: int, modulus_bits: int) -> np.ndarray:
    """The float64 sum of ``count`` vectors whose quantized values sum to ``total``."""
    dtype = _check_bits(value_bits, modulus_bits)
    _check_clip(clip)
    check_no_wrap(count, value_bits, modulus_bits)
    if not isinstance(total, np.ndarray) or total.dtype != dtype:
        raise SecAggError("bad_modulus", f"expected a sum of {dtype} for {modulus_bits} bits, "
                                         f"got {getattr(total, 'dtype', type(total))}")
    levels = 2**value_bits - 1
    if total.size and int(total.max()) > count * levels:
        raise SecAggError("bad_value", f"the sum holds {int(total.max())}, above {count} x {levels}: a device sent "
                                       "values out of range, or the masks did not cancel")
    out: np.ndarray = total.astype(np.float64) * step(clip, value_bits) - count * clip
    return out


def step(clip: float, value_bits: int) -> float:
    """The width of one level: what a quantized value may be off by, at most."""
    return float(2.0 * clip / (2**value_bits - 1))


def _check_bits(value_bits: int, modulus_bits: int) -> np.dtype[np.unsignedinteger]:
    dtype = dtype_for(modulus_bits)
    if isinstance(value_bits, bool) or not isinstance(value_bits, int) \
            or not 1 <= value_bits <= min(modulus_bits, MAX_VALUE_BITS):
        raise SecAggError("bad_modulus", f"value bits must be an int in 1..{min(modulus_bits, MAX_VALUE_BITS)} "
                                         f"for {modulus_bits} modulus bits, got {value_bits!r}")
    return dtype


def _check_clip(clip: float) -> None:
    if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not (math.isfinite(clip) and clip > 0):
        raise SecAggError("bad_value", f"clip must be a positive finite number, got {clip!r}")


def _check_count(count: int) -> None:
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SecAggError("bad_value", f"a device count must be a positive int, got {count!r}")
