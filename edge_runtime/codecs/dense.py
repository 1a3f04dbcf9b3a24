"""Dense codecs: every tensor whole, in one floating-point dtype (``float32``, ``float16``); and the same as a
vector codec for the values topk keeps."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edge_runtime.codecs.base import FLOAT32_NORM_TOLERANCE, HEADER_BYTES, Encoded, Layout
from edge_runtime.errors import WeightsError
from edge_runtime.manifest import WeightSpec
from edge_runtime.weights import Weights, check_weights


def _cast(values: np.ndarray, dtype: str, name: str) -> np.ndarray:
    wire = np.dtype(dtype)
    limit = float(np.finfo(wire).max)
    array = np.asarray(values, np.float32)
    if array.size and float(np.max(np.abs(array))) > limit:
        raise WeightsError(f"holds values beyond {dtype}'s range ({limit:g}); use codec float32 or a smaller "
                           "clip-norm", name)
    return array.astype(wire)


@dataclass(frozen=True)
class DenseCodec:
    """Every tensor whole, in one floating-point dtype; decoded to float32. Unbiased up to rounding to nearest.

    ``relative_error`` bounds the rounding of one value (half a unit in the last
    place); ``smallest_step`` is the spacing of the dtype's subnormals, the
    absolute error of values too small to keep their relative precision.
    """

    name: str
    dtype: str
    relative_error: float
    smallest_step: float
    feedback: bool = False

    def encode(self, update: Mapping[str, np.ndarray], specs: tuple[WeightSpec, ...] = (), seed: int = 0,
               bound: float = math.inf) -> Encoded:
        tensors = {name: _cast(value, self.dtype, name) for name, value in update.items()}
        return Encoded(tensors, {name: value.astype(np.float32) for name, value in tensors.items()})

    def decode(self, tensors: Mapping[str, np.ndarray], specs: tuple[WeightSpec, ...], seed: int = 0) -> Weights:
        wire = np.dtype(self.dtype)
        for name, value in tensors.items():  # the payload limit already bounds what a cast can allocate
            if np.asarray(value).dtype != wire:
                raise WeightsError(f"dtype {np.asarray(value).dtype}, expected {self.dtype} (codec {self.name})", name)
        return check_weights({name: np.asarray(value).astype(np.float32, copy=False)
                              for name, value in tensors.items()}, specs)

    def max_norm(self, bound: float, parameter_count: int) -> float:
        # Each value moves by at most relative_error of itself, or smallest_step when it is subnormal.
        return bound * (1.0 + self.relative_error) + self.smallest_step * math.sqrt(parameter_count)

    def payload_limit(self, parameter_count: int) -> int:
        return parameter_count * np.dtype(self.dtype).itemsize + HEADER_BYTES


FLOAT32 = DenseCodec("float32", "float32", FLOAT32_NORM_TOLERANCE, 0.0)
# float16 keeps 11 significant bits (relative rounding error <= 2^-11); subnormals are spaced 2^-24 apart.
FLOAT16 = DenseCodec("float16", "float16", 2.0**-11 + FLOAT32_NORM_TOLERANCE, 2.0**-24)


@dataclass(frozen=True)
class DenseValues:
    """A vector as one tensor ``values`` in ``dtype`` (what topk sends its kept values as, by default)."""

    dtype: str
    biased = False

    def layout(self, n: int) -> Layout:
        return {"values": (self.dtype, (n,))}

    def encode(self, x: np.ndarray, rng: np.random.Generator, seed: int) -> Weights:
        return {"values": _cast(x, self.dtype, "values")}

    def decode(self, tensors: Mapping[str, np.ndarray], n: int, seed: int) -> np.ndarray:
        values = tensors["values"]
        if not np.all(np.isfinite(values)):
            raise WeightsError("contains NaN or Inf", "values")
        return values.astype(np.float32)

    def scaled(self, tensors: Mapping[str, np.ndarray], factor: float) -> Weights:
        return {"values": (tensors["values"] * np.asarray(factor, tensors["values"].dtype))}
