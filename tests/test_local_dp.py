"""Local DP (edge_runtime.local_dp): the noise a device adds, its generator, the noised bound both sides use, the
header that withholds what it would disclose, the device's own ledger and its epsilon against dp-accounting."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting import NeighboringRelation
from dp_accounting.pld import PLDAccountant

from coordinator.rounds import NORM_EXCEEDED, OpenRound, RoundPlan
from coordinator.server_state import ServerState
from coordinator.strategies.fedavg import FedAvg
from edge_runtime.local_dp import LocalDpError, LocalDpLedger, LocalGaussian, local_epsilon, noised_bound
from edge_runtime.manifest import WeightSpec
from edge_runtime.protocol import (
    DeviceStatus,
    GlobalHeader,
    Topics,
    TrainTask,
    UpdateHeader,
    decode,
    decode_tensors,
    encode,
    encode_tensors,
)
from edge_runtime.update_stages import UpdatePipeline
from edge_runtime.updates import l2_norm
from edge_runtime.weights import select
from tests.federation_tools import offline_agent

SHAPES = {"w": (200, 250), "b": (500,)}  # 50,500 values


def task(clip_norm: float = 2.0, round_number: int = 3) -> TrainTask:
    return TrainTask("t", round=round_number, model_version=1, artifact_id="a" * 64, deadline=1e12, epochs=1,
                     lr=0.1, clip_norm=clip_norm, seed=5)


def zeros() -> dict[str, np.ndarray]:
    return {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}


def noise_of(stage: LocalGaussian, t: TrainTask | None = None) -> np.ndarray:
    out = stage(zeros(), t or task())
    assert {name: v.shape for name, v in out.items()} == SHAPES
    assert all(v.dtype == np.float32 for v in out.values())
    return np.concatenate([v.ravel() for v in out.values()]).astype(np.float64)


@pytest.mark.parametrize(("z", "clip_norm"), [(0.5, 2.0), (1.3, 0.1), (4.0, 1.0)])
def test_the_noise_has_standard_deviation_z_times_the_clip_bound(z: float, clip_norm: float) -> None:
    draws = np.concatenate([noise_of(LocalGaussian(z, test_seed=s), task(clip_norm)) for s in range(4)])
    sigma = z * clip_norm
    n = draws.size  # 202,000: the sample std's standard error is sigma / sqrt(2n), about 0.16% of sigma
    assert draws.std() == pytest.approx(sigma, rel=0.01)
    assert abs(draws.mean()) < 5 * sigma / math.sqrt(n)
    # Gaussian, not merely of the right spread: the share within one sigma
    assert np.mean(np.abs(draws) < sigma) == pytest.approx(0.6827, abs=0.01)


def test_the_noise_is_added_to_the_update() -> None:
    update = {"w": np.full((2, 3), 0.25, np.float32)}
    stage = LocalGaussian(1.0, test_seed=9)
    noised = stage(update, task())
    noise = stage({"w": np.zeros((2, 3), np.float32)}, task())
    np.testing.assert_allclose(noised["w"], 0.25 + noise["w"], atol=1e-6)


def test_two_runs_without_a_test_seed_draw_different_noise() -> None:
    assert not np.array_equal(noise_of(LocalGaussian(1.0)), noise_of(LocalGaussian(1.0)))
    stage = LocalGaussian(1.0)  # the same stage: a fresh seed for every update too
    assert not np.array_equal(noise_of(stage), noise_of(stage))


def test_the_same_test_seed_draws_the_same_noise_and_another_round_other_noise() -> None:
    np.testing.assert_array_equal(noise_of(LocalGaussian(1.0, test_seed=7)), noise_of(LocalGaussian(1.0, test_seed=7)))
    assert not np.array_equal(noise_of(LocalGaussian(1.0, test_seed=7)), noise_of(LocalGaussian(1.0, test_seed=8)))
    assert not np.array_equal(noise_of(LocalGaussian(1.0, test_seed=7), task(round_number=3)),
                              noise_of(LocalGaussian(1.0, test_seed=7), task(round_number=4)))


@pytest.mark.parametrize("z", [0.0, -1.0, math.inf, math.nan])
def test_a_bad_noise_multiplier_is_refused(z: float) -> None:
    with pytest.raises(LocalDpError, match="local-noise-multiplier"):
        LocalGaussian(z)


def test_the_noised_update_stays_within_the_noised_bound() -> None:
    n = sum(math.prod(s) for s in SHAPES.values())
    assert noised_bound(2.0, 0.0, n) == 2.0
    assert noised_bound(2.0, 0.5, n) == pytest.approx(2.0 * (1 + 0.5 * (math.sqrt(n) + 6)))
    full = {name: np.full(shape, 2.0 / math.sqrt(n), np.float32) for name, shape in SHAPES.items()}  # norm 2
    for seed in range(20):
        noised = LocalGaussian(0.5, test_seed=seed)(full, task(2.0))
        assert 2.0 < l2_norm(noised) <= noised_bound(2.0, 0.5, n)


BASE = {"w": np.zeros((1, 2), np.float32), "b": np.zeros(1, np.float32)}
LOCAL = {"w": np.array([[3.0, 4.0]], np.float32), "b": np.zeros(1, np.float32)}  # norm 5
SPECS = (WeightSpec("w", (1, 2)), WeightSpec("b", (1,)))


def test_with_local_noise_the_header_declares_it_and_withholds_the_norm_loss_and_examples() -> None:
    pipeline = UpdatePipeline.of([LocalGaussian(0.5, test_seed=1)])
    assert pipeline.local_noise == 0.5
    update = pipeline.encode("dev", task(2.0), LOCAL, BASE, examples=40, train_loss=0.7)
    header, tensors = decode_tensors(update.payload, UpdateHeader, 1 << 20)
    assert header == update.header == UpdateHeader("dev", "t", 3, 1, 1, 0.0, 0.0, "float32", local_noise=0.5)
    clipped = np.array([[1.2, 1.6]])  # [3, 4] clipped to 2
    noise = LocalGaussian(0.5, test_seed=1)({"w": np.zeros((1, 2), np.float32), "b": np.zeros(1, np.float32)},
                                            task(2.0))
    np.testing.assert_allclose(tensors["w"], clipped + noise["w"], atol=1e-6)  # not re-clipped to 2


def test_without_local_noise_the_header_is_what_it_was() -> None:
    update = UpdatePipeline().encode("dev", task(2.0), LOCAL, BASE, examples=40, train_loss=0.7)
    assert update.header == UpdateHeader("dev", "t", 3, 1, 40, 0.7, 5.0, "float32")
    assert b"local_noise" not in update.payload
    assert b"local_" not in encode(DeviceStatus("d", online=True, eligible=True))


def test_the_new_fields_travel() -> None:
    status = DeviceStatus("d", online=True, eligible=True, local_noise=1.5, local_rounds=4, local_epsilon=12.5)
    assert decode(encode(status), DeviceStatus) == status


def test_the_coordinator_checks_a_noised_update_against_the_noised_bound() -> None:
    plan = RoundPlan(number=3, task_id="t3", model_version=2, selected=frozenset({"a", "b"}), eligible=10, goal=2,
                     min_reports=2, clip_norm=1.0, deadline=1000.0)
    current = OpenRound(plan, ServerState("ab" * 32, "fedavg", BASE), SPECS, FedAvg())
    big = {"w": np.array([[3.0, 4.0]], np.float32), "b": np.zeros(1, np.float32)}  # norm 5 > 1
    header = UpdateHeader("a", "t3", 3, 2, 1, 0.0, 0.0)
    assert current.offer_update("a", True, header, big) == NORM_EXCEEDED
    noisy = UpdateHeader("a", "t3", 3, 2, 1, 0.0, 0.0, local_noise=1.0)  # bound 1 + sqrt(3) + 6
    assert current.offer_update("a", True, noisy, big) is None
    too_big = {"w": np.array([[6.0, 8.0]], np.float32), "b": np.zeros(1, np.float32)}  # 10 > 8.73
    noisy_b = UpdateHeader("b", "t3", 3, 2, 1, 0.0, 0.0, local_noise=1.0)
    assert current.offer_update("b", True, noisy_b, too_big) == NORM_EXCEEDED


def direct_epsilon(z: float, k: int, delta: float) -> float:
    """k updates, each a Gaussian of noise z C on an update of norm at most C, composed by dp-accounting's PLD
    accountant under REPLACE_ONE (whose convention takes the multiplier relative to C and moves the mean by 2C),
    at a fine discretization (accurate at these moderate epsilons)."""
    accountant = PLDAccountant(NeighboringRelation.REPLACE_ONE, value_discretization_interval=1e-5)
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), k))
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize(("z", "k"), [(8.0, 1), (8.0, 5), (20.0, 12)])
def test_the_device_epsilon_after_k_updates_is_dp_accountings(z: float, k: int) -> None:
    eps = local_epsilon([(z, k)], 1e-5)
    assert eps == pytest.approx(dp_accounting.get_epsilon_gaussian(z / 2 / math.sqrt(k), 1e-5), rel=1e-9)
    assert eps == pytest.approx(direct_epsilon(z, k, 1e-5), rel=2e-3)


def test_updates_at_two_noise_multipliers_compose() -> None:
    eps = local_epsilon([(10.0, 3), (20.0, 4)], 1e-6)
    accountant = PLDAccountant(NeighboringRelation.REPLACE_ONE, value_discretization_interval=1e-5)
    accountant.compose(dp_accounting.ComposedDpEvent([
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(10.0), 3),
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(20.0), 4)]))
    assert eps == pytest.approx(accountant.get_epsilon(1e-6), rel=2e-3)
    assert local_epsilon([], 1e-5) == 0.0
    with pytest.raises(LocalDpError, match="local-delta"):
        local_epsilon([(1.0, 1)], 0.0)


def test_the_ledger_counts_updates_per_artifact_and_noise_across_restarts(tmp_path: Path) -> None:
    ledger = LocalDpLedger(tmp_path, "dev-1")
    assert ledger.load("x" * 64) == []
    ledger.add("x" * 64, 2.0)
    ledger.add("x" * 64, 2.0)
    assert ledger.add("x" * 64, 3.0) == [(2.0, 2), (3.0, 1)]
    again = LocalDpLedger(tmp_path, "dev-1")
    assert again.load("x" * 64) == [(2.0, 2), (3.0, 1)]
    assert again.load("y" * 64) == [] and LocalDpLedger(tmp_path, "dev-2").load("x" * 64) == []
    ledger.path("x" * 64).write_text("{not json")
    with pytest.raises(LocalDpError, match="not a local DP ledger"):
        again.load("x" * 64)


def test_a_device_with_local_noise_sends_a_noised_update_counts_it_and_reports_its_epsilon(
        federation_files: Any, tmp_path: Path) -> None:
    """The agent end to end without a broker: the update declares its noise and withholds its metadata, the
    device's ledger counts it (across a restart), and its status carries z, the count and the epsilon."""
    topics = Topics("local-dp")
    agent = offline_agent(federation_files, tmp_path / "cache", topics, local_noise=2.0, local_delta=1e-6,
                          local_noise_test_seed=11)
    start = select(agent._model.artifact.initial_weights(), agent._model.artifact.manifest.federated)
    agent._handle(topics.global_model, encode_tensors(GlobalHeader(0, 0, agent._model.artifact_id), start))

    def train(a: Any, task_id: str) -> tuple[UpdateHeader, dict[str, np.ndarray]]:
        t = TrainTask(task_id, 1, 0, a._model.artifact_id, time.time() + 600, 1, 0.05, 1.0, 7)
        a._newest_task = t.task_id
        a._handle(topics.task("u1"), encode(t))
        payload = [p for topic, p in a._conn.published if topic == topics.update("u1")][-1]
        return decode_tensors(payload, UpdateHeader, 1 << 24)

    header, tensors = train(agent, "t-1")
    assert (header.local_noise, header.examples, header.train_loss, header.norm) == (2.0, 1, 0.0, 0.0)
    n = sum(v.size for v in tensors.values())
    assert 1.0 < l2_norm(tensors) <= noised_bound(1.0, 2.0, n)  # noised: above the clip bound, within the noised one
    status = decode([p for topic, p in agent._conn.published if topic == topics.status("u1")][-1], DeviceStatus)
    assert (status.local_noise, status.local_rounds) == (2.0, 1)
    assert status.local_epsilon == pytest.approx(local_epsilon([(2.0, 1)], 1e-6))

    restarted = offline_agent(federation_files, tmp_path / "cache", topics, local_noise=2.0, local_delta=1e-6)
    restarted._handle(topics.global_model, encode_tensors(GlobalHeader(0, 0, restarted._model.artifact_id), start))
    train(restarted, "t-2")
    status = decode([p for topic, p in restarted._conn.published if topic == topics.status("u1")][-1], DeviceStatus)
    assert status.local_rounds == 2
    assert status.local_epsilon == pytest.approx(local_epsilon([(2.0, 2)], 1e-6))
    assert LocalDpLedger(tmp_path / "cache", "u1").load(agent._model.artifact_id) == [(2.0, 2)]


def test_the_fleet_hands_its_local_noise_to_every_worker(tmp_path: Path) -> None:
    from dataclasses import asdict

    from coordinator.errors import ConfigError
    from device_profiles.clock import SimClock
    from device_profiles.fleet_config import build_fleet_config
    from device_profiles.run_folder import write_json
    from device_profiles.worker import WorkerSpec

    assert build_fleet_config(None, {"local_noise_multiplier": 2.0}).local_noise_multiplier == 2.0
    assert build_fleet_config(None, {}).local_noise_multiplier is None
    with pytest.raises(ConfigError, match="local-noise-multiplier"):
        build_fleet_config(None, {"local_noise_multiplier": -1.0})
    spec = WorkerSpec("run", 0, [1, 2], "mqtt://127.0.0.1:1883", "f", "auto", SimClock(0.0, 0.0, 1.0), "max", 0,
                      None, None, None, local_noise=1.5)
    write_json(tmp_path / "spec.json", asdict(spec))
    assert WorkerSpec.read(tmp_path / "spec.json").local_noise == 1.5
    older = {k: v for k, v in asdict(spec).items() if k != "local_noise"}  # a spec written before the field
    write_json(tmp_path / "older.json", older)
    assert WorkerSpec.read(tmp_path / "older.json").local_noise == 0.0
