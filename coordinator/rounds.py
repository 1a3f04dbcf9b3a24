"""One training round, without I/O: what is accepted, what is refused and why, and how it ends.

``OpenRound`` holds a plan (who was selected, for which model version, with
which codec for each device and which example cap, until when), decodes each
update with its sender's codec, checks it, folds accepted updates into the
strategy's accumulator, counts every refusal by reason, and the accepted
updates' bytes and codecs. ``close`` turns it into a
``RoundOutcome``: commit if at least ``min_reports`` updates arrived (the
strategy's ``apply`` then gives the next server state), otherwise abandon
and keep the model.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np

from coordinator.selection import derived_seed
from coordinator.server_state import ServerState
from coordinator.strategies import Diagnostics, Strategy
from coordinator.strategies.base import NormObserver, RoundContext, SumAccumulator
from edge_runtime.codecs import get_codec
from edge_runtime.codecs.flat import unflatten
from edge_runtime.errors import WeightsError
from edge_runtime.local_dp import noised_bound
from edge_runtime.manifest import WeightSpec
from edge_runtime.protocol import BAD_TENSORS, NON_FINITE, TaskFailed, UpdateHeader
from edge_runtime.updates import l2_norm
from edge_runtime.weights import Weights

Weighting = Literal["examples", "uniform"]
# A device's weight in a mean is its example count, capped here (docs/STRATEGIES.md says why 1024).
DEFAULT_MAX_EXAMPLES = 1024

# Reasons an update or message is refused; the round line counts rejections by these.
UNKNOWN_DEVICE = "unknown_device"
NOT_SELECTED = "not_selected"
IDENTITY_MISMATCH = "identity_mismatch"
WRONG_ROUND = "wrong_round"
LATE = "late"  # for a round that has closed: over-selected devices finishing after the goal was met
WRONG_TASK = "wrong_task"
WRONG_MODEL_VERSION = "wrong_model_version"
DUPLICATE = "duplicate"
BAD_METADATA = "bad_metadata"
NORM_EXCEEDED = "norm_exceeded"
NO_OPEN_ROUND = "no_open_round"
BAD_STATUS = "bad_status"
WRONG_CODEC = "wrong_codec"
EXAMPLES_EXCEEDED = "examples_exceeded"


@dataclass(frozen=True)
class RoundPlan:
    number: int
    task_id: str
    model_version: int
    selected: frozenset[str]
    eligible: int
    goal: int
    min_reports: int
    clip_norm: float
    deadline: float
    codec: str = "float32"  # the codec of every selected device that ``codecs`` does not name
    max_examples: int = DEFAULT_MAX_EXAMPLES
    weighting: Weighting = "examples"
    seed: int = 0  # the configured seed; a device's task seed is task_seed(seed, number, device)
    codecs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))  # device -> its task's codec

    def codec_of(self, device: str) -> str:
        """The codec ``device``'s task names, and its update must be encoded with."""
        return self.codecs.get(device, self.codec)


@dataclass
class Tally:
    """What a round saw, beyond the accepted updates: refusals, failures, traffic."""

    rejected: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    interrupted: Counter[str] = field(default_factory=Counter)
    bytes_in: int = 0
    bytes_out: int = 0
    bytes_up: int = 0  # payload bytes of the accepted updates
    bytes_up_float32: int = 0  # the same payloads had their tensors been float32 (parameters x 4 bytes each)
    codec_mix: Counter[str] = field(default_factory=Counter)  # accepted updates by codec
    bytes_down: int = 0  # what the selected devices download for their tasks: each one's task and the global model
    secure: dict[str, Any] | None = None  # a secure round's stages (coordinator.secure_round.PhaseCounts), if any


@dataclass(frozen=True)
class RoundOutcome:
    plan: RoundPlan
    status: Literal["committed", "abandoned", "stopped"]  # stopped: never began (central DP's budget was spent)
    closed_by: Literal["goal", "all_answered", "deadline", "stopped", "privacy_budget"]
    reported: int
    examples: int
    train_loss: float | None
    no_answer: int  # selected devices that sent neither an update nor a failure
    state: ServerState | None  # when committed: the strategy's result (counters not yet moved on)
    diagnostics: Diagnostics = field(default_factory=dict)


class OpenRound:
    def __init__(self, plan: RoundPlan, server: ServerState, specs: tuple[WeightSpec, ...],
                 strategy: Strategy[Any], tally: Tally | None = None) -> None:
        self.plan = plan
        self.tally = tally if tally is not None else Tally()
        self._server = server
        self._specs = specs
        self._parameters = sum(math.prod(spec.shape) for spec in specs)
        self._strategy = strategy
        context = RoundContext(plan.number, plan.goal, plan.eligible, len(plan.selected))
        self._accumulated = strategy.begin(server.weights, max(1, len(plan.selected)), context)
        # adaptive clipping's accumulator also wants each accepted update's norm before clipping
        self._norms = self._accumulated if isinstance(self._accumulated, NormObserver) else None
        self._reported = 0
        self._answered: set[str] = set()
        self._loss_sum = 0.0
        self._examples = 0

    @property
    def reported(self) -> int:
        return self._reported

    @property
    def goal_reached(self) -> bool:
        return self.reported >= self.plan.goal

    @property
    def answered(self) -> frozenset[str]:
        """The selected devices that sent an update or said they could not."""
        return frozenset(self._answered)

    @property
    def all_answered(self) -> bool:
        return self.plan.selected <= self._answered

    def offer_update(self, sender: str, known: bool, header: UpdateHeader, tensors: Mapping[str, np.ndarray],
                     payload_bytes: int = 0) -> str | None:
        """Accept an update into the aggregate, or return the reason it is refused (changing nothing).

        ``payload_bytes``: the size of the message it came in, counted in the tally when it is accepted."""
        reason = self._refusal(sender, known, header.device_id, header.round, header.task_id)
        if reason is None and header.model_version != self.plan.model_version:
            reason = WRONG_MODEL_VERSION
        if reason is None and (header.examples <= 0 or not math.isfinite(header.train_loss)):
            reason = BAD_METADATA
        if reason is None and header.examples > self.plan.max_examples:
            reason = EXAMPLES_EXCEEDED
        codec = self.plan.codec_of(sender)
        if reason is None and header.codec != codec:
            reason = WRONG_CODEC
        checked: Weights = {}
        if reason is None:
            reason, checked = self._check_tensors(tensors, codec, task_seed(self.plan.seed, self.plan.number, sender),
                                                  header.local_noise)
        if reason is not None:
            self.tally.rejected[reason] += 1
            return reason
        self._count(codec, tensors, payload_bytes)
        weight = float(header.examples) if self.plan.weighting == "examples" else 1.0
        self._accumulated.add(checked, weight)
        if self._norms is not None:
            self._norms.observe_norm(header.norm)
        self._reported += 1
        self._answered.add(sender)
        self._loss_sum += header.train_loss * header.examples
        self._examples += header.examples
        return None

    def offer_sum(self, total: np.ndarray, devices: frozenset[str], step: float) -> str | None:
        """Accept the unmasked sum of the updates of ``devices`` (secure aggregation; flat, in manifest order), each
        weighing 1, or return why it is refused. Each update was quantized in steps of ``step``; the sum's norm must be
        within ``count`` bounds plus that rounding, which catches a device that filled every coordinate up to the
        bound (L-infinity instead of L2): the coordinator cannot check one update alone."""
        count = len(devices)
        if not np.all(np.isfinite(total)):
            self.tally.rejected[NON_FINITE] += 1
            return NON_FINITE
        slack = count * step * math.sqrt(self._parameters)
        if not float(np.linalg.norm(total)) <= count * self.plan.clip_norm * (1 + 1e-5) + slack:
            self.tally.rejected[NORM_EXCEEDED] += 1
            return NORM_EXCEEDED
        tensors = unflatten(total, self._specs)
        accumulated = self._accumulated
        if not isinstance(accumulated, SumAccumulator):
            raise TypeError(f"strategy {self._strategy.name} cannot take a sum of updates (secure aggregation)")
        accumulated.add_sum(tensors, count)
        self._reported += count
        self._answered |= devices
        return None

    def _check_tensors(self, tensors: Mapping[str, np.ndarray], name: str, seed: int,
                       local_noise: float = 0.0) -> tuple[str | None, Weights]:
        """Decode with the task's codec, then check: finite, the artifact's names and shapes, within the bound (the
        noised one, ``edge_runtime.local_dp.noised_bound``, for an update declaring local noise)."""
        if has_non_finite(tensors):  # before decoding, which would refuse NaN too but under another reason
            return NON_FINITE, {}
        codec = get_codec(name)  # cached: one codec object per name
        try:
            checked = codec.decode(tensors, self._specs, seed)
        except WeightsError:
            return BAD_TENSORS, {}
        bound = noised_bound(self.plan.clip_norm, local_noise, self._parameters)
        if not l2_norm(checked) <= codec.max_norm(bound, self._parameters):  # NaN fails too
            return NORM_EXCEEDED, {}
        return None, checked

    def _count(self, codec: str, tensors: Mapping[str, np.ndarray], payload_bytes: int) -> None:
        """An accepted update's traffic: its payload, and that payload with float32 tensors (its compression)."""
        tally = self.tally
        tally.bytes_up += payload_bytes
        tensor_bytes = sum(np.asarray(t).nbytes for t in tensors.values())
        tally.bytes_up_float32 += payload_bytes - tensor_bytes + 4 * self._parameters
        tally.codec_mix[codec] += 1

    def offer_failure(self, sender: str, known: bool, message: TaskFailed) -> str | None:
        """Count a device's report that it could not finish its task."""
        reason = self._refusal(sender, known, message.device_id, message.round, message.task_id)
        if reason is not None:
            self.tally.rejected[reason] += 1
            return reason
        self._answered.add(sender)
        counter = self.tally.interrupted if message.outcome == "interrupted" else self.tally.failed
        counter[message.reason] += 1
        return None

    def _refusal(self, sender: str, known: bool, claimed: str, round_number: int, task_id: str) -> str | None:
        if claimed != sender:
            return IDENTITY_MISMATCH
        if not known:
            return UNKNOWN_DEVICE
        if round_number < self.plan.number:
            return LATE
        if round_number != self.plan.number:
            return WRONG_ROUND
        if sender not in self.plan.selected:
            return NOT_SELECTED
        if task_id != self.plan.task_id:
            return WRONG_TASK
        if sender in self._answered:
            return DUPLICATE
        return None

    def close(self, closed_by: Literal["goal", "all_answered", "deadline", "stopped"]) -> RoundOutcome:
        commit = self.reported >= self.plan.min_reports and closed_by != "stopped"
        state, diagnostics = self._strategy.apply(self._server, self._accumulated) if commit else (None, {})
        loss = self._loss_sum / self._examples if self._examples else None
        return RoundOutcome(
            self.plan, "committed" if commit else "abandoned", closed_by, self.reported, self._examples,
            loss,
            len(self.plan.selected - self._answered), state, diagnostics,
        )


def task_seed(seed: int, round_number: int, device: str) -> int:
    """A device's seed for a round (its data shuffling, its codec's draws), reproducible from the configured seed."""
    return derived_seed(seed, round_number, device)


def has_non_finite(tensors: Mapping[str, np.ndarray]) -> bool:
    """Whether any floating-point tensor holds NaN or Inf."""
    return any(np.asarray(value).dtype.kind == "f" and not np.all(np.isfinite(value)) for value in tensors.values())
