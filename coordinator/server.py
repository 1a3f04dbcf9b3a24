"""The coordinator's MQTT layer: a thin loop around the pure round logic of ``coordinator.rounds``.

Messages arrive on paho's network thread and are queued; the coordinator's
thread decodes them, keeps the device registry, and feeds updates to the open
round. Everything the coordinator publishes retained (artifact, global model,
state, open tasks) is remembered and published again after every reconnect,
so a broker that restarted without persistence is repopulated.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Literal

from coordinator.checkpoint import FederationState, has_checkpoint, load_checkpoint, save_checkpoint
from coordinator.config import CoordinatorConfig
from coordinator.errors import CheckpointError
from coordinator.evaluation import Metrics, TestSetEvaluator
from coordinator.evaluation_round import EvaluationRound
from coordinator.fedavg import FedAvg
from coordinator.report import RoundLog, round_line
from coordinator.rounds import BAD_STATUS, LATE, NO_OPEN_ROUND, OpenRound, RoundOutcome, RoundPlan, Tally
from coordinator.selection import goal_count, select, selection_size
from edge_runtime.artifact import Artifact
from edge_runtime.broker_args import mqtt_options
from edge_runtime.errors import ProtocolError
from edge_runtime.manifest import MANIFEST_FILE
from edge_runtime.mqtt import MqttConnection
from edge_runtime.protocol import (
    CoordinatorState,
    DeviceStatus,
    EvaluateTask,
    EvaluationReport,
    GlobalHeader,
    TaskFailed,
    Topics,
    TrainTask,
    UpdateHeader,
    artifact_id,
    bundle_files,
    decode,
    decode_tensors,
    encode,
    encode_tensors,
    tensor_payload_limit,
)
from edge_runtime.weights import Weights

log = logging.getLogger(__name__)
Clock = Callable[[], float]
_POLL_S = 0.1
INBOX_LIMIT = 8  # messages waiting for the coordinator's thread (at most this many updates held at once)
SETTLE_S = 1.0  # after (re)connecting, time for the retained device statuses to arrive


class Coordinator:
    def __init__(self, config: CoordinatorConfig, *, clock: Clock = time.time,
                 on_round: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.config = config
        self.clock = clock
        self.artifact = Artifact.load(config.artifact)
        manifest = self.artifact.manifest
        files = {name: (self.artifact.folder / name).read_bytes()
                 for name in (MANIFEST_FILE, manifest.tflite_file, manifest.weights_file)}
        self.artifact_id = artifact_id(files[MANIFEST_FILE])
        self._bundle = bundle_files(files, MANIFEST_FILE)
        self.topics = Topics(config.federation)
        self.strategy = FedAvg(config.server_lr)
        self.limit = config.max_payload or tensor_payload_limit(manifest.parameter_count)
        self.state, self.weights = self._initial_state()
        self.registry: dict[str, DeviceStatus] = {}
        self._log = RoundLog(config.state_dir, on_round)
        self._evaluator = TestSetEvaluator(self.artifact, config.test_data) if config.test_data else None
        # Bounded: when updates arrive faster than they are checked, paho's thread waits here, the socket
        # stops being read and the broker holds the rest; memory stays O(model), not O(devices x model).
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=INBOX_LIMIT)
        self._receiving = True
        self._round: OpenRound | None = None
        self._evaluation: EvaluationRound | None = None
        self._tally = Tally()  # counts for the next round line: that round, its evaluation, and the wait before it
        self._settled = False
        self._next_start = -float("inf")  # on self.clock: the earliest start of the next round (round-interval)
        self._retained: dict[str, bytes] = {}
        self._retained_lock = threading.Lock()
        options = mqtt_options(config.broker, f"edgefl-coordinator-{config.federation}", config.username,
                               config.password, config.tls_ca, config.mqtt_version)  # type: ignore[arg-type]
        self._conn = MqttConnection(options, self.topics.coordinator_subscriptions(), self._receive,
                                    on_connect=self._republish)

    def _initial_state(self) -> tuple[FederationState, Weights]:
        folder = self.config.state_dir
        specs = self.artifact.manifest.weights
        if self.config.resume and has_checkpoint(folder):
            state, weights = load_checkpoint(folder, specs)
            if state.artifact_id != self.artifact_id:
                raise CheckpointError(f"{folder}: checkpoint is for artifact {state.artifact_id}, not "
                                      f"{self.artifact_id} ({self.config.artifact})")
            log.info("resuming at round %d, model version %d", state.next_round, state.model_version)
            return state, weights
        if has_checkpoint(folder):
            raise CheckpointError(f"{folder} already holds a checkpoint; pass --resume to continue it, or choose "
                                  "another --state-dir")
        return FederationState(self.artifact_id, 1, 0, 0), self.artifact.initial_weights()

    # -- lifecycle --------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> FederationState:
        """Run rounds until ``rounds`` have been held (or ``stop`` is set); returns the final state."""
        stop = stop or threading.Event()
        self._conn.start()
        try:
            self._publish_retained(self.topics.artifact, self._bundle)
            self._publish_global()
            while self.state.next_round <= self.config.rounds and not stop.is_set():
                if self._wait_for_devices(stop):
                    self._train_round(stop)
            self._publish_state("finished")
        finally:
            self._stop_receiving()
            self._conn.close()
        return self.state

    def _stop_receiving(self) -> None:
        """Drop what arrives from now on, and free paho's thread if it waits on the full inbox, so it can stop."""
        self._receiving = False
        while True:
            try:
                self._inbox.get_nowait()
            except queue.Empty:
                return

    def eligible(self) -> list[str]:
        return sorted(d for d, s in self.registry.items() if s.online and s.eligible)

    def _wait_for_devices(self, stop: threading.Event) -> bool:
        self._publish_state("waiting")
        next_note = 0.0
        if not self._settled:
            settle = time.monotonic() + SETTLE_S
            while time.monotonic() < settle and not stop.is_set():  # let retained statuses arrive before choosing
                self._pump(_POLL_S)
            self._withdraw_tasks(frozenset(self.registry))  # tasks a crashed predecessor left retained
            self._settled = True
            self._wait_for_fleet(stop)
        while not stop.is_set():
            have = len(self.eligible())
            if have >= self.config.min_clients and self.clock() >= self._next_start:
                return True
            if time.monotonic() >= next_note:
                log.info("round %d waits for %d eligible devices (%d now)", self.state.next_round,
                         self.config.min_clients, have)
                next_note = time.monotonic() + 30
            self._pump(_POLL_S)
        return False

    def _wait_for_fleet(self, stop: threading.Event) -> None:
        """Until ``expect_devices`` devices say they hold this artifact, for at most a minute plus 50 ms per
        device of real time (fetching and verifying the model is the devices' real work, whatever the clock)."""
        expected = self.config.expect_devices
        budget = 60.0 + 0.05 * expected
        deadline, ready = time.monotonic() + budget, 0
        while not stop.is_set() and time.monotonic() < deadline:
            ready = sum(1 for s in self.registry.values() if s.online and s.artifact_id == self.artifact_id)
            if ready >= expected:
                return
            self._pump(_POLL_S)
        if not stop.is_set():
            log.error("starting after %.0f s with %d of the %d expected devices holding the model", budget, ready,
                      expected)

    # -- a training round -------------------------------------------------------------------------

    def _train_round(self, stop: threading.Event) -> None:
        started, started_at, number = time.monotonic(), self.clock(), self.state.next_round
        self._next_start = started_at + self.config.round_interval
        plan = self._plan(number)
        self._round = current = OpenRound(plan, self.weights, self.artifact.manifest.weights, self.strategy,
                                          self._tally)
        lr = self.config.lr if self.config.lr is not None else self.artifact.manifest.optimizer.learning_rate
        for device in sorted(plan.selected):
            seed = _task_seed(self.config.seed, number, device)
            task = TrainTask(plan.task_id, number, plan.model_version, self.artifact_id, plan.deadline,
                             self.config.local_epochs, lr, self.config.clip_norm, seed)
            self._publish_retained(self.topics.task(device), encode(task))
        self._publish_state("training")
        ended = self._collect(stop, plan.deadline, lambda: current.goal_reached or current.all_answered)
        outcome = current.close("goal" if current.goal_reached else "all_answered" if ended == "done" else ended)
        self._withdraw_tasks(plan.selected)
        self._round = None
        if outcome.closed_by == "stopped":
            return
        self._finish_round(outcome, started, started_at, stop)

    def _plan(self, number: int) -> RoundPlan:
        eligible, goal, chosen = self._choose(self.config.min_clients, self.config.seed, number)
        return RoundPlan(number, secrets.token_hex(8), self.state.model_version, chosen, eligible, goal,
                         self.config.min_reports, self.config.clip_norm, self.clock() + self.config.round_timeout)

    def _choose(self, min_clients: int, seed: int, number: int) -> tuple[int, int, frozenset[str]]:
        """Eligible count, goal and the over-selected devices for round ``number``."""
        eligible = self.eligible()
        goal = goal_count(len(eligible), self.config.fraction, min_clients)
        count = selection_size(len(eligible), goal, self.config.over_select)
        return len(eligible), goal, frozenset(select(eligible, count, seed, number))

    def _collect(self, stop: threading.Event, deadline: float, done: Callable[[], bool]) -> Literal[
            "deadline", "stopped", "done"]:
        while not done():
            if stop.is_set():
                return "stopped"
            if self.clock() >= deadline:
                return "deadline"
            self._pump(_POLL_S)
        return "done"

    def _finish_round(self, outcome: RoundOutcome, started: float, started_at: float, stop: threading.Event) -> None:
        committed = outcome.weights is not None  # a round carries new weights exactly when it committed
        if outcome.weights is not None:
            self.weights = outcome.weights
        self.state = replace(self.state, next_round=outcome.plan.number + 1,
                             model_version=self.state.model_version + int(committed),
                             committed_rounds=self.state.committed_rounds + int(committed))
        save_checkpoint(self.config.state_dir, self.state, self.weights)
        if committed:
            self._publish_global()
        test = self._evaluator(self.weights) if self._evaluator and committed else None
        federated = None
        every = self.config.eval_every
        if committed and every and outcome.plan.number % every == 0:
            federated = self._evaluate_on_devices(outcome.plan.number, stop)
        self._log.write(round_line(outcome, self._tally, started_at, time.monotonic() - started,
                                   self.state.model_version, test, federated))
        self._tally = Tally()

    def _withdraw_tasks(self, devices: frozenset[str]) -> None:
        for device in sorted(devices):
            self._publish_retained(self.topics.task(device), b"")

    # -- federated evaluation ---------------------------------------------------------------------

    def _evaluate_on_devices(self, number: int, stop: threading.Event) -> Metrics | None:
        if not self.eligible():
            return None
        _, _, chosen = self._choose(1, self.config.seed + 1, number)
        task = EvaluateTask(secrets.token_hex(8), number, self.state.model_version, self.artifact_id,
                            self.clock() + self.config.round_timeout)
        self._evaluation = evaluation = EvaluationRound(task, chosen)
        for device in sorted(chosen):
            self._publish_retained(self.topics.task(device), encode(task))
        self._publish_state("evaluating")
        self._collect(stop, task.deadline, lambda: evaluation.all_answered)
        self._evaluation = None
        self._withdraw_tasks(chosen)
        self._tally.rejected.update(evaluation.rejected)
        return evaluation.metrics()

    # -- incoming messages ------------------------------------------------------------------------

    def _receive(self, topic: str, payload: bytes) -> None:  # paho's network thread
        if self._receiving:
            self._inbox.put((topic, payload))

    def _pump(self, timeout: float) -> None:
        """Handle the next message (waiting up to ``timeout``), then whatever else is already queued."""
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._dispatch(*item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _dispatch(self, topic: str, payload: bytes) -> None:
        sender = self.topics.sender(topic)
        if sender is None:
            return
        kind, device = sender
        self._tally.bytes_in += len(payload)
        try:
            if kind == "status":
                self._on_status(device, payload)
            elif kind == "update":
                self._on_update(device, payload)
            else:
                self._on_report(device, payload)
        except ProtocolError as exc:
            reason = BAD_STATUS if kind == "status" else exc.reason
            self._tally.rejected[reason] += 1
            log.warning("rejected %s from %s: %s (%s)", kind, device, reason, exc.problem)

    def _on_status(self, device: str, payload: bytes) -> None:
        if not payload:
            self.registry.pop(device, None)  # its retained status was cleared
            return
        status: DeviceStatus = decode(payload, DeviceStatus)
        if status.device_id != device:
            raise ProtocolError("identity_mismatch", f"status names device {status.device_id!r}")
        self.registry[device] = status

    def _on_update(self, device: str, payload: bytes) -> None:
        header, tensors = decode_tensors(payload, UpdateHeader, self.limit)
        if self._round is None:
            log.info("refused update from %s: %s (round %d)", device, self._no_round(header.round), header.round)
            return
        refused = self._round.offer_update(device, device in self.registry, header, tensors)
        if refused is not None:
            log.warning("rejected update from %s for round %d: %s", device, header.round, refused)

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
            log.warning("rejected report from %s: %s", device, reason)

    def _no_round(self, round_number: int) -> str:
        """Count a message for a round that is not open: late if that round has closed."""
        reason = LATE if round_number < self.state.next_round else NO_OPEN_ROUND
        self._tally.rejected[reason] += 1
        return reason

    # -- outgoing messages ------------------------------------------------------------------------

    def _publish_global(self) -> None:
        header = GlobalHeader(self.state.model_version, self.state.next_round - 1, self.artifact_id)
        self._publish_retained(self.topics.global_model, encode_tensors(header, self.weights))

    def _publish_state(self, phase: Literal["waiting", "training", "evaluating", "finished"]) -> None:
        state = CoordinatorState(self.state.next_round, phase, self.state.model_version, self.artifact_id,
                                 time.time())
        self._publish_retained(self.topics.coordinator, encode(state))

    def _publish_retained(self, topic: str, payload: bytes) -> None:
        with self._retained_lock:
            if payload:
                self._retained[topic] = payload
            else:
                self._retained.pop(topic, None)
        tally = self._tally
        tally.bytes_out += len(payload)
        self._conn.publish(topic, payload, retain=True)

    def _republish(self) -> None:  # paho's network thread, after every (re)connect
        with self._retained_lock:
            pending = list(self._retained.items())
        for topic, payload in pending:
            self._conn.publish(topic, payload, retain=True)


def _task_seed(seed: int, round_number: int, device: str) -> int:
    """A shuffling seed per device and round, reproducible from the configured seed."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{round_number}/{device}".encode()).digest()[:4], "little")
