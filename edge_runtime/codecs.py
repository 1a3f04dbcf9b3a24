"""Update codecs: how a clipped update travels from a device to the coordinator. Part of the wire protocol.

A codec is named in the training task and in the update's header; the device
encodes after clipping, the coordinator decodes before any other check. Each
codec declares the payload size it can produce (the coordinator's size limit
follows it) and the slack its rounding adds to an update's L2 norm (the
coordinator's norm check allows exactly that much over the clipping bound).

Registered here: ``float32`` (each tensor as it is, the bytes of protocol 1)
and ``float16`` (half the bytes; values above 65504 cannot be sent). Codecs
that compress further implement the same ``Codec`` protocol and are added to
``CODECS``; nothing in the round logic changes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge_runtime.errors import ProtocolError, WeightsError
from edge_runtime.manifest import WeightSpec
from edge_runtime.weights import Weights, check_weights

HEADER_BYTES = 64 * 1024  # room for the safetensors header (tensor names, offsets, the update's metadata)
FLOAT32_NORM_TOLERANCE = 1e-5  # float32 rounding after scaling can land just above the bound
UNKNOWN_CODEC = "unknown_codec"


class Codec(Protocol):
    @property
    def name(self) -> str: ...

    def encode(self, update: Mapping[str, np.ndarray]) -> Weights:
        """The tensors to send for a clipped float32 update (raises ``WeightsError`` if it cannot be sent)."""
        ...

    def decode(self, tensors: Mapping[str, np.ndarray], specs: tuple[WeightSpec, ...]) -> Weights:
        """The float32 update the tensors stand for, checked against the artifact; raises ``WeightsError``."""
        ...

    def max_norm(self, bound: float, parameter_count: int) -> float:
        """The largest decoded L2 norm a device that clipped to ``bound`` can produce with this codec."""
        ...

    def payload_limit(self, parameter_count: int) -> int:
        """The largest update payload this codec produces for a model of ``parameter_count`` parameters."""
        ...


@dataclass(frozen=True)
class DenseCodec:
    """Every tensor whole, in one floating-point dtype; decoded to float32.

    ``relative_error`` bounds the rounding of one value (half a unit in the last
    place); ``smallest_step`` is the spacing of the dtype's subnormals, the
    absolute error of values too small to keep their relative precision.
    """

    name: str
    dtype: str
    relative_error: float
    smallest_step: float

    def encode(self, update: Mapping[str, np.ndarray]) -> Weights:
        wire = np.dtype(self.dtype)
        limit = float(np.finfo(wire).max)
        out: Weights = {}
        for name, value in update.items():
            array = np.asarray(value, np.float32)
            if array.size and float(np.max(np.abs(array))) > limit:
                raise WeightsError(f"holds values beyond {self.dtype}'s range ({limit:g}); use codec float32 or "
                                   "a smaller clip-norm", name)
            out[name] = array.astype(wire)
        return out

    def decode(self, tensors: Mapping[str, np.ndarray], specs: tuple[WeightSpec, ...]) -> Weights:
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
CODECS: dict[str, Codec] = {codec.name: codec for codec in (FLOAT32, FLOAT16)}
DEFAULT_CODEC = FLOAT32.name


def get_codec(name: str) -> Codec:
    """The registered codec called ``name``; an unknown name is a ``ProtocolError`` listing the known ones."""
    codec = CODECS.get(name)
    if codec is None:
        raise ProtocolError(UNKNOWN_CODEC, f"codec {name!r} is not known; expected one of {sorted(CODECS)}")
    return codec
