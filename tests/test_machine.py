"""The coordinator's state machine with no broker: phases, what it publishes, saves and logs, and when.

Updates are multiples of 1/64 (exact in float32), so committed weights are compared with ``==``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.config import CoordinatorConfig
from coordinator.machine import Effect, Line, Now, Publish, RoundMachine, Save
from coordinator.server_state import ServerState
from edge_runtime.manifest import WeightSpec
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
    decode,
    decode_tensors,
    encode,
    encode_tensors,
)

AID = "cd" * 32
SPECS = (WeightSpec("w", (2,)), WeightSpec("b", (1,)))
GLOBAL = {"w": np.array([1.0, -1.0], np.float32), "b": np.array([0.5], np.float32)}
TOPICS = Topics("test")
DEVICES = ("d1", "d2", "d3")


def machine(**changes: Any) -> RoundMachine:
    options: dict[str, Any] = {"artifact": Path("artifact"), "state_dir": Path("state"), "federation": "test",
                               "rounds": 2, "fraction": 0.5, "min_clients": 2, "min_reports": 2, "over_select": 1.5,
                               "round_timeout": 30.0, "eval_every": 0, **changes}
    config = CoordinatorConfig(**options)
    strategy = config.build_strategy()
    ids = iter(f"task-{i}" for i in range(100))
    return RoundMachine(config, ServerState(AID, strategy.name, GLOBAL, strategy.init(GLOBAL)), strategy, SPECS,
                        b"the artifact bundle", payload_limit=10**6, task_lr=0.05, new_id=lambda: next(ids))


def at(t: float) -> Now:
    return Now(clock=1000.0 + t, real=t, wall=1.7e9 + t)


def status(device: str, eligible: bool = True) -> tuple[str, bytes]:
    return TOPICS.status(device), encode(DeviceStatus(device, True, eligible, artifact_id=AID, model_version=0))


def published(effects: list[Effect]) -> dict[str, bytes]:
    return {e.topic: e.payload for e in effects if isinstance(e, Publish)}


def phases(effects: list[Effect]) -> list[str]:
    return [decode(e.payload, CoordinatorState).phase for e in effects
            if isinstance(e, Publish) and e.topic == TOPICS.coordinator]


def update(task: TrainTask, device: str, delta: tuple[float, float, float], examples: int = 1) -> tuple[str, bytes]:
    header = UpdateHeader(device, task.task_id, task.round, task.model_version, examples, 1.0, 0.1)
    tensors = {"w": np.array(delta[:2], np.float32), "b": np.array(delta[2:], np.float32)}
    return TOPICS.update(device), encode_tensors(header, tensors)


def started(m: RoundMachine, devices: tuple[str, ...] = DEVICES) -> list[Effect]:
    """Start, let three eligible devices report, settle: returns the effects of the first round's start."""
    first = m.start(at(0))
    assert published(first).keys() == {TOPICS.artifact, TOPICS.delta_model, TOPICS.global_model, TOPICS.coordinator}
    assert published(first)[TOPICS.delta_model] == b""  # a delta a predecessor left retained is cleared
    for device in devices:
        assert m.receive(*status(device), at(0.1)) == []
    return m.tick(at(1.5))


def tasks(effects: list[Effect]) -> dict[str, TrainTask]:
    return {topic.split("/")[-2]: decode(payload, TrainTask) for topic, payload in published(effects).items()
            if topic.endswith("/task") and payload}


def test_nothing_is_selected_before_the_retained_statuses_settle() -> None:
    m = machine()
    m.start(at(0))
    for device in DEVICES:
        m.receive(*status(device), at(0.1))
    assert m.tick(at(0.9)) == [] and m.phase == "settling"
    effects = m.tick(at(1.0))
    assert m.phase == "training"
    withdrawn = [e.topic for e in effects if isinstance(e, Publish) and e.payload == b""]
    assert withdrawn == [TOPICS.task(d) for d in DEVICES]  # whatever a crashed predecessor left
    assert phases(effects) == ["waiting", "training"]
    assert set(tasks(effects)) == set(DEVICES)


def test_a_round_commits_saves_publishes_and_logs_in_that_order() -> None:
    m = machine()
    sent = tasks(started(m))
    task = sent["d1"]
    assert (task.round, task.model_version, task.artifact_id, task.lr, task.codec, task.max_examples) == (
        1, 0, AID, 0.05, "float32", 1024)
    assert m.receive(*update(sent["d1"], "d1", (0.5, -0.25, 0.25), examples=1), at(2)) == []
    effects = m.receive(*update(sent["d2"], "d2", (-0.25, 0.5, 0.5), examples=3), at(3))
    kinds = [type(e).__name__ for e in effects]
    assert kinds.index("Save") < kinds.index("Line")
    save = next(e for e in effects if isinstance(e, Save))
    assert (save.state.next_round, save.state.model_version, save.state.committed_rounds) == (2, 1, 1)
    np.testing.assert_array_equal(save.state.weights["w"], [0.9375, -0.6875])  # GLOBAL + (1 A + 3 B) / 4
    np.testing.assert_array_equal(save.state.weights["b"], [0.9375])
    header, weights = decode_tensors(published(effects)[TOPICS.global_model], GlobalHeader, 10**6)
    assert header.version == 1 and weights["w"].tobytes() == save.state.weights["w"].tobytes()
    line = next(e for e in effects if isinstance(e, Line)).line
    assert (line["round"], line["status"], line["closed_by"], line["reported"], line["examples"]) == (
        1, "committed", "goal", 2, 4)
    assert line["cancelled"] == 1 and line["strategy"]["update_norm"] > 0
    assert m.phase == "training"  # round 2 started at once (no interval)


def test_the_deadline_abandons_a_round_below_min_reports_and_keeps_the_model() -> None:
    m = machine(rounds=1)
    sent = tasks(started(m))
    m.receive(*update(sent["d1"], "d1", (0.5, -0.25, 0.25)), at(2))
    assert m.tick(at(30.9)) == []  # deadline at clock 1000 + 1.5 + 30
    effects = m.tick(at(31.6))
    save = next(e for e in effects if isinstance(e, Save)).state
    assert (save.next_round, save.model_version) == (2, 0)
    assert TOPICS.global_model not in published(effects)
    line = next(e for e in effects if isinstance(e, Line)).line
    assert (line["status"], line["closed_by"], line["reported"], line["dropped"]) == ("abandoned", "deadline", 1, 2)
    assert m.finished and phases(effects)[-1] == "finished"


def test_a_refused_update_is_counted_in_the_round_line() -> None:
    m = machine(rounds=1, max_examples=10)
    sent = tasks(started(m))
    m.receive(*update(sent["d1"], "d1", (0.5, -0.25, 0.25), examples=11), at(2))
    m.receive(*update(sent["d2"], "d2", (0.5, -0.25, 0.25), examples=2**63 - 1), at(2))
    m.receive(TOPICS.update("d3"), b"not safetensors", at(2))
    effects = m.tick(at(40))
    line = next(e for e in effects if isinstance(e, Line)).line
    assert line["rejected"] == {"examples_exceeded": 2, "malformed": 1}
    assert line["status"] == "abandoned"


def test_waits_for_enough_eligible_devices_and_the_round_interval() -> None:
    m = machine(round_interval=100.0, rounds=3)
    m.start(at(0))
    m.receive(*status("d1"), at(0.1))
    m.receive(*status("d2", eligible=False), at(0.1))
    m.tick(at(1.5))
    assert m.phase == "waiting"
    effects = m.receive(*status("d2"), at(2))
    assert m.phase == "training"
    sent = tasks(effects)
    m.receive(*update(sent["d1"], "d1", (0.5, -0.25, 0.25)), at(3))
    m.receive(*update(sent["d2"], "d2", (0.5, -0.25, 0.25)), at(3))
    assert m.phase == "waiting"
    assert m.tick(at(101.9)) == [] and m.phase == "waiting"  # round 1 started at clock 1002
    m.tick(at(102))
    assert m.phase == "training"


def test_federated_evaluation_follows_a_commit_and_its_metrics_join_the_line() -> None:
    m = machine(rounds=1, eval_every=1)
    sent = tasks(started(m))
    m.receive(*update(sent["d1"], "d1", (0.5, -0.25, 0.25)), at(2))
    effects = m.receive(*update(sent["d2"], "d2", (0.5, -0.25, 0.25)), at(2))
    assert not any(isinstance(e, Line) for e in effects) and m.phase == "evaluating"
    asked = {t.split("/")[-2]: decode(p, EvaluateTask) for t, p in published(effects).items()
             if t.endswith("/task") and p}
    assert set(asked) == set(DEVICES)
    for i, (device, task) in enumerate(sorted(asked.items())):
        if i < 2:
            report = EvaluationReport(device, task.task_id, task.round, task.model_version, 10, 5.0, 8)
            effects = m.receive(TOPICS.report(device), encode(report), at(3))
        else:
            failed = TaskFailed(device, task.task_id, task.round, "interrupted", "unplugged")
            effects = m.receive(TOPICS.report(device), encode(failed), at(3))
    line = next(e for e in effects if isinstance(e, Line)).line
    assert line["federated_eval"]["accuracy"] == pytest.approx(0.8)
    assert m.finished


def test_stop_drops_an_open_round_without_a_line_or_checkpoint() -> None:
    m = machine()
    sent = tasks(started(m))
    m.receive(*update(sent["d1"], "d1", (0.5, -0.25, 0.25)), at(2))
    effects = m.stop(at(3))
    assert not any(isinstance(e, (Line, Save)) for e in effects)
    assert [t for t, p in published(effects).items() if t.endswith("/task")] == [TOPICS.task(d) for d in DEVICES]
    assert phases(effects) == ["finished"] and m.finished
    assert m.state.next_round == 1


def test_an_overflowing_train_loss_is_written_as_null_with_the_reason() -> None:
    m = machine(rounds=1)
    sent = tasks(started(m))
    for device in ("d1", "d2"):
        header = UpdateHeader(device, sent[device].task_id, 1, 0, 1000, 1.7e308, 0.1)
        tensors = {"w": np.zeros(2, np.float32), "b": np.zeros(1, np.float32)}
        effects = m.receive(TOPICS.update(device), encode_tensors(header, tensors), at(2))
    line = next(e for e in effects if isinstance(e, Line)).line
    assert line["train_loss"] is None
    assert line["nulled"] == {"train_loss": "inf is not a JSON number"}
    json.dumps(line, allow_nan=False)  # strict JSON


def test_waiting_for_devices_says_how_many_are_eligible_and_the_top_reasons_of_the_others() -> None:
    m = machine(min_clients=2)
    m.start(at(0))
    reasons = {"d2": ("battery 12% < 20%",), "d3": ("battery 12% < 20%", "metered network")}
    m.receive(*status("d1"), at(0.1))
    for device, why in reasons.items():
        m.receive(TOPICS.status(device), encode(DeviceStatus(device, True, False, why, artifact_id=AID)), at(0.1))
    m.receive(TOPICS.status("d4"), encode(DeviceStatus("d4", False, False, ("offline",))), at(0.1))
    assert m.waiting_reason() is None  # still settling
    m.tick(at(1.5))
    assert m.phase == "waiting"
    assert m.waiting_reason() == ("round 1 waits for 2 eligible devices (1 now; 3 online, 2 not eligible: top "
                                  "reasons battery 12% < 20% (2), metered network (1))")
    m.receive(*status("d2"), at(2))
    assert m.phase == "training" and m.waiting_reason() is None


def test_waiting_for_the_fleet_says_how_many_hold_the_model() -> None:
    m = machine(expect_devices=3)
    m.start(at(0))
    m.receive(*status("d1"), at(0.1))
    m.receive(TOPICS.status("d2"), encode(DeviceStatus("d2", True, True, artifact_id="")), at(0.1))
    m.tick(at(1.5))
    assert m.phase == "fleet"
    assert m.waiting_reason() == "round 1 waits for 3 devices to hold the model (1 do; 2 online)"


def test_a_late_update_from_an_over_selected_device_is_counted_not_warned_about(
        caplog: pytest.LogCaptureFixture) -> None:
    m = machine(rounds=2)
    first = tasks(started(m))
    m.receive(*update(first["d1"], "d1", (0.5, -0.25, 0.25)), at(2))
    m.receive(*update(first["d2"], "d2", (0.5, -0.25, 0.25)), at(2))  # goal met: round 2 opens at once
    assert m.phase == "training"
    with caplog.at_level("DEBUG", logger="coordinator.machine"):
        m.receive(*update(first["d3"], "d3", (0.5, -0.25, 0.25)), at(3))
    assert [r.levelname for r in caplog.records] == ["DEBUG"]
    effects = m.tick(at(40))  # round 2's deadline
    line = next(e for e in effects if isinstance(e, Line)).line
    assert (line["round"], line["late"], line["rejected"]) == (2, 1, {})


def test_waiting_with_no_device_at_all_says_so_briefly() -> None:
    m = machine(min_clients=2)
    m.start(at(0))
    m.tick(at(1.5))
    assert m.waiting_reason() == "round 1 waits for 2 eligible devices (0 now; 0 online)"
