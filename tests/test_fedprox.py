"""FedProx end to end: the proximal step against numpy, the drift it bounds, the option on both commands, and a
device whose artifact has no proximal term reporting the task failed to a coordinator over a real broker."""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.config import CoordinatorConfig, build_config
from coordinator.errors import ConfigError
from coordinator.machine import Effect, Line, Now, Publish, RoundMachine
from coordinator.server import Coordinator
from coordinator.server_state import ServerState
from device_profiles.fleet_config import build_fleet_config
from edge_runtime.artifact import Artifact
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.manifest import MANIFEST_FILE, OptimizerConfig
from edge_runtime.protocol import Topics, TrainTask, artifact_id, bundle_files, decode
from edge_runtime.trainer import Trainer
from edge_runtime.updates import l2_norm
from model_export.spec import ModelSpec
from tests.conftest import Exporter, FederationFiles
from tests.federation_tools import SYSTEM_BROKER, Watcher, start_device

FORMAT_1 = Path(__file__).parent / "data" / "artifact-format-1"  # exported before FedProx: its train takes no mu


# --- the step, by hand -----------------------------------------------------------------------------


def softmax_cross_entropy_gradient(x: np.ndarray, y: np.ndarray, kernel: np.ndarray,
                                   bias: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of the mean cross-entropy of softmax(x @ kernel + bias), in float64."""
    logits = x @ kernel + bias
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return x.T @ p / len(y), p.mean(axis=0)


def test_the_proximal_step_matches_the_hand_computed_one(export: Exporter) -> None:
    d, k, lr, mu = 5, 3, 0.5, 0.75
    folder = export(ModelSpec("mlp", (d,), k, hidden=(), batch_size=4, optimizer=OptimizerConfig("sgd", lr),
                              name="one-dense"))
    trainer = Trainer(Artifact.load(folder))
    [kernel_name] = [w.name for w in trainer.manifest.weights if len(w.shape) == 2]
    [bias_name] = [w.name for w in trainer.manifest.weights if len(w.shape) == 1]
    rng = np.random.default_rng(3)
    anchor = {kernel_name: rng.normal(0, 0.5, (d, k)).astype(np.float32),
              bias_name: rng.normal(0, 0.5, (k,)).astype(np.float32)}
    x = rng.normal(0, 1, (4, d)).astype(np.float32)
    y = np.array([0, 2, 1, 2], np.int32)
    trainer.set_weights(anchor)
    trainer.train_step(x, y, mu=0.0)  # at the anchor the proximal term is 0: this step moves away from it
    moved = trainer.get_weights()
    trainer.train_step(x, y, mu=mu)

    w, b = (moved[n].astype(np.float64) for n in (kernel_name, bias_name))
    grad_w, grad_b = softmax_cross_entropy_gradient(x.astype(np.float64), y, w, b)
    expected_w = w - lr * (grad_w + mu * (w - anchor[kernel_name]))
    expected_b = b - lr * (grad_b + mu * (b - anchor[bias_name]))
    after = trainer.get_weights()
    np.testing.assert_allclose(after[kernel_name], expected_w, atol=1e-5)
    np.testing.assert_allclose(after[bias_name], expected_b, atol=1e-5)
    # and not the plain step: the term really was added
    assert np.abs(after[kernel_name] - (w - lr * grad_w)).max() > 1e-3


def test_set_weights_moves_the_anchor(export: Exporter) -> None:
    """After set_weights the proximal term pulls towards the new weights, not the artifact's initial ones."""
    folder = export(ModelSpec("mlp", (5,), 3, hidden=(), batch_size=4, optimizer=OptimizerConfig("sgd", 0.5),
                              name="one-dense"))
    trainer = Trainer(Artifact.load(folder))
    x, y = np.zeros((4, 5), np.float32), np.zeros(4, np.int32)  # zero inputs: the kernel's loss gradient is 0
    start = {name: np.full(value.shape, 2.0, np.float32) for name, value in trainer.get_weights().items()}
    trainer.set_weights(start)
    trainer.train_step(x, y, mu=1.0)  # w == anchor: only the loss gradient, which is 0 for the kernel
    kernel = next(n for n, v in start.items() if v.ndim == 2)
    np.testing.assert_array_equal(trainer.get_weights()[kernel], start[kernel])


def test_a_proximal_term_keeps_the_device_closer_to_the_global_model(federation_files: FederationFiles) -> None:
    artifact = Artifact.load(federation_files.artifact)
    assert artifact.manifest.proximal
    data = np.load(federation_files.devices[0])
    global_weights = artifact.initial_weights()
    drift = {}
    for mu in (0.0, 0.1, 1.0):
        trainer = Trainer(artifact)
        trainer.set_weights(global_weights)
        trainer.fit(data["x"], data["y"], epochs=5, seed=1, mu=mu)
        local = trainer.get_weights()
        drift[mu] = l2_norm({n: local[n] - global_weights[n] for n in global_weights})
    assert drift[1.0] < drift[0.1] < drift[0.0], drift
    assert drift[1.0] < 0.7 * drift[0.0], drift


def test_mu_is_refused_by_an_artifact_without_the_proximal_term() -> None:
    trainer = Trainer(Artifact.load(FORMAT_1))
    x, y = np.zeros((4, 4), np.float32), np.zeros(4, np.int32)
    trainer.fit(x, y, steps=1, mu=0.0)  # plain training still works
    with pytest.raises(EdgeRuntimeError, match="exported without one"):
        trainer.fit(x, y, steps=1, mu=0.01)


# --- the option ------------------------------------------------------------------------------------


def test_prox_mu_is_an_option_of_both_commands_flag_and_toml(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text("prox-mu = 0.01\nartifact = 'a'\nstate-dir = 's'\n")
    assert build_config(toml, {}).prox_mu == 0.01
    assert build_config(toml, {"prox_mu": 0.5}).prox_mu == 0.5  # the flag wins
    assert build_config(None, {"artifact": Path("a"), "state_dir": Path("s")}).prox_mu == 0.0
    fleet = tmp_path / "f.toml"
    fleet.write_text("prox-mu = 0.02\nstrategy = 'fedadam'\n")
    config = build_fleet_config(fleet, {})
    coordinator = config.coordinator_config(Path("a"), Path("s"), None, "mqtt://127.0.0.1", "auto", 1.0)
    assert (coordinator.prox_mu, coordinator.strategy) == (0.02, "fedadam")


@pytest.mark.parametrize("value", [-0.1, float("inf"), float("nan")])
def test_a_bad_prox_mu_is_refused_naming_it(value: float) -> None:
    with pytest.raises(ConfigError, match="prox-mu"):
        build_config(None, {"artifact": Path("a"), "state_dir": Path("s"), "prox_mu": value})


def test_the_cli_takes_prox_mu() -> None:
    import argparse

    from coordinator.cli import register as coordinator_command
    from device_profiles.fleet_cli import register as fleet_command

    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    coordinator_command(commands)
    fleet_command(commands)
    assert parser.parse_args(["coordinator", "--prox-mu", "0.01"]).prox_mu == 0.01
    assert parser.parse_args(["fleet", "--prox-mu", "0.2"]).prox_mu == 0.2


def test_every_train_task_carries_the_configured_mu() -> None:
    from tests.test_machine import machine, started, tasks

    sent = tasks(started(machine(prox_mu=0.25, strategy="median")))
    assert sent and {task.mu for task in sent.values()} == {0.25}
    assert {task.mu for task in tasks(started(machine())).values()} == {0.0}


def test_a_failed_task_shows_on_the_terminal_line() -> None:
    from coordinator.report import human_line

    line = {"round": 2, "status": "abandoned", "closed_by": "all_answered", "reported": 0, "selected": 3,
            "failed": 3, "rejected": {}, "bytes_in": 10, "bytes_out": 20, "duration_s": 1.0, "test": None,
            "federated_eval": None}
    assert "0/3 reported  acc -  3 failed  in 10 B" in human_line(line)


def test_the_coordinator_refuses_prox_mu_for_an_artifact_without_the_term(tmp_path: Path) -> None:
    config = CoordinatorConfig(artifact=FORMAT_1, state_dir=tmp_path, prox_mu=0.01)
    with pytest.raises(ConfigError, match="prox-mu") as info:
        Coordinator(config)
    assert "re-export" in str(info.value) and "'mlp'" in str(info.value)


# --- a device that cannot, over a real broker ---------------------------------------------------------


def machine_for(artifact: Path, config: CoordinatorConfig) -> RoundMachine:
    """The coordinator's state machine as ``Coordinator`` builds it, without its check of ``prox-mu`` (which would
    refuse this artifact before any device sees a task)."""
    loaded = Artifact.load(artifact)
    manifest = loaded.manifest
    files = {name: (artifact / name).read_bytes() for name in (MANIFEST_FILE, manifest.tflite_file,
                                                                manifest.weights_file)}
    strategy = config.build_strategy()
    weights = loaded.initial_weights()
    state = ServerState(artifact_id(files[MANIFEST_FILE]), strategy.name, weights, strategy.init(weights))
    return RoundMachine(config, state, strategy, manifest.federated, bundle_files(files, MANIFEST_FILE),
                        payload_limit=10**6, task_lr=0.1)


def run_over(machine: RoundMachine, url: str, timeout: float) -> tuple[list[dict[str, Any]], list[Publish]]:
    """Carry the machine's effects out over the broker, as ``coordinator.server`` does, until it finishes; returns
    its round lines and what it published."""
    watcher = Watcher(url, [filter for filter, _ in machine.topics.coordinator_subscriptions()])
    lines: list[dict[str, Any]] = []
    published: list[Publish] = []

    def carry_out(effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Publish):
                watcher.publish(effect.topic, effect.payload, retain=effect.retain)
                published.append(effect)
            elif isinstance(effect, Line):
                lines.append(effect.line)

    def now() -> Now:
        return Now(time.time(), time.monotonic(), time.time())

    carry_out(machine.start(now()))
    deadline = time.monotonic() + timeout
    try:
        while not machine.finished and time.monotonic() < deadline:
            try:
                topic, payload, _ = watcher.messages.get(timeout=0.1)
            except queue.Empty:
                carry_out(machine.tick(now()))
            else:
                carry_out(machine.receive(topic, payload, now()))
    finally:
        watcher.close()
    assert machine.finished, f"the coordinator did not finish within {timeout} s"
    return lines, published


@pytest.mark.broker
@pytest.mark.usefixtures("stop_processes")
def test_a_device_whose_artifact_has_no_proximal_term_reports_the_task_failed(tmp_path: Path,
                                                                                federation: str) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x=rng.normal(size=(12, 4)).astype(np.float32), y=rng.integers(0, 3, 12))
    start_device(SYSTEM_BROKER, federation, "old", tmp_path / "data.npz", tmp_path)
    config = CoordinatorConfig(artifact=FORMAT_1, state_dir=tmp_path / "state", broker=SYSTEM_BROKER,
                               federation=federation, rounds=1, fraction=1.0, min_clients=1, min_reports=1,
                               round_timeout=30, eval_every=0, prox_mu=0.05, strategy="fedadam")
    lines, published = run_over(machine_for(FORMAT_1, config), SYSTEM_BROKER, 90)
    topic = Topics(federation).task("old")
    [task] = [decode(p.payload, TrainTask) for p in published if p.topic == topic and p.payload]
    assert task.mu == 0.05
    [line] = lines
    assert (line["status"], line["closed_by"], line["selected"], line["failed"]) == ("abandoned", "all_answered",
                                                                                    1, 1), line
    [(reason, count)] = line["failure_reasons"].items()
    assert count == 1
    assert reason.startswith("mu = 0.05 asks for FedProx's proximal term, but artifact 'mlp' was exported without")
    assert "re-export it" in reason

