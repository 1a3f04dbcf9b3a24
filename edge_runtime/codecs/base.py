"""What every codec provides, and the checks every decoder runs on untrusted tensors before it allocates."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edge_runtime.errors import WeightsError
from edge_runtime.manifest import WeightSpec
from edge_runtime.weights import Weights

HEADER_BYTES = 64 * 1024  # room for the safetensors header (tensor names, offsets, the message's metadata)
FLOAT32_NORM_TOLERANCE = 1e-5  # float32 rounding after scaling can land just above the bound
# name -> (dtype, shape): what a payload must hold, exactly.
Layout = dict[str, tuple[str, tuple[int, ...]]]


@dataclass(frozen=True)
class Encoded:
    """``tensors`` go on the wire; ``decoded`` is what the receiver's ``decode`` makes of them, float32."""

    tensors: Weights
    decoded: Weights


class Codec(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def feedback(self) -> bool:
        """Whether the codec is biased, so a device keeps what it dropped for its next update."""
        ...

    def encode(self, update: Mapping[str, np.ndarray], specs: tuple[WeightSpec, ...], seed: int,
               bound: float) -> Encoded:
        """The tensors to send for a float32 update of L2 norm at most ``bound``; its decoded norm stays within
        ``max_norm(bound)``. ``seed``: the task's, for anything both sides draw (raises ``WeightsError``)."""
        ...

    def decode(self, tensors: Mapping[str, np.ndarray], specs: tuple[WeightSpec, ...], seed: int) -> Weights:
        """The float32 update the tensors stand for, checked against ``specs`` before anything of the claimed size
        is allocated; raises ``WeightsError`` saying what is wrong."""
        ...

    def max_norm(self, bound: float, parameter_count: int) -> float:
        """The largest decoded L2 norm a device that clipped to ``bound`` can produce with this codec."""
        ...

    def payload_limit(self, parameter_count: int) -> int:
        """The largest payload this codec produces for a model of ``parameter_count`` parameters."""
        ...


class VectorCodec(Protocol):
    """Encodes one flat float32 vector (all of an update's tensors in manifest order) as named tensors;
    ``biased``: whether the decoded vector's expectation differs from the vector (error feedback applies)."""

    @property
    def biased(self) -> bool: ...

    def layout(self, n: int) -> Layout:
        """Every tensor, dtype and shape the encoding of a vector of ``n`` values has."""
        ...

    def encode(self, x: np.ndarray, rng: np.random.Generator, seed: int) -> Weights: ...

    def decode(self, tensors: Mapping[str, np.ndarray], n: int, seed: int) -> np.ndarray:
        """The vector; ``tensors`` already match ``layout(n)``, their values are checked here."""
        ...

    def scaled(self, tensors: Mapping[str, np.ndarray], factor: float) -> Weights:
        """The encoding of ``factor`` times the vector (``0 < factor < 1``): scales or values multiplied."""
        ...


def check_layout(tensors: Mapping[str, np.ndarray], layout: Layout, codec: str) -> None:
    """Names, dtypes and shapes exactly as ``layout`` says (a check of metadata only, nothing allocated)."""
    if set(tensors) != set(layout):
        raise WeightsError(f"codec {codec} sends tensors {sorted(layout)}; found {sorted(tensors)}")
    for name, (dtype, shape) in layout.items():
        value = tensors[name]
        if value.dtype != np.dtype(dtype) or value.shape != shape:
            raise WeightsError(f"{value.dtype}{list(value.shape)}, expected {dtype}{list(shape)} (codec {codec})",
                               name)


def check_scales(scales: np.ndarray, name: str) -> None:
    """Scales are finite and not negative."""
    if not np.all(np.isfinite(scales)):
        raise WeightsError("holds NaN or Inf; expected finite scales", name)
    if np.any(scales < 0):
        raise WeightsError("holds a negative scale; expected scales >= 0", name)


def blocks(n: int, size: int) -> int:
    return -(-n // size)


def nbytes(layout: Layout) -> int:
    total = 0
    for dtype, shape in layout.values():
        count = 1
        for dim in shape:
            count *= dim
        total += count * np.dtype(dtype).itemsize
    return total
