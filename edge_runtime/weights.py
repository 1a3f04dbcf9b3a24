"""Named weight tensors: safetensors files and checks against a manifest."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load, save

from edge_runtime.errors import WeightsError
from edge_runtime.manifest import WeightSpec

Weights = dict[str, np.ndarray]


def weights_to_bytes(weights: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """``weights`` serialized as safetensors bytes."""
    arrays = {k: np.require(v, requirements="C") for k, v in weights.items()}  # keeps 0-d tensors 0-d
    content: bytes = save(arrays, metadata=dict(metadata or {}))
    return content


def save_weights(path: Path, weights: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``weights`` as safetensors, atomically (a reader never sees a half-written file)."""
    target = Path(path)
    content = weights_to_bytes(weights, metadata)
    partial = target.with_name(f".{target.name}.partial")
    partial.write_bytes(content)
    os.replace(partial, target)


def load_weights(path: Path) -> Weights:
    try:
        content = Path(path).read_bytes()
    except OSError as exc:
        raise WeightsError(f"cannot read safetensors file {path}: {exc}") from exc
    return weights_from_bytes(content, path)


def weights_from_bytes(content: bytes, source: object = "payload") -> Weights:
    """Parse safetensors bytes (never pickle); a malformed payload raises ``WeightsError``."""
    try:
        return load(content)
    except (SafetensorError, ValueError, KeyError, TypeError) as exc:  # KeyError: a dtype numpy lacks (BF16)
        raise WeightsError(f"cannot parse safetensors from {source}: {exc}") from exc


def select(weights: Mapping[str, np.ndarray], specs: tuple[WeightSpec, ...]) -> Weights:
    """The tensors of ``weights`` that ``specs`` name, in their order (``manifest.federated`` or ``.personal``)."""
    return {spec.name: weights[spec.name] for spec in specs}


def check_weights(weights: Mapping[str, np.ndarray], specs: tuple[WeightSpec, ...]) -> Weights:
    """Return ``weights`` as float32 arrays in manifest order, or raise naming the first problem.

    Rejects missing and unexpected names, wrong shapes, any dtype other than the
    manifest's (float32), and non-finite values.
    """
    expected = [s.name for s in specs]
    unexpected = sorted(set(weights) - set(expected))
    if unexpected:
        raise WeightsError(f"unexpected tensors {unexpected}; expected exactly {expected}")
    checked: Weights = {}
    for spec in specs:
        if spec.name not in weights:
            raise WeightsError(f"missing; expected shape {spec.shape} {spec.dtype}", spec.name)
        value = np.asarray(weights[spec.name])
        if value.shape != spec.shape:
            raise WeightsError(f"shape {value.shape}, expected {spec.shape}", spec.name)
        if value.dtype != np.dtype(spec.dtype):
            raise WeightsError(f"dtype {value.dtype}, expected {spec.dtype}", spec.name)
        if not np.all(np.isfinite(value)):
            raise WeightsError("contains NaN or Inf", spec.name)
        checked[spec.name] = value
    return checked
