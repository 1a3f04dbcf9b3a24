"""The device agent: fetch the model over MQTT, wait for tasks, train, report clipped updates.

Messages arrive on paho's network thread and are queued; one agent thread
handles them in order, including training, so the agent's state has a single
writer. The network thread only notes the id of the newest task, which lets a
running task see between steps that the coordinator withdrew it.

Between tasks the agent keeps only the verified artifact, its local data,
the current global weights and the device's personal weights (an artifact's
weights that never leave the device, kept in the cache across restarts): an
interpreter is built for a task and released when the task ends. A ``Pace``
(``edge_runtime.pace``) may add waits around a task's phases; a physical
device's adds none, an emulated device's plays its profile. The update's
decisions (delta, clip, stages, encoding) are ``edge_runtime.update_stages``'s;
an emulator injects stages there, and a ``DataTransform`` applied to the local
data when an artifact is loaded. Which model topic the agent follows, and what a
delta makes of the model it holds, are ``edge_runtime.model_sync``'s decisions.
"""

from __future__ import annotations

import importlib.util
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from edge_runtime.artifact import Artifact
from edge_runtime.backend import select_backend
from edge_runtime.cache import ArtifactCache, PersonalStore, ResidualStore
from edge_runtime.data import DEFAULT_LABEL_COLUMN, Dataset, check_arrays, load_data
from edge_runtime.errors import EdgeRuntimeError, ProtocolError
from edge_runtime.local_dp import DEFAULT_LOCAL_DELTA, LocalDpLedger, LocalGaussian, local_epsilon
from edge_runtime.model_sync import NO_BASE, DeltaRefused, GlobalModel, Target, read_delta, read_global, wants_full
from edge_runtime.mqtt import MqttConnection, MqttOptions
from edge_runtime.pace import Pace, RealPace
from edge_runtime.policy import AlwaysEligible, Decision, EligibilityPolicy
from edge_runtime.protocol import (
    DEVICE_CODECS,
    DeviceStatus,
    EvaluateTask,
    EvaluationReport,
    SecAggRoster,
    SecAggRouted,
    SecAggUnmask,
    Task,
    TaskFailed,
    Topics,
    TrainTask,
    decode,
    encode,
    unbundle_files,
)
from edge_runtime.signals import Signals, link_class
from edge_runtime.trainer import Trainer
from edge_runtime.update_stages import DataTransform, UpdatePipeline, UpdateStage
from edge_runtime.weights import Weights, select

if TYPE_CHECKING:
    from edge_runtime.secagg.session import DeviceSession

log = logging.getLogger(__name__)
SECURE_AGGREGATION = importlib.util.find_spec("cryptography") is not None  # what secure rounds need besides numpy


@dataclass(frozen=True)
class AgentConfig:
    """``data`` is a file, or examples already in memory (an emulated device); ``clock`` is the one the
    coordinator's deadlines are on (the wall clock, or an emulator's)."""

    device_id: str
    data: Path | Dataset
    mqtt: MqttOptions
    cache_dir: Path
    topics: Topics = field(default_factory=Topics)
    label_column: str = DEFAULT_LABEL_COLUMN
    backend: str | None = None
    num_threads: int | None = None
    max_artifact_bytes: int = 256 * 1024 * 1024
    clock: Callable[[], float] = time.time
    local_noise: float = 0.0  # local DP's noise multiplier z (edge_runtime.local_dp); 0: no local noise
    local_delta: float = DEFAULT_LOCAL_DELTA  # the delta its local epsilon is reported at
    local_noise_test_seed: int | None = None  # tests only: reproducible local noise


class _Stopped(Exception):
    """Raised between training steps to abandon a task: ``outcome`` is withdrawn, failed or interrupted."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason


@dataclass
class _Model:
    artifact: Artifact
    artifact_id: str
    data: Dataset
    personal: Weights  # this device's personal weights (empty when the artifact has none)
    residual: Weights | None = None  # error feedback kept from its last update (edge_runtime.feedback)


class DeviceAgent:
    """``stages`` run on every update after clipping and ``transform`` on the local data once it is checked
    (``edge_runtime.update_stages``); a physical device passes neither."""

    def __init__(self, config: AgentConfig, policy: EligibilityPolicy | None = None,
                 pace: Pace | None = None, stages: Sequence[UpdateStage] = (),
                 transform: DataTransform | None = None) -> None:
        self.config = config
        self.policy: EligibilityPolicy = policy or AlwaysEligible()
        self.pace: Pace = pace or RealPace()
        if config.local_noise:  # last: the noise goes on what the other stages leave
            stages = (*stages, LocalGaussian(config.local_noise, config.local_noise_test_seed))
        self._updates = UpdatePipeline.of(stages)
        self._local_dp = LocalDpLedger(config.cache_dir, config.device_id)
        # updates sent with local noise for the current artifact and their epsilon (None: no local DP, or no
        # dp-accounting to compute it)
        self._local_spent: tuple[int, float | None] = (0, 0.0 if config.local_noise else None)
        self._transform = transform
        self.backend = select_backend(config.backend)
        self.stats = AgentStats()
        self._stats_lock = threading.Lock()
        self.topics = config.topics
        self._cache = ArtifactCache(config.cache_dir)
        self._personal = PersonalStore(config.cache_dir, config.device_id)
        self._residuals = ResidualStore(config.cache_dir, config.device_id)
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self._newest_task = ""
        self._model: _Model | None = None
        self._global: GlobalModel | None = None
        self._global_bytes = 0  # bytes downloaded for the current version (a delta's when one was applied)
        self._following_full = True  # subscribed to the full model (edge_runtime.model_sync.wants_full)
        self._behind = ""  # why the device waits for a full model although it holds one ("" if it does not)
        self._refused_delta = (-1, 0)  # (version, bytes) of the last delta it could not use
        self._unusable = ""  # why the device cannot take part (its data does not fit the model), if so
        self._waiting: Task | None = None  # a task whose global model has not arrived yet
        self._secure: tuple[TrainTask, DeviceSession] | None = None  # a secure round's task and its session
        self._secure_last: tuple[bytes, bytes] = (b"", b"")  # the last secure message handled and the reply sent
        self._results: dict[str, tuple[str, bytes]] = {}  # task id -> the report sent, resent if the task comes again
        self._early_global = b""
        self._stop = threading.Event()  # replaced by run()'s
        self._decision = Decision(False, ("not checked yet",), ("start",))
        self._checked_at = -float("inf")
        self._conn = MqttConnection(config.mqtt, self.topics.device_subscriptions(config.device_id),
                                    self._receive, on_connect=self._connected,
                                    will=(self.topics.status(config.device_id), encode(self._status(online=False))))

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def ready(self) -> threading.Event:
        """Set once connected with every subscription acknowledged by the broker."""
        return self._conn.subscribed

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, then publish an offline status and disconnect."""
        self._stop = stop
        self._decision, self._checked_at = self.policy.check(), time.monotonic()  # published once connected
        self._log_decision()
        self._conn.start()
        try:
            while not stop.is_set():
                next_check = self._checked_at + self.policy.check_interval_s - time.monotonic()
                try:  # sleeps until a message, the next policy check, or at most a second (to see stop)
                    topic, payload = self._inbox.get(timeout=min(1.0, max(0.01, next_check)))
                except queue.Empty:
                    pass
                else:
                    self._handle(topic, payload)
                if time.monotonic() - self._checked_at >= self.policy.check_interval_s:
                    self.recheck()
        finally:
            self._publish(self.topics.status(self.config.device_id), encode(self._status(online=False)), retain=True)
            self._conn.close()

    def _receive(self, topic: str, payload: bytes) -> None:  # paho's network thread
        self.stats.bytes_received += len(payload)  # this thread is these fields' only writer
        if topic == self.topics.global_model:
            self.stats.full_model_bytes += len(payload)
        elif topic == self.topics.delta_model:
            self.stats.delta_bytes += len(payload)
        if topic == self.topics.task(self.config.device_id):
            self._newest_task = _task_id(payload)
        self._inbox.put((topic, payload))

    def _connected(self) -> None:  # paho's network thread, after every (re)connect
        self.publish_status()  # the latest decision; the agent thread alone asks the policy

    def recheck(self, publish: bool = False) -> Decision:
        """Ask the policy again; publish a status if asked to, or if eligibility or the failed conditions changed."""
        before, self._decision = self._decision, self.policy.check()
        self._checked_at = time.monotonic()
        changed = (before.eligible, before.failed) != (self._decision.eligible, self._decision.failed)
        if changed:
            self._log_decision()
        if changed or publish:
            self.publish_status()
        return self._decision

    def _log_decision(self) -> None:
        log.info("%s: %s: %s", self.config.device_id, "eligible" if self._decision.eligible else "not eligible",
                 "; ".join(self._decision.reasons))

    # -- messages ---------------------------------------------------------------------------------

    def _handle(self, topic: str, payload: bytes) -> None:
        if not payload and topic in (self.topics.artifact, self.topics.global_model, self.topics.delta_model):
            log.debug("%s: the retained %s was cleared; keeping what it holds", self.config.device_id, topic)
            return
        try:
            if topic == self.topics.artifact:
                self._on_artifact(payload)
            elif topic == self.topics.global_model:
                self._on_global(payload)
            elif topic == self.topics.delta_model:
                self._on_delta(payload)
            elif topic == self.topics.task(self.config.device_id):
                self._on_task(payload)
            elif topic == self.topics.secure_out(self.config.device_id) and payload:
                self._on_secure(payload)
        except (ProtocolError, EdgeRuntimeError) as exc:
            log.error("%s: refused a message on %s: %s", self.config.device_id, topic, exc)

    def _on_artifact(self, payload: bytes) -> None:
        header, files = unbundle_files(payload, self.config.max_artifact_bytes)
        if self._model is not None and self._model.artifact_id == header.artifact_id:
            return
        artifact = self._cache.get(header.artifact_id) or self._cache.put(header.artifact_id, files)
        self._model, self._global = None, None
        self._follow_models()  # a new artifact: its global model comes in full
        try:
            data = self._load_data(artifact)
        except EdgeRuntimeError as exc:
            self._unusable = f"local data does not fit the model: {exc}"
            log.error("%s: %s", self.config.device_id, self._unusable)
            self.publish_status()
            return
        personal = self._personal.restore(header.artifact_id, artifact)
        residual = self._residuals.restore(header.artifact_id, artifact.manifest)
        if self.config.local_noise:
            self._account_local(self._local_dp.load(header.artifact_id))
        self._model, self._unusable = _Model(artifact, header.artifact_id, data, personal, residual), ""
        log.info("%s: model %s (%s) received, %d local examples fit it", self.config.device_id,
                 header.artifact_id[:12], artifact.manifest.model_name, len(data))
        self.publish_status()
        if self._early_global:
            payload, self._early_global = self._early_global, b""
            self._on_global(payload)

    def _load_data(self, artifact: Artifact) -> Dataset:
        source = self.config.data
        if isinstance(source, Dataset):
            data = check_arrays(source.x, source.y, artifact.manifest, f"device {self.config.device_id}'s data")
        else:
            data = load_data(source, artifact.manifest, self.config.label_column)
        return data if self._transform is None else self._transform(data, artifact.manifest)

    def _on_global(self, payload: bytes) -> None:
        if self._model is None:
            self._early_global = payload  # the artifact is still on its way; handled once it is loaded
            return
        fresh = read_global(payload, _target(self._model))
        if fresh is None:
            log.info("%s: global model for another artifact than %s, waiting for that artifact",
                     self.config.device_id, self._model.artifact_id[:12])
            return
        version, spent = self._refused_delta  # a delta for this version that could not be used was downloaded too
        self._behind = ""
        self._adopt(fresh._replace(downloaded=fresh.downloaded + (spent if version == fresh.version else 0)), "full")

    def _on_delta(self, payload: bytes) -> None:
        if self._model is None:
            return  # no model yet: the full one comes with the artifact
        try:
            fresh = read_delta(payload, _target(self._model), self._global)
        except DeltaRefused as exc:
            self.stats.deltas_refused += 1
            self._refused_delta, self._behind = (exc.version, len(payload)), f"a delta refused ({exc.reason})"
            level = logging.WARNING  # a delta that should have fitted: something is wrong on the way
            if exc.reason == NO_BASE:  # a device that was away; or new, and its full model is on its way
                level = logging.INFO if self._global is not None else logging.DEBUG
            log.log(level, "%s: delta not used (%s): %s; fetching the full model", self.config.device_id, exc.reason,
                    exc.problem)
            self._follow_models()
            return
        if fresh is not None:
            self.stats.deltas_applied += 1
            self._behind = ""  # caught up: a task that named this version, or a refused delta, is behind it now
            self._adopt(fresh, "delta")

    def _adopt(self, fresh: GlobalModel, kind: str) -> None:
        """Make ``fresh`` the current global model; start the task that waited for it."""
        self._global, self._global_bytes = fresh, fresh.downloaded
        log.info("%s: global model version %d received (%s, %d bytes)", self.config.device_id, fresh.version, kind,
                 fresh.downloaded)
        self._follow_models()
        self.publish_status()
        if self._waiting is not None:
            task, self._waiting = self._waiting, None
            self._start(task, refetch=False)

    def _fall_behind(self, why: str) -> None:
        self._behind = why
        self._follow_models()

    def _follow_models(self) -> None:
        """Follow the full-model topic while the device needs it, and only the deltas otherwise (or while the
        broker has not granted the delta subscription: an ACL written before the deltas)."""
        need = wants_full(self._global, bool(self._behind)) or not self._conn.granted(self.topics.delta_model)
        if need == self._following_full:
            return
        self._following_full = need
        if need:
            log.info("%s: fetching the full global model (%s)", self.config.device_id,
                     self._behind or ("no model yet" if self._global is None else "the coordinator sends no deltas"))
            self._conn.subscribe(self.topics.global_model)
        else:
            log.info("%s: following the global model's deltas only", self.config.device_id)
            self._conn.unsubscribe(self.topics.global_model)

    def _fetch_full_for(self, task: Task) -> bool:
        """When ``task`` names a version this device does not hold while it follows only the deltas (a delta it
        missed, a coordinator started again from another version): keep the task waiting and fetch the full model,
        which then decides whether it runs."""
        model, current = self._model, self._global
        if (self._following_full or model is None or current is None or model.artifact_id != task.artifact_id
                or current.version == task.model_version):
            return False
        self._waiting = task
        self._fall_behind(f"a task for model version {task.model_version}, holding {current.version}")
        return True

    def _on_task(self, payload: bytes) -> None:
        if not payload:
            self._waiting, self._secure = None, None  # withdrawn before it started, or its secure round is over
            return
        task: Task = decode(payload, (TrainTask, EvaluateTask))
        if task.task_id != self._newest_task:
            return  # superseded while it sat in the queue
        if task.task_id in self._results:
            topic, report = self._results[task.task_id]
            if topic:
                self._publish(topic, report)  # delivered again after a reconnect: resend, do not retrain
            return
        if isinstance(task, TrainTask) and task.secure:
            self._begin_secure(task)
        else:
            self.stats.tasks += 1
            self._start(task)

    # -- secure aggregation (edge_runtime.secagg.session; PROTOCOL.md 5.13) ---------------------------------

    def _begin_secure(self, task: TrainTask) -> None:
        """A secure round: advertise keys now; train once the neighbours' shares have arrived."""
        if self._secure is not None and self._secure[0].task_id == task.task_id:
            return  # the same task delivered again after a reconnect: the session goes on
        self.stats.tasks += 1
        from edge_runtime.secagg.session import DeviceSession

        try:
            session = DeviceSession(self.config.device_id, task)
        except EdgeRuntimeError as exc:
            self._finish(task, self._failure(task, "failed", f"secure aggregation: {exc}"))
            return
        self._secure = (task, session)
        self._publish(self.topics.secure_in(self.config.device_id), encode(session.keys()))

    def _on_secure(self, payload: bytes) -> None:
        message: SecAggRoster | SecAggRouted | SecAggUnmask = decode(payload, (SecAggRoster, SecAggRouted,
                                                                              SecAggUnmask))
        if self._secure is None or self._secure[0].task_id != message.task_id:
            log.debug("%s: secure aggregation message for another task, ignored", self.config.device_id)
            return
        task, session = self._secure
        topic = self.topics.secure_in(self.config.device_id)
        if payload == self._secure_last[0]:  # delivered again (a reconnect, a retained copy): answer as before
            if self._secure_last[1]:
                self._publish(topic, self._secure_last[1])
            return
        try:
            reply = b""
            if isinstance(message, SecAggRoster):
                reply = encode(session.shares(message))
            elif isinstance(message, SecAggRouted):
                self._secure_last = (payload, b"")
                session.accept_routed(message)
                self._start(task)  # trains, then sends the masked input (_train)
                return
            else:
                reply = encode(session.reveal(message))
            self._secure_last = (payload, reply)
            self._publish(topic, reply)
        except EdgeRuntimeError as exc:  # a SecAggError: a message this device refuses to act on
            log.warning("%s: round %d: secure aggregation refused %s: %s", self.config.device_id, task.round,
                        message.kind, exc)
            if not isinstance(message, SecAggUnmask):
                self._secure = None
                self._finish(task, self._failure(task, "failed", f"secure aggregation: {exc}"))

    # -- tasks ------------------------------------------------------------------------------------

    def _start(self, task: Task, refetch: bool = True) -> None:
        """Run ``task`` now, or keep it waiting for its global model (``refetch``: see ``_fetch_full_for``)."""
        if refetch and self._fetch_full_for(task):
            return
        model, current = self._model, self._global
        if model is None or current is None or model.artifact_id != task.artifact_id or current[0] < task.model_version:
            self._waiting = task  # the matching global model will follow on its retained topic
            return
        if current[0] != task.model_version:
            self._finish(task, self._failure(task, "failed", f"task is for model version {task.model_version}, "
                                                                f"the current global is {current[0]}"))
            return
        if isinstance(task, TrainTask) and self.pace.drops_out(task.round):
            self.stats.dropped += 1
            log.info("%s: round %d: dropping out (emulated)", self.config.device_id, task.round)
            self._results = {task.task_id: ("", b"")}  # nothing is ever sent for this task
            return
        try:
            self._check_continue(task, 0)
            result = self._run(task, model, current[1])
        except _Stopped as stop:
            if stop.outcome == "interrupted":
                self.stats.interrupted += 1
            if stop.outcome == "withdrawn":
                log.info("%s: round %d: task withdrawn by the coordinator (the round closed without it)",
                         self.config.device_id, task.round)
                return
            self._finish(task, self._failure(task, stop.outcome, stop.reason))
        except (EdgeRuntimeError, OSError) as exc:  # e.g. the cached artifact no longer verifies, or is gone
            self._finish(task, self._failure(task, "failed", str(exc)))
        else:
            self._finish(task, result)

    def _run(self, task: Task, model: _Model, base: Weights) -> tuple[str, bytes]:
        """Run a task from the global weights (and this device's personal ones); the policy counts its time
        (budget) and a finished training.

        The interpreter exists only for the task's duration.
        """
        self.policy.begin_task()
        trained = False
        try:
            trainer = Trainer(model.artifact, backend=self.backend, num_threads=self.config.num_threads)
            if isinstance(task, EvaluateTask):
                return self._evaluate(task, trainer, model, base)
            trainer.set_weights({**base, **model.personal})
            result = self._train(task, trainer, model, base)
            trained = True
            self.stats.trained += 1
            return result
        finally:
            self.policy.end_task(trained)

    def _wait(self, task: Task, seconds: float, steps: int) -> None:
        """Wait ``seconds`` of real time for the pace, checking the task may go on at least every 50 ms."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._stop.wait(min(left, 0.05))
            self._check_continue(task, steps)

    def _check_continue(self, task: Task, steps: int) -> None:
        """Raise ``_Stopped`` if the task must end now; called before training and after every step.

        The reason sent is the policy's (stable, so the coordinator can count
        devices by it); the step it stopped at goes to the log.
        """
        if self._newest_task != task.task_id:
            raise _Stopped("withdrawn", "withdrawn by the coordinator")
        if self._stop.is_set():
            raise _Stopped("interrupted", "the device is shutting down")
        if self.config.clock() > task.deadline:
            raise _Stopped("failed", "the round's deadline passed")
        self._decision = self.policy.check()
        if not self._decision.eligible:
            log.info("%s: stopping %s after %d training steps", self.config.device_id, task.task_id, steps)
            raise _Stopped("interrupted", "; ".join(self._decision.reasons))

    def _train(self, task: TrainTask, trainer: Trainer, model: _Model, base: Weights) -> tuple[str, bytes]:
        """Train from ``base`` (the global weights) with ``task.mu`` (FedProx; a non-proximal artifact refuses
        mu > 0, reported as failed); keep the personal weights, send the update of the others."""
        data, manifest = model.data, model.artifact.manifest
        log.info("%s: round %d: training %d epochs on %d examples", self.config.device_id, task.round, task.epochs,
                 len(data))
        self._wait(task, self.pace.download_wait_s(self._global_bytes), 0)
        cap = task.max_examples or None
        result = trainer.fit(data.x, data.y, epochs=task.epochs, lr=task.lr, seed=task.seed, max_examples=cap,
                             mu=task.mu, on_step=lambda step, loss: self._check_continue(task, step + 1))
        self._wait(task, self.pace.compute_wait_s(result.wall_time_s), result.steps)
        local = trainer.get_weights()
        federated = select(local, manifest.federated)
        if task.secure:  # its encoding is its own: no codec, no residual
            (payload, norm), residual = self._masked(task, federated, base), None
        else:
            update = self._updates.encode(self.config.device_id, task, federated, base, len(data), result.mean_loss,
                                          model.residual)
            payload, norm, residual = update.payload, update.header.norm, update.residual
        self._wait(task, self.pace.upload_wait_s(len(payload)), result.steps)
        if manifest.personal:  # only now: a task abandoned before its upload keeps the previous ones
            model.personal = select(local, manifest.personal)
            self._personal.save(model.artifact_id, model.personal)
        if residual is not None:  # likewise: an update never sent leaves the residual as it was
            model.residual = residual
            self._residuals.save(model.artifact_id, model.residual)
        if self.config.local_noise:  # counted before it is sent: a lost upload still counts (conservative)
            self._account_local(self._local_dp.add(model.artifact_id, self.config.local_noise))
        log.info("%s: round %d: trained in %.2f s, loss %.4f, update norm %.3f (bound %.3f), sending %d bytes%s",
                 self.config.device_id, task.round, result.wall_time_s, result.mean_loss, norm, task.clip_norm,
                 len(payload), " (masked)" if task.secure else "")
        return self.topics.update(self.config.device_id), payload

    def _masked(self, task: TrainTask, local: Weights, base: Weights) -> tuple[bytes, float]:
        """A secure round's masked input and the update's norm before clipping (for this log only)."""
        if self._secure is None or self._secure[0].task_id != task.task_id:
            raise _Stopped("failed", "secure aggregation: the round's session is gone")
        return self._updates.masked(task, local, base, self._secure[1])

    def _account_local(self, sent: list[tuple[float, int]]) -> None:
        rounds = sum(count for _, count in sent)
        eps = local_epsilon(sent, self.config.local_delta)
        self._local_spent = (rounds, eps)
        log.info("%s: local DP: %d updates sent with noise multiplier %g, epsilon %s at delta %g",
                 self.config.device_id, rounds, self.config.local_noise,
                 "not computed (dp-accounting is not installed)" if eps is None else f"{eps:.4f}",
                 self.config.local_delta)

    def _evaluate(self, task: EvaluateTask, trainer: Trainer, model: _Model, base: Weights) -> tuple[str, bytes]:
        """The global model's sums (with the artifact's initial personal weights, if it has any), and the
        personalized model's (the global weights with this device's personal ones)."""
        data = model.data
        log.info("%s: round %d: evaluating the global model on %d examples", self.config.device_id, task.round,
                 len(data))
        trainer.set_weights(base)
        result = trainer.evaluate(data.x, data.y)
        log.info("%s: round %d: evaluated, accuracy %.4f, loss %.4f", self.config.device_id, task.round,
                 result.accuracy, result.loss)
        personalized = None
        if model.personal:
            trainer.set_weights({**base, **model.personal})
            personalized = trainer.evaluate(data.x, data.y)
            log.info("%s: round %d: with its personal weights, accuracy %.4f, loss %.4f", self.config.device_id,
                     task.round, personalized.accuracy, personalized.loss)
        report = EvaluationReport(
            self.config.device_id, task.task_id, task.round, task.model_version, result.examples,
            result.loss * result.examples, round(result.accuracy * result.examples),
            personalized.loss * personalized.examples if personalized else None,
            round(personalized.accuracy * personalized.examples) if personalized else None)
        return self.topics.report(self.config.device_id), encode(report)

    def _failure(self, task: Task, outcome: str, reason: str) -> tuple[str, bytes]:
        log.warning("%s: task %s %s: %s", self.config.device_id, task.task_id, outcome, reason)
        kind: Literal["failed", "interrupted"] = "interrupted" if outcome == "interrupted" else "failed"
        message = TaskFailed(self.config.device_id, task.task_id, task.round, kind, reason[:1000])
        return self.topics.report(self.config.device_id), encode(message)

    def _finish(self, task: Task, result: tuple[str, bytes]) -> None:
        self._results = {task.task_id: result}
        self._publish(*result)
        self.recheck(publish=True)  # eligibility may have changed while it worked (an interrupted task)

    # -- status -----------------------------------------------------------------------------------

    def publish_status(self) -> None:
        self._publish(self.topics.status(self.config.device_id), encode(self._status(online=True)), retain=True)

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        with self._stats_lock:  # the agent thread and paho's (a status after a reconnect) both publish
            self.stats.bytes_sent += len(payload)
        self._conn.publish(topic, payload, retain=retain)

    def _status(self, online: bool) -> DeviceStatus:
        decision = self._decision if online else Decision(False, ("offline",))
        if online and self._unusable:
            decision = Decision(False, (self._unusable,))
        model = self._model
        signals = getattr(self.policy, "last_signals", None)  # a policy that reads signals (Scheduler) keeps them
        return DeviceStatus(
            self.config.device_id, online, decision.eligible, decision.reasons[:8],
            examples=len(model.data) if model else 0, artifact_id=model.artifact_id if model else "",
            model_version=self._global[0] if self._global else -1,
            backend=self.backend.name if model else "", sent_at=time.time(), codecs=DEVICE_CODECS,
            link=link_class(signals) if isinstance(signals, Signals) else "",
            local_noise=self.config.local_noise, local_rounds=self._local_spent[0], local_epsilon=self._local_spent[1],
            secure_aggregation=SECURE_AGGREGATION,
        )


@dataclass
class AgentStats:
    """What a device did, counted for an emulator's run summary."""

    tasks: int = 0
    trained: int = 0
    interrupted: int = 0
    dropped: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    full_model_bytes: int = 0  # global models received in full
    delta_bytes: int = 0  # deltas received, used or not
    deltas_applied: int = 0
    deltas_refused: int = 0


def _target(model: _Model) -> Target:
    return Target(model.artifact_id, model.artifact.manifest.federated)


def _task_id(payload: bytes) -> str:
    if not payload:
        return ""
    try:
        task: Task = decode(payload, (TrainTask, EvaluateTask))
    except ProtocolError:
        return ""
    return task.task_id

