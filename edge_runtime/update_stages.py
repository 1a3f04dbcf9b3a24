"""The device's side of the update pipeline, without I/O or threads: delta -> clip -> stages -> encode.

``UpdatePipeline.encode`` turns the weights a task's training produced into
the payload the device publishes: the difference local - global, clipped to
the task's bound, passed through the injected ``UpdateStage``s in order, then
encoded with the codec the task names (with error feedback when the codec is
biased, ``edge_runtime.feedback``), behind an ``UpdateHeader`` that names
that codec and the examples the update may weigh (capped by the task).

Later stages (local noise, masking) plug in as stages. A
stage runs after clipping and must keep the update within the clipping bound,
after the codec's rounding too: the coordinator refuses an update whose norm
is above the bound plus the codec's slack (``Codec.max_norm``). The one
exception is local DP's noise (``edge_runtime.local_dp``): the header then
declares its multiplier and both sides use the noised bound instead. A physical
device passes no stage and no ``DataTransform``; an emulator injects them to
play a device that behaves differently (``device_profiles.attacks``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from edge_runtime.codecs import get_codec
from edge_runtime.codecs.flat import flatten
from edge_runtime.data import Dataset
from edge_runtime.feedback import encode_with_feedback
from edge_runtime.local_dp import noised_bound
from edge_runtime.manifest import Manifest, WeightSpec
from edge_runtime.protocol import TrainTask, UpdateHeader, encode_tensors
from edge_runtime.updates import clip, difference
from edge_runtime.weights import Weights

if TYPE_CHECKING:  # secure aggregation needs the cryptography package, imported only for a secure round
    from edge_runtime.secagg.session import DeviceSession


class UpdateStage(Protocol):
    def __call__(self, update: Weights, task: TrainTask) -> Weights:
        """The update to send instead of ``update`` (clipped to ``task.clip_norm``): same tensor names and
        shapes, float32, and an L2 norm still within ``task.clip_norm``."""
        ...


class DataTransform(Protocol):
    def __call__(self, data: Dataset, manifest: Manifest) -> Dataset:
        """The examples to train and evaluate on instead of ``data`` (already checked against ``manifest``)."""
        ...


@dataclass(frozen=True)
class EncodedUpdate:
    header: UpdateHeader
    payload: bytes  # what the device publishes on its update topic
    residual: Weights | None = None  # error feedback to keep once it is sent (None: keep the previous one)


def reported_examples(examples: int, task: TrainTask) -> int:
    """The example count an update claims: the device's own, capped by the task's ``max_examples`` if it has one."""
    return min(examples, task.max_examples) if task.max_examples else examples


@dataclass(frozen=True)
class UpdatePipeline:
    """The steps from trained weights to an update payload, with ``stages`` run in order after clipping."""

    stages: tuple[UpdateStage, ...] = ()

    @classmethod
    def of(cls, stages: Sequence[UpdateStage]) -> UpdatePipeline:
        return cls(tuple(stages))

    @property
    def local_noise(self) -> float:
        """The noise multiplier of the local DP stage (``edge_runtime.local_dp.LocalGaussian``), 0 without one."""
        return float(sum(getattr(stage, "local_noise", 0.0) for stage in self.stages))

    def encode(self, device_id: str, task: TrainTask, local: Mapping[str, np.ndarray], base: Weights,
               examples: int, train_loss: float, residual: Weights | None = None) -> EncodedUpdate:
        """The payload for ``task``: ``local`` (the trainer's weights after training) against ``base`` (the
        global weights it started from); ``examples`` is the device's count, capped here; the header's norm is
        the difference's before clipping; ``residual``: the error feedback kept from the previous update."""
        update, norm, specs = self._staged(task, local, base)
        z = self.local_noise
        if z:  # local DP: nothing data-dependent travels in the clear, and the bound is the noised one
            header = UpdateHeader(device_id, task.task_id, task.round, task.model_version, 1, 0.0, 0.0, task.codec,
                                  local_noise=z)
        else:
            header = UpdateHeader(device_id, task.task_id, task.round, task.model_version,
                                  reported_examples(examples, task), train_loss, norm, task.codec)
        bound = noised_bound(task.clip_norm, z, sum(spec.size for spec in specs))
        fed = encode_with_feedback(get_codec(task.codec), update, residual, specs, task.seed, bound)
        return EncodedUpdate(header, encode_tensors(header, fed.encoded.tensors), fed.residual)

    def masked(self, task: TrainTask, local: Mapping[str, np.ndarray], base: Weights,
               session: DeviceSession) -> tuple[bytes, float]:
        """A secure round's payload (``edge_runtime.secagg.session``): the clipped update after the stages, flat in
        ``base``'s order (the manifest's, as a flat codec's), quantized and masked; and the norm before clipping,
        for the device's log only (nothing about one device travels in the clear)."""
        update, norm, specs = self._staged(task, local, base)
        flat = flatten(update, specs)
        header, tensors = session.masked_input(flat, task.clip_norm, task.model_version, np.random.default_rng())
        return encode_tensors(header, tensors), norm

    def _staged(self, task: TrainTask, local: Mapping[str, np.ndarray],
                base: Weights) -> tuple[Weights, float, tuple[WeightSpec, ...]]:
        """The update clipped to the task's bound and passed through the stages, its norm before clipping, and
        the specs of the travelling weights in ``base``'s order (the manifest's)."""
        update, norm = clip(difference(local, base), task.clip_norm)
        for stage in self.stages:
            update = stage(update, task)
        return update, norm, tuple(WeightSpec(name, value.shape) for name, value in base.items())
