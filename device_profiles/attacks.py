"""Emulated attackers (``edgefl fleet --attack KIND:FRACTION``): real agents with a hostile update step.

A hostile device runs the same ``DeviceAgent`` as every other one; what it
sends differs only through what ``edge_runtime.update_stages`` lets a device
inject: ``UpdateStage``s run after clipping, and a ``DataTransform`` of its
local data. Kinds:

- ``sign-flip``: the honest update negated, at the clipping bound;
- ``scale``: the honest update's direction, at the clipping bound;
- ``label-flip``: trains on labels shifted by one class (y -> (y + 1) mod classes, a fixed derangement) and
  sends that update as an honest device would;
- ``noise``: Gaussian noise at the clipping bound, drawn from the seed, the device and the round.

An update sent "at the bound" has norm ``bound * (1 - MARGIN)``: the float32
rounding of the scaled values cannot push it past the coordinator's norm
check. Which devices attack is drawn from the seed: exactly ``fraction *
devices`` of them, rounded half up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from device_profiles.availability import draw
from edge_runtime.data import Dataset
from edge_runtime.manifest import Manifest
from edge_runtime.protocol import TrainTask
from edge_runtime.update_stages import DataTransform, UpdateStage
from edge_runtime.updates import l2_norm
from edge_runtime.weights import Weights

ATTACK_KINDS = ("sign-flip", "scale", "label-flip", "noise")
ATTACK_FORMAT = f"KIND:FRACTION with KIND one of {', '.join(ATTACK_KINDS)} and FRACTION in [0, 1), e.g. sign-flip:0.1"
MARGIN = 1e-6  # relative: float32 rounding moves a norm by about 6e-8, the coordinator allows 1e-5 over
_ATTACKER = 7  # the draw() channel that picks attackers (availability uses 1-4, drop-outs 5, time zones 6)
_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class AttackSpec:
    """``KIND:FRACTION``: that fraction of a fleet's devices run attack ``KIND``."""

    kind: str
    fraction: float

    @classmethod
    def parse(cls, text: str) -> AttackSpec:
        """Parse ``KIND:FRACTION``; a ``ValueError`` says what was expected."""
        kind, sep, tail = text.partition(":")
        try:
            fraction = float(tail)
        except ValueError:
            fraction = math.nan
        if not sep or kind not in ATTACK_KINDS or not 0 <= fraction < 1:
            raise ValueError(f"expected {ATTACK_FORMAT}, found {text!r}")
        return cls(kind, fraction)

    def count(self, devices: int) -> int:
        """How many of ``devices`` attack: ``fraction * devices`` rounded half up."""
        return math.floor(self.fraction * devices + 0.5)

    def attackers(self, devices: int, seed: int) -> frozenset[int]:
        """The indices of the attacking devices: the ``count`` with the smallest draws of this seed."""
        order = sorted(range(devices), key=lambda index: (draw(seed, index, 0, _ATTACKER), index))
        return frozenset(order[:self.count(devices)])


def rescaled(tensors: Mapping[str, np.ndarray], norm: float) -> Weights:
    """``tensors`` scaled to L2 norm ``abs(norm)`` (negated when ``norm < 0``), as float32; zeros stay zeros."""
    current = l2_norm(tensors)
    factor = norm / current if current > 0 else 0.0
    return {name: (np.asarray(value, np.float64) * factor).astype(np.float32) for name, value in tensors.items()}


def _at_bound(task: TrainTask) -> float:
    return task.clip_norm * (1.0 - MARGIN)


@dataclass(frozen=True)
class SignFlip:
    """Sends the honest update negated, at the clipping bound."""

    def __call__(self, update: Weights, task: TrainTask) -> Weights:
        return rescaled(update, -_at_bound(task))


@dataclass(frozen=True)
class ScaleUp:
    """Sends the honest update's direction at the clipping bound."""

    def __call__(self, update: Weights, task: TrainTask) -> Weights:
        return rescaled(update, _at_bound(task))


@dataclass(frozen=True)
class GaussianNoise:
    """Sends Gaussian noise at the clipping bound instead of the update; the same seed, device and round draw the
    same noise."""

    seed: int
    device: int

    def __call__(self, update: Weights, task: TrainTask) -> Weights:
        rng = np.random.default_rng((self.seed & _MASK, self.device, task.round))
        noise = {name: rng.standard_normal(np.shape(value)) for name, value in update.items()}
        return rescaled(noise, _at_bound(task))


@dataclass(frozen=True)
class ShiftedLabels:
    """The device's examples with every label moved to the next class (the last to class 0)."""

    def __call__(self, data: Dataset, manifest: Manifest) -> Dataset:
        return Dataset(data.x, ((data.y + 1) % manifest.num_classes).astype(data.y.dtype))


@dataclass(frozen=True)
class Hostile:
    """What an attacking device is given: stages for its updates and a transform of its data."""

    kind: str
    stages: tuple[UpdateStage, ...] = ()
    transform: DataTransform | None = None


def hostile(kind: str, seed: int, device: int) -> Hostile:
    """The injected parts of attack ``kind`` for device ``device`` of a run with ``seed``."""
    if kind == "sign-flip":
        return Hostile(kind, (SignFlip(),))
    if kind == "scale":
        return Hostile(kind, (ScaleUp(),))
    if kind == "label-flip":
        return Hostile(kind, transform=ShiftedLabels())
    if kind == "noise":
        return Hostile(kind, (GaussianNoise(seed, device),))
    raise ValueError(f"attack {kind!r} is not known; expected one of {', '.join(ATTACK_KINDS)}")
