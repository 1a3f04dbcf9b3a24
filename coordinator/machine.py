"""The coordinator as a state machine without I/O: messages and time in, what to publish and save out.

``RoundMachine`` holds the device registry, the server state and the current
phase. Its three inputs are ``start``, ``receive`` (a message's topic and
bytes) and ``tick`` (time passing); each returns the effects to carry out,
in order: ``Publish`` (bytes to a topic), ``Save`` (checkpoint this state)
and ``Line`` (a round line). The MQTT layer (``coordinator.server``) only
moves bytes and carries out effects; a test drives the machine with no
broker at all.

Phases, in order: ``settling`` (retained device statuses arrive; tasks a
crashed predecessor left are withdrawn), ``fleet`` (until ``expect_devices``
devices hold the model), then per round ``waiting`` (enough eligible devices
and the round interval passed), ``training`` and, every ``eval_every``
committed rounds, ``evaluating``; finally ``finished``. A phase with more
steps (secure aggregation's key exchange and unmasking) is another phase
between ``training``'s tasks and its close.
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Literal, cast

from coordinator.codec_choice import AUTO, Choice, choose_codec
from coordinator.config import CoordinatorConfig
from coordinator.downlink import compress, downlink_codec, downlink_seed
from coordinator.evaluation import Metrics
from coordinator.evaluation_round import EvaluationRound
from coordinator.report import round_line
from coordinator.rounds import (
    BAD_STATUS,
    IDENTITY_MISMATCH,
    LATE,
    NO_OPEN_ROUND,
    WRONG_MODEL_VERSION,
    OpenRound,
    RoundOutcome,
    RoundPlan,
    Tally,
    Weighting,
    task_seed,
)
from coordinator.secure_round import Abandoned, SecureAggregation, new_params, secure_fields
from coordinator.selection import goal_count, select, selection_size
from coordinator.server_state import Arrays, ServerState
from coordinator.strategies import Strategy
from coordinator.strategies.base import Private, RoundContext
from edge_runtime.codecs import DEFAULT_CODEC
from edge_runtime.errors import ProtocolError
from edge_runtime.local_dp import DEFAULT_LOCAL_DELTA, local_epsilon
from edge_runtime.manifest import WeightSpec
from edge_runtime.protocol import (
    CoordinatorState,
    DeltaHeader,
    DeviceStatus,
    EvaluateTask,
    EvaluationReport,
    GlobalHeader,
    MaskedHeader,
    SecAggKeys,
    SecAggReveal,
    SecAggShares,
    TaskFailed,
    Topics,
    TrainTask,
    UpdateHeader,
    decode,
    decode_header,
    decode_tensors,
    encode,
    encode_tensors,
    weights_sha256,
)
from edge_runtime.secagg.quantize import step

log = logging.getLogger(__name__)
# After starting, the retained device statuses arrive in a burst: settling lasts at least SETTLE_S, then until no
# status has arrived for SETTLE_QUIET_S (a fleet of 10,000 takes longer than one of 10), at most SETTLE_MAX_S.
SETTLE_S, SETTLE_QUIET_S, SETTLE_MAX_S = 1.0, 0.5, 60.0
# A secure round's stages without training: keys close at 30% of the round timeout, shares at 45%, and unmasking
# has 30% more after the masked inputs close (fractions of the timeout: a fleet's clock may be simulated; a device
# busy loading its model answers its first task's key request late).
KEYS_UNTIL, SHARES_UNTIL, UNMASK_FOR = 0.3, 0.45, 0.3
Phase = Literal["settling", "fleet", "waiting", "training", "evaluating", "finished"]


@dataclass(frozen=True)
class Publish:
    topic: str
    payload: bytes
    retain: bool = True


@dataclass(frozen=True)
class Save:
    state: ServerState


@dataclass(frozen=True)
class Line:
    line: dict[str, Any]


Effect = Publish | Save | Line


@dataclass(frozen=True)
class Now:
    """``clock``: the coordinator's clock (deadlines, round interval; simulated in a fleet); ``real``: monotonic
    seconds (settling and the wait for the fleet, which are real work whatever the clock); ``wall``: seconds since
    the epoch, for the timestamps devices read."""

    clock: float
    real: float
    wall: float


@dataclass
class _Started:
    real: float
    clock: float
    outcome: RoundOutcome | None = None
    test: Metrics | None = None


class RoundMachine:
    def __init__(self, config: CoordinatorConfig, state: ServerState, strategy: Strategy[Any],
                 specs: tuple[WeightSpec, ...], bundle: bytes, *, payload_limit: int, task_lr: float,
                 evaluator: Callable[[Arrays], Metrics] | None = None, personal: bool = False,
                 new_id: Callable[[], str] = lambda: secrets.token_hex(8)) -> None:
        """``personal``: the artifact has personal weights, so devices report personalized sums too."""
        self.config = config
        self.state = state
        self.topics = Topics(config.federation)
        self.registry: dict[str, DeviceStatus] = {}
        self.phase: Phase = "settling"
        self._strategy, self._specs, self._bundle = strategy, specs, bundle
        self._limit, self._lr, self._evaluator, self._new_id = payload_limit, task_lr, evaluator, new_id
        self._personal = personal
        self._private = strategy if isinstance(strategy, Private) else None  # central DP's wrapper, if on
        # Under DP the selection must be unpredictable for the accountant's amplification by sampling (PRIVACY.md):
        # a secret seed per run, unless a test fixes the noise (and with it the draw).
        secret = self._private is not None and config.dp_test_seed is None
        self._selection_seed = secrets.randbits(63) if secret else config.seed
        if self._private is None and "privacy" in state.ledger:
            log.warning("the checkpoint's run had differential privacy and this one has not: its epsilon no longer "
                        "describes the models published from now on")
        self._downlink = downlink_codec(config.downlink_codec)  # None: every version travels in full only
        self._tally = Tally()  # counts for the next round line: that round, its evaluation, and the wait before it
        self._model_bytes = 0  # size of the global model's last payload
        self._delta_bytes = 0  # size of the retained delta to the current version (0: none)
        self._choices: dict[str, tuple[DeviceStatus, Choice]] = {}  # device -> (the status it was made on, choice)
        self._round: OpenRound | None = None
        self._secure: SecureAggregation | None = None  # the open round's secure aggregation, if it has one
        self._secure_until = 0.0  # the current secure stage's deadline (coordinator's clock)
        self._secure_closed_by: Literal["goal", "all_answered", "deadline"] = "deadline"  # its masked stage's
        self._evaluation: EvaluationRound | None = None
        self._started = _Started(0.0, 0.0)
        self._phase_until = 0.0  # fleet: real time the phase ends; training / evaluating: the deadline
        self._next_start = -float("inf")
        self._started_real = 0.0  # when start() was called (real time)
        self._last_status = -float("inf")  # when the last status arrived (real time)
        self._out: list[Effect] = []
        self._now = Now(0.0, 0.0, 0.0)

    @property
    def finished(self) -> bool:
        return self.phase == "finished"

    def eligible(self) -> list[str]:
        return sorted(d for d, s in self.registry.items() if s.online and s.eligible)

    def trainable(self) -> dict[str, str]:
        """The eligible devices that encode the codec their task would name, each with that codec (sorted)."""
        choices = self._codec_choices(self.eligible())
        secure = self.config.secure_aggregation
        return {device: choice.codec for device, choice in choices.items()
                if choice.codec is not None and (not secure or self.registry[device].secure_aggregation)}

    def _codec_choices(self, devices: list[str]) -> dict[str, Choice]:
        """Each device's codec choice, made again only when its status changed (this runs at every tick)."""
        config, cache, out = self.config, self._choices, {}
        for device in devices:
            status = self.registry[device]
            known = cache.get(device)
            if known is None or known[0] is not status:
                known = cache[device] = (status, choose_codec(config.codec, config.link_codecs, status))
            out[device] = known[1]
        return out

    def waiting_reason(self) -> str | None:
        """Why the next round cannot start for want of devices, as the operator should read it; None when it is
        not waiting for devices (a round runs, or only the round interval holds it back)."""
        if self.phase not in ("fleet", "waiting"):  # asked after every message: no walk over the fleet mid-round
            return None
        online = [s for s in self.registry.values() if s.online]
        number = self.state.next_round
        if self.phase == "fleet":
            return (f"round {number} waits for {self.config.expect_devices} devices to hold the model "
                    f"({self._holding_model()} do; {len(online)} online)")
        choices = self._codec_choices(self.eligible())
        have = len(self.trainable())
        if have >= self.config.min_clients:
            return None
        refused = [s for s in online if not s.eligible]
        counts = Counter(reason for s in refused for reason in s.reasons)
        top = ", ".join(f"{reason} ({n})" for reason, n in counts.most_common(3))
        others = f", {len(refused)} not eligible{': top reasons ' + top if top else ''}" if refused else ""
        unable = Counter(choice.reason for choice in choices.values() if choice.codec is None)
        others += "".join(f", {n} eligible but {reason}" for reason, n in unable.most_common(3))
        if self.config.secure_aggregation:
            lacking = sum(1 for d in choices if not self.registry[d].secure_aggregation)
            others += f", {lacking} eligible but without secure aggregation" if lacking else ""
        return (f"round {number} waits for {self.config.min_clients} eligible devices ({have} now; {len(online)} "
                f"online{others})")

    # -- inputs -----------------------------------------------------------------------------------

    def start(self, now: Now) -> list[Effect]:
        self._now = now
        self._publish(self.topics.artifact, self._bundle)
        self._publish_global(b"")  # no version before this one here: clear a delta a predecessor left retained
        self._publish_state("waiting")
        self._started_real = now.real
        return self._effects()

    def receive(self, topic: str, payload: bytes, now: Now) -> list[Effect]:
        self._now = now
        sender = self.topics.sender(topic)
        if sender is not None:
            self._tally.bytes_in += len(payload)
            self._dispatch(*sender, payload)
        return self.tick(now)

    def tick(self, now: Now) -> list[Effect]:
        """Move on as far as time and what has arrived allow."""
        self._now = now
        for _ in range(8):  # a step may open a phase that can move on at once (a resumed run may finish)
            before = self.phase
            self._step(now)
            if self.phase == before:
                break
        return self._effects()

    def stop(self, now: Now) -> list[Effect]:
        """End now: an open round is dropped (no line, no checkpoint), an evaluation reports what arrived."""
        self._now = now
        if self._round is not None:
            self._round.close("stopped")
            self._withdraw(self._round.plan.selected)
            if self._secure is not None:  # no roster or unmask request left retained for a round that is gone
                for device in sorted(self._round.plan.selected):
                    self._publish(self.topics.secure_out(device), b"")
            self._round, self._secure = None, None
        elif self._evaluation is not None:
            self._end_evaluation(now)
        self._finish()
        return self._effects()

    # -- phases -----------------------------------------------------------------------------------

    def _step(self, now: Now) -> None:
        if self.phase == "settling" and self._settled(now):
            self._withdraw(frozenset(self.registry))  # tasks a crashed predecessor left retained
            self.phase, self._phase_until = "fleet", now.real + self._fleet_wait_s()
        elif self.phase == "fleet":
            self._step_fleet(now)
        elif self.phase == "waiting":
            self._step_waiting(now)
        elif self.phase == "training" and self._round is not None and self._secure is not None:
            self._step_secure(self._round, self._secure, now)
        elif self.phase == "training" and self._round is not None:
            current = self._round
            if current.goal_reached or current.all_answered or now.clock >= self._phase_until:
                closed_by: Literal["goal", "all_answered", "deadline"] = (
                    "goal" if current.goal_reached else "all_answered" if current.all_answered else "deadline")
                self._end_training(current.close(closed_by), now)
        elif self.phase == "evaluating" and self._evaluation is not None and (
                self._evaluation.all_answered or now.clock >= self._phase_until):
            self._end_evaluation(now)

    def _settled(self, now: Now) -> bool:
        if now.real >= self._started_real + SETTLE_MAX_S:
            log.warning("device statuses kept arriving for %.0f s; selecting from the %d received", SETTLE_MAX_S,
                        len(self.registry))
            return True
        return now.real >= self._started_real + SETTLE_S and now.real - self._last_status >= SETTLE_QUIET_S

    def _step_fleet(self, now: Now) -> None:
        """Until ``expect_devices`` devices say they hold this artifact, for at most a minute plus 50 ms per
        device of real time (fetching and verifying the model is the devices' real work, whatever the clock)."""
        expected, ready = self.config.expect_devices, self._holding_model()
        if ready >= expected or now.real >= self._phase_until:
            if ready < expected:
                log.error("starting after %.0f s with %d of the %d expected devices holding the model",
                          self._fleet_wait_s(), ready, expected)
            self._enter_waiting()

    def _fleet_wait_s(self) -> float:
        return 60.0 + 0.05 * self.config.expect_devices

    def _holding_model(self) -> int:
        return sum(1 for s in self.registry.values() if s.online and s.artifact_id == self.state.artifact_id)

    def _enter_waiting(self) -> None:
        if self.state.next_round > self.config.rounds:
            self._finish()
            return
        self.phase = "waiting"
        self._publish_state("waiting")

    def _step_waiting(self, now: Now) -> None:
        have = len(self.trainable())
        if have >= self.config.min_clients and now.clock >= self._next_start:
            self._begin_training(now)

    def _begin_training(self, now: Now) -> None:
        config, number = self.config, self.state.next_round
        self._started = _Started(now.real, now.clock)
        self._next_start = now.clock + config.round_interval
        codecs = self.trainable()  # the eligible devices that encode their codec: the others cannot take part
        eligible, goal, chosen = self._choose(list(codecs), config.min_clients, self._selection_seed, number)
        clip = self._private_clip(RoundContext(number, goal, eligible, len(chosen)), now)
        if clip is None:
            return
        plan = RoundPlan(number, self._new_id(), self.state.model_version, chosen, eligible, goal,
                         config.min_reports, clip, now.clock + config.round_timeout,
                         DEFAULT_CODEC if config.codec == AUTO else config.codec, config.max_examples,
                         cast(Weighting, config.weighting), config.seed,
                         MappingProxyType({device: codecs[device] for device in sorted(chosen)}))
        self._round = OpenRound(plan, self.state, self._specs, self._strategy, self._tally)
        secure: dict[str, Any] = {}
        if config.secure_aggregation:
            params = new_params(plan.task_id, number, plan.selected, config.planned_dropout)
            self._secure = SecureAggregation(params, sum(spec.size for spec in self._specs), plan.clip_norm)
            self._secure_until, secure = now.clock + KEYS_UNTIL * config.round_timeout, secure_fields(params)
        for device in sorted(plan.selected):
            task = TrainTask(plan.task_id, number, plan.model_version, self.state.artifact_id, plan.deadline,
                             config.local_epochs, self._lr, plan.clip_norm, task_seed(config.seed, number, device),
                             plan.codec_of(device), plan.max_examples, config.prox_mu, **secure)
            payload = encode(task)
            self._publish(self.topics.task(device), payload)
            self._tally.bytes_down += len(payload) + self._download_bytes(device, plan.model_version)
        self.phase, self._phase_until = "training", plan.deadline
        self._publish_state("training")

    def _step_secure(self, current: OpenRound, secure: SecureAggregation, now: Now) -> None:
        """Move a secure round on (coordinator.secure_round): a stage closes when every device it waits for has
        answered or at its deadline; the masked inputs' stage also at the goal, like a plain round's updates."""
        waiting, stage = secure.waiting_for - current.answered, secure.stage  # answered here: reported a failure
        closed_by: Literal["goal", "all_answered", "deadline"] = "all_answered" if not waiting else "deadline"
        if stage == "masked":  # at the goal only if the inputs so far can be unmasked: else wait for more
            if waiting and secure.counts_masked >= current.plan.goal and secure.unrecoverable() is None:
                closed_by = "goal"
            elif waiting and now.clock < self._phase_until:
                return
        elif waiting and now.clock < self._secure_until:
            return
        if stage == "unmask":
            closed_by = self._secure_closed_by  # the round closed with its masked stage
        try:
            messages = secure.advance()
            total = secure.result()[0] if stage == "unmask" else None
        except Abandoned as exc:
            log.warning("round %d: secure aggregation abandoned: %s", current.plan.number, exc.problem)
            self._end_secure(current, secure, closed_by, now, exc.reason)
            return
        for device, message in messages.items():
            self._publish(self.topics.secure_out(device), encode(message))
        timeout = self.config.round_timeout
        if stage == "keys":
            self._secure_until = self._started.clock + SHARES_UNTIL * timeout
        elif stage == "masked":
            self._secure_until, self._secure_closed_by = now.clock + UNMASK_FOR * timeout, closed_by
        elif total is not None:
            refused = current.offer_sum(total, secure.survivors, step(current.plan.clip_norm,
                                                                      secure.params.value_bits))
            self._end_secure(current, secure, closed_by, now, refused)

    def _end_secure(self, current: OpenRound, secure: SecureAggregation,
                    closed_by: Literal["goal", "all_answered", "deadline"], now: Now, abandoned: str | None) -> None:
        self._tally.secure = secure.counts.to_json(abandoned)
        self._secure = None
        for device in sorted(current.plan.selected):
            self._publish(self.topics.secure_out(device), b"")
        self._end_training(current.close(closed_by), now)

    def _private_clip(self, context: RoundContext, now: Now) -> float | None:
        """The bound devices clip to in the round ``context`` describes; None when central DP refuses the round
        (its budget would be exceeded): the run then ends with a line saying why."""
        private = self._private
        if private is None:
            return self.config.clip_norm
        self.state = private.prepared(self.state, len(self.registry))  # delta, at the first private round
        clip = private.clip_bound(self.state)
        reason = private.refusal(self.state, context)
        if reason is None:
            return clip
        log.warning("stopping before round %d: %s", context.number, reason)
        plan = RoundPlan(context.number, "", self.state.model_version, frozenset(), context.eligible, context.goal,
                         self.config.min_reports, clip, now.clock)
        outcome = RoundOutcome(plan, "stopped", "privacy_budget", 0, 0, None, 0, None)
        privacy = {**private.report(self.state, clip), "stopped": reason}
        self._out.append(Line(round_line(outcome, self._tally, now.clock, 0.0, self.state.model_version, None, None,
                                         privacy)))
        self._tally = Tally()
        self._finish()
        return None

    def _end_training(self, outcome: RoundOutcome, now: Now) -> None:
        self._withdraw(outcome.plan.selected)
        self._round = None
        committed = outcome.state is not None
        previous, self.state = self.state, self.state.after_round(outcome.state)
        delta = self._compress(previous) if committed else None
        self._out.append(Save(self.state))  # with a downlink codec: the weights as devices rebuild them
        if committed:
            self._publish_global(delta)
        test = self._evaluator(self.state.weights) if self._evaluator is not None and committed else None
        self._started.outcome, self._started.test = outcome, test
        every = self.config.eval_every
        if committed and every and outcome.plan.number % every == 0 and self.eligible():
            self._begin_evaluation(outcome.plan.number, now)
        else:
            self._write_line(now, None)

    def _begin_evaluation(self, number: int, now: Now) -> None:
        _, _, chosen = self._choose(self.eligible(), 1, self.config.seed + 1, number)
        task = EvaluateTask(self._new_id(), number, self.state.model_version, self.state.artifact_id,
                            now.clock + self.config.round_timeout)
        self._evaluation = EvaluationRound(task, chosen, self._personal)
        for device in sorted(chosen):
            self._publish(self.topics.task(device), encode(task))
        self.phase, self._phase_until = "evaluating", task.deadline
        self._publish_state("evaluating")

    def _end_evaluation(self, now: Now) -> None:
        evaluation, self._evaluation = self._evaluation, None
        assert evaluation is not None
        self._withdraw(evaluation.selected)
        self._tally.rejected.update(evaluation.rejected)
        self._write_line(now, evaluation.metrics())

    def _write_line(self, now: Now, federated: Metrics | None) -> None:
        started = self._started
        assert started.outcome is not None
        private = self._private
        privacy = private.report(self.state, started.outcome.plan.clip_norm) if private is not None else None
        self._out.append(Line(round_line(started.outcome, self._tally, started.clock, now.real - started.real,
                                         self.state.model_version, started.test, federated, privacy)))
        self._tally = Tally()
        self._enter_waiting()

    def _finish(self) -> None:
        self.phase = "finished"
        self._publish_state("finished")

    def _choose(self, eligible: list[str], min_clients: int, seed: int, number: int) -> tuple[int, int, frozenset[str]]:
        """Eligible count, goal and the over-selected devices for round ``number``, drawn from ``eligible``."""
        goal = goal_count(len(eligible), self.config.fraction, min_clients)
        count = selection_size(len(eligible), goal, self.config.over_select)
        return len(eligible), goal, frozenset(select(eligible, count, seed, number))

    # -- incoming messages ------------------------------------------------------------------------

    def _dispatch(self, kind: str, device: str, payload: bytes) -> None:
        try:
            if kind == "status":
                self._on_status(device, payload)
            elif kind == "update":
                self._on_update(device, payload)
            elif kind == "secagg":
                self._on_secure(device, payload)
            else:
                self._on_report(device, payload)
        except ProtocolError as exc:
            reason = BAD_STATUS if kind == "status" else exc.reason
            self._tally.rejected[reason] += 1
            log.warning("rejected %s from %s: %s (%s)", kind, device, reason, exc.problem)

    def _on_status(self, device: str, payload: bytes) -> None:
        self._last_status = self._now.real
        if not payload:
            self.registry.pop(device, None)  # its retained status was cleared
            return
        status: DeviceStatus = decode(payload, DeviceStatus)
        if status.device_id != device:
            raise ProtocolError(IDENTITY_MISMATCH, f"status names device {status.device_id!r}")
        before = self.registry.get(device)
        self.registry[device] = status
        if status.local_noise > 0 and (before is None or before.local_rounds != status.local_rounds):
            _log_local_dp(device, status)

    def _on_secure(self, device: str, payload: bytes) -> None:
        message: SecAggKeys | SecAggShares | SecAggReveal = decode(payload, (SecAggKeys, SecAggShares, SecAggReveal))
        if self._secure is None:
            self._no_round(message.round)
            return
        reason = self._secure.offer(device, message) if device in self.registry else "unknown_device"
        if reason is not None:
            self._tally.rejected[reason] += 1
            log.warning("rejected %s from %s: %s", message.kind, device, reason)

    def _on_masked(self, device: str, payload: bytes, secure: SecureAggregation) -> None:
        header, tensors = decode_tensors(payload, MaskedHeader, self._limit)
        if secure.stage != "masked" and header.round == secure.params.round:
            self._tally.rejected[LATE] += 1  # an over-selected device finishing after the goal was met
            return
        if header.model_version != self.state.model_version:
            self._tally.rejected[WRONG_MODEL_VERSION] += 1
            return
        reason = secure.offer_masked(device, header, tensors) if device in self.registry else "unknown_device"
        if reason is not None:
            self._tally.rejected[reason] += 1
            log.warning("rejected a masked input from %s: %s", device, reason)
            return
        tally = self._tally
        tally.bytes_up += len(payload)
        tally.bytes_up_float32 += len(payload)  # as large as float32: 32-bit words, one per parameter
        tally.codec_mix["secagg"] += 1

    def _on_update(self, device: str, payload: bytes) -> None:
        if self._secure is not None:
            self._on_masked(device, payload, self._secure)
            return
        if self.config.secure_aggregation:  # a masked input after its round closed (an over-selected device)
            self._no_round(decode_header(payload, MaskedHeader, self._limit).round)
            return
        header, tensors = decode_tensors(payload, UpdateHeader, self._limit)
        if self._round is None:
            reason = self._no_round(header.round)
            log.info("refused update from %s: %s (round %d)", device, reason, header.round)
            return
        refused = self._round.offer_update(device, device in self.registry, header, tensors, len(payload))
        if refused is not None:  # late: an over-selected device finishing after its round closed, counted only
            log.log(logging.DEBUG if refused == LATE else logging.WARNING, "rejected update from %s for round %d: %s",
                    device, header.round, refused)

    def _on_report(self, device: str, payload: bytes) -> None:
        message: TaskFailed | EvaluationReport = decode(payload, (TaskFailed, EvaluationReport))
        known = device in self.registry
        evaluation = self._evaluation
        if evaluation is not None and message.task_id == evaluation.task.task_id:
            reason = evaluation.offer(device, known, message)
        elif isinstance(message, TaskFailed) and self._round is not None:
            reason = self._round.offer_failure(device, known, message)
        else:
            reason = self._no_round(message.round)
        if reason is not None:
            log.log(logging.DEBUG if reason == LATE else logging.WARNING, "rejected report from %s: %s", device,
                    reason)

    def _no_round(self, round_number: int) -> str:
        """Count a message for a round that is not open: late if that round has closed."""
        reason = LATE if round_number < self.state.next_round else NO_OPEN_ROUND
        self._tally.rejected[reason] += 1
        return reason

    # -- outgoing messages ------------------------------------------------------------------------

    def _publish(self, topic: str, payload: bytes) -> None:
        self._tally.bytes_out += len(payload)
        if topic == self.topics.global_model:
            self._model_bytes = len(payload)  # what a selected device downloads to train, besides its task
        elif topic == self.topics.delta_model:
            self._delta_bytes = len(payload)
        self._out.append(Publish(topic, payload))

    def _download_bytes(self, device: str, version: int) -> int:
        """What ``device`` downloads to hold model ``version``, as its status tells: the delta if one is published
        and the device holds the version before it (or already this one, most likely through that delta), else the
        full model. An estimate; an emulated fleet's summary counts what each device really received."""
        held = self.registry[device].model_version
        if self._delta_bytes and held in (version - 1, version):
            return self._delta_bytes
        return self._model_bytes

    def _withdraw(self, devices: frozenset[str]) -> None:
        for device in sorted(devices):
            self._publish(self.topics.task(device), b"")

    def _compress(self, previous: ServerState) -> bytes | None:
        """With a downlink codec, make the committed weights what a device rebuilds from the delta, and return the
        delta's payload (b"" when the delta cannot be made: the retained one is cleared); None without one."""
        if self._downlink is None:
            return None
        state = self.state
        found = compress(previous.weights, state.weights, self._specs, self._downlink,
                         downlink_seed(self.config.seed, state.model_version))
        if found is None:
            return b""
        self.state = replace(state, weights=found.weights)  # the strategy's own arrays stay as it made them
        header = DeltaHeader(state.model_version, state.next_round - 1, state.artifact_id, previous.model_version,
                             found.codec, found.seed, found.sha256)
        return encode_tensors(header, found.tensors)

    def _publish_global(self, delta: bytes | None = None) -> None:
        """The global model, after its delta from the previous version (``delta``: its payload; b"" clears the
        retained delta; None leaves the delta topic alone)."""
        if delta is not None:
            self._publish(self.topics.delta_model, delta)
        state = self.state
        header = GlobalHeader(state.model_version, state.next_round - 1, state.artifact_id,
                              weights_sha256(state.weights, self._specs), self.config.downlink_codec)
        self._publish(self.topics.global_model, encode_tensors(header, state.weights))

    def _publish_state(self, phase: Literal["waiting", "training", "evaluating", "finished"]) -> None:
        state = CoordinatorState(self.state.next_round, phase, self.state.model_version, self.state.artifact_id,
                                 self._now.wall)
        self._publish(self.topics.coordinator, encode(state))

    def _effects(self) -> list[Effect]:
        out, self._out = self._out, []
        return out


def _log_local_dp(device: str, status: DeviceStatus) -> None:
    """A device using local DP: its epsilon, as it reported it or, if it could not compute it, computed here at the
    device's default delta from its noise multiplier and count (edge_runtime.local_dp)."""
    eps, source = status.local_epsilon, "reported"
    if eps is None:
        eps, source = local_epsilon([(status.local_noise, status.local_rounds)], DEFAULT_LOCAL_DELTA), "computed here"
    log.info("device %s: local DP, noise multiplier %g, %d updates, epsilon %s (%s%s)", device, status.local_noise,
             status.local_rounds, "unknown" if eps is None else f"{eps:.4f}", source,
             "" if source == "reported" else f", at delta {DEFAULT_LOCAL_DELTA:g}")
