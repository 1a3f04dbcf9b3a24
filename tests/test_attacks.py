"""Emulated attackers (``edgefl fleet --attack``): each hostile update step checked by hand, the choice of attackers,
the refusals of bad specs, and small fleets on Mosquitto that record their attackers and suffer from them."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest

from coordinator.errors import ConfigError
from device_profiles.attacks import (
    ATTACK_KINDS,
    MARGIN,
    AttackSpec,
    GaussianNoise,
    Hostile,
    ScaleUp,
    ShiftedLabels,
    SignFlip,
    hostile,
    rescaled,
)
from device_profiles.clock import SimClock, Speedup
from device_profiles.emulated import DEFAULT_POLICY, emulated_agent
from device_profiles.fleet_config import FleetConfig, build_fleet_config
from device_profiles.prepare import DeviceEntry, assign_devices
from device_profiles.profiles import load_profiles
from edge_runtime.codecs import get_codec
from edge_runtime.data import Dataset
from edge_runtime.manifest import Manifest, WeightSpec
from edge_runtime.mqtt import BrokerUrl, MqttOptions
from edge_runtime.protocol import Topics, TrainTask, UpdateHeader, decode_tensors
from edge_runtime.update_stages import UpdatePipeline
from edge_runtime.updates import l2_norm
from tests.federation_tools import SYSTEM_BROKER, clear_retained
from tests.test_fleet import fleet

# an honest update of norm 5 (3-4-5), and a task clipping to 2
UPDATE = {"w": np.array([[3.0, 0.0]], np.float32), "b": np.array([-4.0], np.float32)}


def task(clip_norm: float = 2.0, round_number: int = 1, codec: str = "float32") -> TrainTask:
    return TrainTask(f"t-{round_number}", round_number, round_number - 1, "a" * 64, 1e12, 1, 0.1, clip_norm, 0,
                     codec=codec)


def test_sign_flip_sends_the_negated_update_at_the_bound() -> None:
    sent = SignFlip()(UPDATE, task(clip_norm=2.0))
    scale = 2.0 * (1 - MARGIN) / 5.0
    np.testing.assert_allclose(sent["w"], [[-3.0 * scale, 0.0]], rtol=1e-7)
    np.testing.assert_allclose(sent["b"], [4.0 * scale], rtol=1e-7)
    assert 2.0 * (1 - 2 * MARGIN) < l2_norm(sent) <= 2.0
    assert all(value.dtype == np.float32 for value in sent.values())


def test_scale_sends_the_honest_direction_at_the_bound_even_for_a_small_update() -> None:
    small = {name: value / np.float32(64) for name, value in UPDATE.items()}  # norm 5/64, far inside the bound
    sent = ScaleUp()(small, task(clip_norm=2.0))
    scale = 2.0 * (1 - MARGIN) / 5.0
    np.testing.assert_allclose(sent["w"], [[3.0 * scale, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(sent["b"], [-4.0 * scale], rtol=1e-6)
    assert 2.0 * (1 - 2 * MARGIN) < l2_norm(sent) <= 2.0


def test_a_zero_update_has_no_direction_to_flip_or_scale() -> None:
    zero = {name: np.zeros_like(value) for name, value in UPDATE.items()}
    for stage in (SignFlip(), ScaleUp()):
        assert all(not value.any() for value in stage(zero, task()).values())
    assert rescaled(zero, 3.0)["w"].shape == (1, 2)


def test_noise_is_gaussian_at_the_bound_and_drawn_per_seed_device_and_round() -> None:
    big = {"w": np.zeros((40, 50), np.float32), "b": np.zeros(50, np.float32)}
    noise = GaussianNoise(seed=3, device=7)
    sent = noise(big, task(clip_norm=2.0, round_number=4))
    assert {name: value.shape for name, value in sent.items()} == {"w": (40, 50), "b": (50,)}
    assert 2.0 * (1 - 2 * MARGIN) < l2_norm(sent) <= 2.0
    values = np.concatenate([value.ravel() for value in sent.values()])
    assert abs(values.mean()) < 3 * values.std() / np.sqrt(values.size)  # centred
    again = GaussianNoise(seed=3, device=7)(big, task(clip_norm=2.0, round_number=4))
    assert all(np.array_equal(sent[name], again[name]) for name in sent)
    for other in (GaussianNoise(3, 8)(big, task(round_number=4)), noise(big, task(round_number=5)),
                  GaussianNoise(4, 7)(big, task(round_number=4))):
        assert abs(float(np.dot(other["b"], sent["b"]))) < 0.5 * l2_norm({"b": sent["b"]}) ** 2


def test_label_flip_moves_every_label_to_the_next_class() -> None:
    manifest = cast(Manifest, SimpleNamespace(num_classes=3))
    data = Dataset(np.arange(12, dtype=np.float32).reshape(6, 2), np.array([0, 1, 2, 2, 1, 0], np.int32))
    flipped = ShiftedLabels()(data, manifest)
    assert flipped.y.tolist() == [1, 2, 0, 0, 2, 1] and flipped.y.dtype == np.int32
    assert not np.any(flipped.y == data.y)  # a derangement: no example keeps its label
    assert flipped.x is data.x


def test_each_kind_is_injected_as_stages_or_a_transform() -> None:
    assert hostile("sign-flip", 0, 1) == Hostile("sign-flip", (SignFlip(),))
    assert hostile("scale", 0, 1).stages == (ScaleUp(),)
    label = hostile("label-flip", 0, 1)
    assert label.stages == () and label.transform == ShiftedLabels()
    assert hostile("noise", 5, 9).stages == (GaussianNoise(5, 9),)
    with pytest.raises(ValueError, match="sign-flip, scale, label-flip, noise"):
        hostile("poison", 0, 1)


@pytest.mark.parametrize("codec", ["float32", "float16", "int8", "int4", "sign", "rotated-sign", "topk:0.1+int8"])
@pytest.mark.parametrize("kind", ATTACK_KINDS)
def test_every_attack_passes_the_coordinators_norm_check_after_encoding(kind: str, codec: str) -> None:
    """The coordinator's check: the decoded update's norm within ``Codec.max_norm`` of the bound."""
    rng = np.random.default_rng(0)
    base = {"w": rng.standard_normal((30, 40)).astype(np.float32), "b": rng.standard_normal(40).astype(np.float32)}
    local = {name: value + rng.standard_normal(value.shape).astype(np.float32) for name, value in base.items()}
    bound = 1.7
    update = UpdatePipeline.of(hostile(kind, 0, 3).stages).encode("dev-3", task(bound, codec=codec), local, base,
                                                                   10, 0.5)
    header, wire = decode_tensors(update.payload, UpdateHeader, 1 << 20)
    specs = tuple(WeightSpec(name, value.shape) for name, value in base.items())
    sent = get_codec(codec).decode(wire, specs, task(bound).seed)
    assert header.codec == codec
    assert l2_norm(sent) <= get_codec(codec).max_norm(bound, 30 * 40 + 40)
    if not get_codec(codec).feedback:  # an unbiased codec keeps the attack at the bound; a biased one shortens it
        assert l2_norm(sent) > bound * (1 - 1e-2)


def test_attackers_are_exactly_the_rounded_fraction_and_reproducible() -> None:
    for devices, fraction, count in ((20, 0.1, 2), (10, 0.25, 3), (5, 0.5, 3), (7, 0.0, 0), (16, 0.5, 8),
                                     (3, 0.99, 3), (1000, 0.3, 300)):
        spec = AttackSpec("scale", fraction)
        chosen = spec.attackers(devices, seed=11)
        assert spec.count(devices) == count and len(chosen) == count and chosen <= set(range(devices))
        assert chosen == spec.attackers(devices, seed=11)
    spec = AttackSpec("scale", 0.5)
    assert spec.attackers(100, seed=1) != spec.attackers(100, seed=2)
    assert AttackSpec("noise", 0.2).attackers(100, seed=1) < spec.attackers(100, seed=1)  # a larger fraction adds
    assert spec.attackers(100, seed=-5) == spec.attackers(100, seed=-5)


def test_the_device_table_names_the_attackers() -> None:
    config = FleetConfig(devices=10, attack="label-flip:0.3", seed=4)
    entries = assign_devices(config, load_profiles(), [np.arange(3)] * 10)
    attacking = {e.index for e in entries if e.attack is not None}
    assert attacking == AttackSpec("label-flip", 0.3).attackers(10, seed=4) and len(attacking) == 3
    assert {e.attack for e in entries} == {"label-flip", None}
    assert all(e.attack is None for e in assign_devices(FleetConfig(devices=10, seed=4), load_profiles(),
                                                        [np.arange(3)] * 10))


@pytest.mark.parametrize("bad", ["sign-flip", "sign-flip:1", "sign-flip:1.5", "scale:-0.1", "poison:0.1",
                                 "noise:half", "noise:nan", ":0.1", "SIGN-FLIP:0.1"])
def test_bad_attack_specs_are_refused_listing_the_kinds(bad: str) -> None:
    with pytest.raises(ConfigError, match="sign-flip, scale, label-flip, noise") as caught:
        FleetConfig(attack=bad)
    assert caught.value.key == "attack" and caught.value.found == bad


def test_the_attack_is_read_from_toml_and_a_flag_wins(tmp_path: Path) -> None:
    (tmp_path / "fleet.toml").write_text('attack = "sign-flip:0.1"\n')
    assert build_fleet_config(tmp_path / "fleet.toml", {}).attack_spec == AttackSpec("sign-flip", 0.1)
    assert build_fleet_config(tmp_path / "fleet.toml", {"attack": "noise:0.2"}).attack == "noise:0.2"
    assert FleetConfig().attack_spec is None
    (tmp_path / "bad.toml").write_text('attack = "sign-flip:2"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: 'attack'"):
        build_fleet_config(tmp_path / "bad.toml", {})


def test_an_emulated_attacker_is_the_real_agent_with_injected_stages() -> None:
    entry = DeviceEntry("dev-00002", 2, "pi-4", 0.0, 10, "noise")
    profile = load_profiles()["pi-4"]
    data = Dataset(np.zeros((10, 4), np.float32), np.zeros(10, np.int32))
    agents = [emulated_agent(entry, profile, data, mqtt=MqttOptions(BrokerUrl.parse("mqtt://127.0.0.1:1"), entry.id),
                             topics=Topics(), cache_dir=Path("/nonexistent"), clock=SimClock(0.0, 0.0, 1.0),
                             speedup=Speedup(None), deadline_clock=lambda: 0.0, policy=DEFAULT_POLICY, seed=1,
                             backend=None, hostile=attack) for attack in (hostile("noise", 1, 2), None)]
    assert agents[0]._updates.stages == (GaussianNoise(1, 2),)
    assert agents[1]._updates.stages == () and agents[1]._transform is None


# -- small fleets on Mosquitto ------------------------------------------------------------------------------------

STEADY = """[steady]
description = "always charging, idle and on Wi-Fi; never drops out"
slowdown = 1.0
memory-mb = 4096
power = "mains"
dropout = 0.0
network = { kind = "wifi", up-kbps = 50000, down-kbps = 50000, latency-ms = 5 }
availability = { charging = 1.0, idle = 1.0, unmetered = 1.0, utc-offsets = [0] }
"""
DEVICES = 16
# The least accuracy FedAvg must lose to half the devices attacking, per kind (about half what was measured).
FEDAVG_LOSS_AT_HALF = {"sign-flip": 0.4, "label-flip": 0.2, "noise": 0.08, "scale": 0.08}


def run_small_fleet(folder: Path, attack: str | None) -> dict[str, Any]:
    """16 always-available devices, all selected every round, 5 rounds of an MLP on IID digits; its summary."""
    (folder / "steady.toml").write_text(STEADY)
    federation = f"test-{uuid.uuid4().hex[:10]}"
    try:
        done = fleet(folder / "run", "--devices", str(DEVICES), "--rounds", "5", "--model", "mlp", "--partition", "iid",
                     "--profile-file", str(folder / "steady.toml"), "--profiles", "steady", "--fraction", "1",
                     "--round-interval", "0", "--broker", SYSTEM_BROKER, "--federation", federation, "--seed", "3",
                     *(("--attack", attack) if attack else ()), timeout=120)
    finally:
        clear_retained(SYSTEM_BROKER, federation)
    assert done.returncode == 0, done.stderr
    summary: dict[str, Any] = json.loads((folder / "run" / "summary.json").read_text())
    assert summary["completed"] and summary["final_accuracy"] is not None
    return summary


@pytest.fixture(scope="module")
def honest_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    yield run_small_fleet(tmp_path_factory.mktemp("honest"), None)


@pytest.mark.broker
@pytest.mark.parametrize("kind", ATTACK_KINDS)
def test_a_fleet_records_its_attackers(kind: str, tmp_path: Path, honest_run: dict[str, Any]) -> None:
    summary = run_small_fleet(tmp_path, f"{kind}:0.5")
    table = json.loads((tmp_path / "run" / "devices.json").read_text())
    attackers = [entry["id"] for entry in table if entry["attack"] == kind]
    assert len(attackers) == DEVICES // 2 and all(entry["attack"] in (kind, None) for entry in table)
    assert [e["index"] for e in table if e["attack"]] == sorted(AttackSpec(kind, 0.5).attackers(DEVICES, seed=3))
    record = summary["attack"]
    assert (record["kind"], record["fraction"], record["devices"], record["device_ids"]) == (kind, 0.5, 8, attackers)
    assert record["updates_trained"] >= 8  # every attacker is selected in every round
    assert 'attack = "' + kind in (tmp_path / "run" / "fleet.toml").read_text()
    assert honest_run["attack"] is None
    # Every kind hurts FedAvg. Measured with this fleet (final accuracy, honest 0.906): sign-flip 0.00,
    # label-flip 0.48, noise 0.73, scale 0.75; the same in a second run (every device reports every round).
    assert honest_run["final_accuracy"] >= 0.6
    assert summary["final_accuracy"] <= honest_run["final_accuracy"] - FEDAVG_LOSS_AT_HALF[kind], (summary, honest_run)
