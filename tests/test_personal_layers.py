"""Personal layers in the runtime: trained on the device, never on the wire, never replaced by a global model, kept
across restarts; a federation reports the personalized accuracy next to the global model's.

The artifact is a Keras model whose ``head`` is personal. Each device's data has its own labelling of the same four
clusters (device i calls cluster c ``(c + i) % 4``): one shared head cannot fit them all, a personal head can.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from coordinator.checkpoint import load_checkpoint
from coordinator.evaluation import Metrics, combine
from coordinator.evaluation_round import EvaluationRound
from coordinator.report import human_line, round_line
from coordinator.rounds import BAD_METADATA, RoundOutcome, RoundPlan, Tally
from edge_runtime.agent import AgentConfig, DeviceAgent
from edge_runtime.artifact import Artifact
from edge_runtime.broker_args import mqtt_options
from edge_runtime.cache import PersonalStore
from edge_runtime.data import Dataset
from edge_runtime.errors import WeightsError
from edge_runtime.manifest import MANIFEST_FILE, OptimizerConfig
from edge_runtime.protocol import (
    EvaluateTask,
    EvaluationReport,
    GlobalHeader,
    Topics,
    TrainTask,
    UpdateHeader,
    artifact_id,
    bundle_files,
    decode,
    decode_tensors,
    encode,
    encode_tensors,
)
from edge_runtime.trainer import Trainer
from edge_runtime.weights import Weights, load_weights, save_weights, select
from tests.federation_tools import SYSTEM_BROKER, Watcher, edgefl, round_lines, start, start_device

FEATURES, CLASSES = 8, 4
LIMIT = 10**7


@pytest.fixture(scope="session")
def personal_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import keras

    from model_export.keras_export import KerasExport, export_keras

    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu", name="body"),
                              keras.layers.Dense(CLASSES, name="head")])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    out = tmp_path_factory.mktemp("personal-artifact")
    export_keras(model, out, KerasExport(batch_size=8, optimizer=OptimizerConfig("sgd", 0.1), personal=("head",),
                                         name="personal-head"))
    return out


def device_data(index: int, examples: int = 96) -> Dataset:
    centers = np.random.default_rng(7).normal(0, 3, (CLASSES, FEATURES))
    rng = np.random.default_rng(100 + index)
    clusters = rng.integers(0, CLASSES, examples)
    x = (centers[clusters] + rng.normal(0, 0.5, (examples, FEATURES))).astype(np.float32)
    return Dataset(x, ((clusters + index) % CLASSES).astype(np.int32))


def wire_names(payload: bytes) -> set[str]:
    """The tensor names in a safetensors payload, read from its header bytes."""
    (length,) = struct.unpack("<Q", payload[:8])
    return set(json.loads(payload[8:8 + length])) - {"__metadata__"}


# --- the store, without a broker ------------------------------------------------------------------------


def test_personal_weights_are_saved_and_loaded_per_device_and_artifact(personal_artifact: Path,
                                                                       tmp_path: Path) -> None:
    artifact = Artifact.load(personal_artifact)
    manifest = artifact.manifest
    assert [w.name for w in manifest.personal] and manifest.parameter_count == sum(w.size for w in manifest.federated)
    store, other = PersonalStore(tmp_path, "alice"), PersonalStore(tmp_path, "bob")
    mine = {w.name: np.full(w.shape, 0.5, np.float32) for w in manifest.personal}
    store.save("a" * 64, mine)
    assert other.load("a" * 64, manifest) is None and store.load("b" * 64, manifest) is None
    loaded = store.load("a" * 64, manifest)
    assert loaded is not None and all(np.array_equal(loaded[n], mine[n]) for n in mine)
    assert not list(store.folder.glob(".*"))  # written atomically: no partial file left


def test_a_personal_file_that_does_not_fit_is_refused_naming_it(personal_artifact: Path, tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    artifact = Artifact.load(personal_artifact)
    store = PersonalStore(tmp_path, "alice")
    key = "c" * 64
    wrong = {w.name: np.zeros((w.shape[0] + 1, *w.shape[1:]), np.float32) for w in artifact.manifest.personal}
    store.folder.mkdir(parents=True)
    save_weights(store.path(key), wrong)
    with pytest.raises(WeightsError, match="do not fit artifact") as info:
        store.load(key, artifact.manifest)
    assert str(store.path(key)) in str(info.value) and "shape" in str(info.value)
    with caplog.at_level(logging.WARNING):
        restored = store.restore(key, artifact)
    initial = select(artifact.initial_weights(), artifact.manifest.personal)
    assert all(np.array_equal(restored[n], initial[n]) for n in initial)
    assert "starting from the artifact's initial personal weights" in caplog.text


# --- the coordinator's side, without a broker -------------------------------------------------------------

TASK = EvaluateTask("e1", 3, 2, "ab" * 32, 100.0)


def evaluation_report(device: str, examples: int, loss_sum: float, correct: int,
                      personalized: tuple[float | None, int | None] = (None, None)) -> EvaluationReport:
    return EvaluationReport(device, "e1", 3, 2, examples, loss_sum, correct, *personalized)


def test_personalized_metrics_are_example_weighted_over_the_reports_that_carry_them() -> None:
    reports = [evaluation_report("a", 4, 2.0, 1, (1.0, 3)), evaluation_report("b", 12, 6.0, 6, (3.0, 12)),
               evaluation_report("c", 16, 8.0, 4)]  # c has no personalized sums: it counts for the global ones only
    # global: loss 16 / 32, accuracy 11 / 32; personalized over a and b: loss 4 / 16, accuracy 15 / 16
    assert combine(reports) == Metrics(0.5, 0.34375, 32, 3, personalized_loss=0.25, personalized_accuracy=0.9375)
    assert combine(reports[2:]) == Metrics(0.5, 0.25, 16, 1)  # none: null, as for an artifact without them


@pytest.mark.parametrize("personalized", [(1.0, 5), (1.0, -1), (-1.0, 2), (math.inf, 2), (1.0, None), (None, 2)],
                         ids=["correct-above-examples", "negative-correct", "negative-loss", "inf-loss",
                              "loss-without-correct", "correct-without-loss"])
def test_implausible_personalized_sums_are_refused(personalized: tuple[float | None, int | None]) -> None:
    evaluation = EvaluationRound(TASK, frozenset({"a"}), personal=True)
    assert evaluation.offer("a", True, evaluation_report("a", 4, 2.0, 1, personalized)) == BAD_METADATA
    assert evaluation.metrics() is None


def test_personalized_sums_for_an_artifact_without_personal_weights_are_refused() -> None:
    """Otherwise one device could make a personalized accuracy appear for a model that has none."""
    evaluation = EvaluationRound(TASK, frozenset({"a"}), personal=False)
    assert evaluation.offer("a", True, evaluation_report("a", 4, 2.0, 1, (1.0, 3))) == BAD_METADATA


def test_the_round_line_shows_the_personalized_accuracy() -> None:
    evaluation = EvaluationRound(TASK, frozenset({"a"}), personal=True)
    assert evaluation.offer("a", True, evaluation_report("a", 4, 2.0, 1, (1.0, 3))) is None
    metrics = evaluation.metrics()
    plan = RoundPlan(3, "t", 1, frozenset({"a"}), 1, 1, 1, 1.0, 10.0)
    line = round_line(RoundOutcome(plan, "committed", "goal", 1, 4, 0.5, 0, None), Tally(), 0.0, 1.0, 2, None,
                      metrics)
    assert line["federated_eval"]["personalized_accuracy"] == 0.75
    assert line["federated_eval"]["personalized_loss"] == 0.25
    assert "acc - (devices 0.2500, personalized 0.7500)" in human_line(line)


# --- one device over a real broker, the coordinator played message by message ------------------------------


class ScriptedCoordinator:
    """Publishes the artifact, global models and tasks as the protocol says, and waits for the device's answers."""

    def __init__(self, url: str, federation: str, artifact: Path) -> None:
        self.topics = Topics(federation)
        self.watcher = Watcher(url, [f"{self.topics.root}/updates/+", f"{self.topics.root}/reports/+"])
        self.artifact = Artifact.load(artifact)
        manifest = self.artifact.manifest
        files = {name: (artifact / name).read_bytes() for name in (MANIFEST_FILE, manifest.tflite_file,
                                                                    manifest.weights_file)}
        self.id = artifact_id(files[MANIFEST_FILE])
        self.watcher.publish(self.topics.artifact, bundle_files(files, MANIFEST_FILE), retain=True)
        self._tasks = 0

    def publish_global(self, version: int, weights: Weights) -> None:
        self.watcher.publish(self.topics.global_model, encode_tensors(GlobalHeader(version, version, self.id), weights),
                             retain=True)

    def train(self, device: str, version: int) -> bytes:
        task = TrainTask(self._task_id(), self._tasks, version, self.id, 4e9, 3, 0.1, 100.0, 1)
        self.watcher.publish(self.topics.task(device), encode(task), retain=True)
        return self.watcher.wait_for(self.topics.update(device), lambda p: task.task_id.encode() in p, 60)

    def evaluate(self, device: str, version: int) -> EvaluationReport:
        task = EvaluateTask(self._task_id(), self._tasks, version, self.id, 4e9)
        self.watcher.publish(self.topics.task(device), encode(task), retain=True)
        payload = self.watcher.wait_for(self.topics.report(device), lambda p: task.task_id.encode() in p, 60)
        report: EvaluationReport = decode(payload, EvaluationReport)
        return report

    def _task_id(self) -> str:
        self._tasks += 1
        return f"task-{self._tasks}"

    def close(self) -> None:
        self.watcher.close()


@dataclass
class RunningAgent:
    agent: DeviceAgent
    stop: threading.Event
    thread: threading.Thread

    def close(self) -> None:
        self.stop.set()
        self.thread.join(15)


def run_agent(federation: str, device: str, data: Dataset, cache: Path) -> RunningAgent:
    config = AgentConfig(device, data, mqtt_options(SYSTEM_BROKER, f"{federation}-{device}"), cache,
                         Topics(federation), num_threads=1)
    agent, stop = DeviceAgent(config), threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    thread.start()
    return RunningAgent(agent, stop, thread)


@pytest.fixture
def coordinator(personal_artifact: Path, federation: str) -> Iterator[ScriptedCoordinator]:
    scripted = ScriptedCoordinator(SYSTEM_BROKER, federation, personal_artifact)
    yield scripted
    scripted.close()


def expected_sums(artifact: Artifact, weights: Weights, data: Dataset) -> tuple[float, int]:
    trainer = Trainer(artifact)
    trainer.set_weights(weights)
    result = trainer.evaluate(data.x, data.y)
    return result.loss * result.examples, round(result.accuracy * result.examples)


@pytest.mark.broker
def test_personal_weights_stay_on_the_device_through_global_models_and_restarts(
        coordinator: ScriptedCoordinator, federation: str, tmp_path: Path) -> None:
    artifact, data = coordinator.artifact, device_data(1)
    manifest = artifact.manifest
    federated_names = {w.name for w in manifest.federated}
    initial = artifact.initial_weights()
    start_global = select(initial, manifest.federated)
    coordinator.publish_global(0, start_global)
    file = PersonalStore(tmp_path / "cache", "alice").path(coordinator.id)
    device = run_agent(federation, "alice", data, tmp_path / "cache")
    try:
        payload = coordinator.train("alice", 0)
        assert wire_names(payload) == federated_names  # the personal head is not on the wire
        assert not any(w.name.encode() in payload for w in manifest.personal)
        trained = load_weights(file)  # saved when the training finished
        assert set(trained) == {w.name for w in manifest.personal}
        assert all(not np.array_equal(trained[n], initial[n]) for n in trained)

        _, delta = decode_tensors(payload, UpdateHeader, LIMIT)
        next_global = {n: start_global[n] + delta[n] for n in start_global}
        coordinator.publish_global(1, next_global)
        report = coordinator.evaluate("alice", 1)
        # the global model with the artifact's initial head, and with this device's own head: the global model
        # changed the body and left the head as trained
        assert (report.loss_sum, report.correct) == pytest.approx(expected_sums(artifact, next_global, data), rel=1e-5)
        personalized = expected_sums(artifact, {**next_global, **trained}, data)
        assert (report.personalized_loss_sum, report.personalized_correct) == pytest.approx(personalized, rel=1e-5)
        assert report.personalized_correct is not None and report.personalized_correct > report.correct
        assert all(np.array_equal(load_weights(file)[n], trained[n]) for n in trained)
    finally:
        device.close()

    device = run_agent(federation, "alice", data, tmp_path / "cache")  # a restart: same cache folder
    try:
        again = coordinator.evaluate("alice", 1)
        assert (again.personalized_loss_sum, again.personalized_correct) == (report.personalized_loss_sum,
                                                                             report.personalized_correct)
        # a global model that carries the personal tensors is refused whole: the device keeps version 1 and its head
        coordinator.publish_global(2, {**next_global, **{w.name: np.zeros(w.shape, np.float32)
                                                         for w in manifest.personal}})
        still = coordinator.evaluate("alice", 1)
        assert (still.personalized_loss_sum, still.personalized_correct) == (report.personalized_loss_sum,
                                                                             report.personalized_correct)
    finally:
        device.close()


# --- a federation of processes ---------------------------------------------------------------------------


@pytest.mark.broker
@pytest.mark.usefixtures("stop_processes")
def test_a_federation_reports_personalized_accuracy_and_sends_no_personal_weight(
        personal_artifact: Path, federation: str, tmp_path: Path) -> None:
    manifest = Artifact.load(personal_artifact).manifest
    federated, personal = {w.name for w in manifest.federated}, {w.name for w in manifest.personal}
    root = Topics(federation).root
    watcher = Watcher(SYSTEM_BROKER, [f"{root}/updates/+", f"{root}/model/global"])
    for i in range(3):
        data = device_data(i)
        np.savez(tmp_path / f"device{i}.npz", x=data.x, y=data.y)
        start_device(SYSTEM_BROKER, federation, f"p{i}", tmp_path / f"device{i}.npz", tmp_path)
    coordinator = start(edgefl("-v", "coordinator", "--artifact", str(personal_artifact), "--state-dir",
                               str(tmp_path / "state"), "--federation", federation, "--broker", SYSTEM_BROKER,
                               "--rounds", "3", "--fraction", "1", "--min-clients", "3", "--min-reports", "3",
                               "--local-epochs", "3", "--round-timeout", "30", "--eval-every", "3",
                               "--prox-mu", "0.01", "--strategy", "fedadam"), tmp_path / "coordinator.log")
    try:
        lines = round_lines(coordinator, 3, 120)
    finally:
        watcher.close()
    assert all(line["status"] == "committed" and line["reported"] == 3 for line in lines), lines
    evaluation = lines[-1]["federated_eval"]
    assert evaluation["devices"] == 3
    assert evaluation["personalized_accuracy"] is not None and evaluation["personalized_loss"] is not None
    assert evaluation["personalized_accuracy"] > evaluation["accuracy"] + 0.2, evaluation

    payloads = [(topic, payload) for topic, payload, _ in watcher.seen if payload]
    updates = [payload for topic, payload in payloads if "/updates/" in topic]
    globals_ = [payload for topic, payload in payloads if topic.endswith("/model/global")]
    assert len(updates) == 9 and len(globals_) >= 4
    for payload in updates + globals_:
        assert wire_names(payload) == federated, wire_names(payload)
        assert not any(name.encode() in payload for name in personal)
    checkpoint = load_checkpoint(tmp_path / "state", manifest.federated)  # it holds the travelling weights only
    assert set(checkpoint.weights) == federated
