"""Secure aggregation end to end on a real broker: ``edgefl fleet --secure-aggregation`` against the same fleet
without it, an observer subscribed to every topic of the federation, and devices that drop out after sharing.

What the observer records cannot give back one device's update: each masked input is indistinguishable from
uniform noise modulo 2^32 (a chi-square test), while the plain run's updates are not; and the secure round's
global model equals the plain round's within the quantization step."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from device_profiles.fleet import run_fleet
from device_profiles.fleet_config import FleetConfig
from edge_runtime.protocol import MASKED_TENSOR
from edge_runtime.secagg.quantize import VALUE_BITS
from edge_runtime.weights import weights_from_bytes
from tests.federation_tools import SYSTEM_BROKER, Watcher

pytestmark = pytest.mark.broker
CLIP = 10.0


def config(out: Path, secure: bool, **options: Any) -> FleetConfig:
    policy = out.parent / "anytime.toml"
    policy.write_text("")  # no constraints: every device may train, so both runs select the same devices
    settings: dict[str, Any] = {
        "devices": 8, "rounds": 1, "profiles": "pi-5", "policy": policy, "fraction": 1.0, "over_select": 1.0,
        "min_clients": 3, "min_reports": 3, "round_interval": 0.0, "weighting": "uniform", "clip_norm": CLIP,
        "model": "mlp", "seed": 3, "round_timeout": 20.0, **options}
    return FleetConfig(broker=SYSTEM_BROKER, federation=f"sa-{uuid.uuid4().hex[:8]}", out=out,
                       secure_aggregation=secure, **settings)


def observed(cfg: FleetConfig) -> tuple[list[dict[str, Any]], list[tuple[str, bytes, bool]]]:
    """Run the fleet with an observer on every topic of its federation: its round lines and everything seen."""
    watcher = Watcher(SYSTEM_BROKER, [f"edgefl/{cfg.federation}/#"])
    lines: list[dict[str, Any]] = []
    try:
        run_fleet(cfg, on_round=lines.append, note=lambda *_: None)
    finally:
        watcher.close()
    return lines, list(watcher.seen)


def global_weights(out: Path) -> dict[str, np.ndarray]:
    (path,) = sorted((out / "coordinator").glob("server-v*.safetensors"))[-1:]
    return load_file(str(path))


def chi2_top_bits(words: np.ndarray) -> float:
    """Chi-square statistic of the top 6 bits of 32-bit words against uniform (63 degrees of freedom)."""
    counts = np.bincount((words.astype(np.uint64) >> np.uint64(26)).astype(np.int64), minlength=64)
    expected = words.size / 64
    return float(np.sum((counts - expected) ** 2 / expected))


def test_a_secure_round_equals_the_plain_round_within_quantization_and_reveals_no_update(tmp_path: Path) -> None:
    plain_lines, plain_seen = observed(config(tmp_path / "plain", secure=False))
    secure_lines, secure_seen = observed(config(tmp_path / "secure", secure=True))
    (plain,), (secure,) = plain_lines, secure_lines
    assert plain["status"] == secure["status"] == "committed"
    assert secure["reported"] == plain["reported"] >= 3
    info = secure["secure"]
    assert info["abandoned"] is None and info["masked"] == info["self_masks_removed"] == secure["reported"]
    assert secure["codec_mix"] == {"secagg": secure["reported"]}

    # the same devices trained the same updates: the models differ by the quantization alone
    a, b = global_weights(tmp_path / "plain"), global_weights(tmp_path / "secure")
    step = 2 * CLIP / (2**VALUE_BITS - 1)
    gaps = [float(np.max(np.abs(a[name] - b[name]))) for name in a]
    assert max(gaps) <= step + 1e-5
    assert max(gaps) > 0  # it did go through the quantizer

    # what crossed the broker: masked inputs only, each uniform-looking; the plain updates are not
    masked = [weights_from_bytes(p) for t, p, _ in secure_seen if "/updates/" in t and p]
    assert len(masked) == secure["reported"]
    for tensors in masked:
        assert set(tensors) == {MASKED_TENSOR}
        assert chi2_top_bits(tensors[MASKED_TENSOR]) < 130  # p ~ 3e-6 for 63 degrees of freedom
    updates = [weights_from_bytes(p) for t, p, _ in plain_seen if "/updates/" in t and p]
    assert updates
    for tensors in updates:
        bits = np.concatenate([np.asarray(v, np.float32).ravel().view(np.uint32) for v in tensors.values()])
        assert chi2_top_bits(bits) > 1000
    kinds = {json.loads(p)["kind"] for t, p, _ in secure_seen if "secagg" in t and p}
    assert kinds == {"secagg-keys", "secagg-roster", "secagg-shares", "secagg-routed", "secagg-unmask",
                     "secagg-reveal"}  # every stage went through the broker


def test_devices_dropping_after_sharing_leave_masks_the_survivors_remove_and_dp_noises_the_sum(
        tmp_path: Path) -> None:
    profiles = tmp_path / "flaky.toml"
    profiles.write_text('[flaky]\ndescription = "a Pi that vanishes often"\nslowdown = 1.0\nmemory-mb = 4096\n'
                        'power = "mains"\ndropout = 0.25\n'
                        'network = { kind = "ethernet", up-kbps = 90000, down-kbps = 90000, latency-ms = 5 }\n'
                        'availability = { charging = 1.0, idle = 1.0, unmetered = 1.0, utc-offsets = [0] }\n')
    cfg = config(tmp_path / "flaky", secure=True, devices=16, rounds=3, profiles="flaky", profile_file=profiles,
                 min_reports=3, round_timeout=8.0, dp_noise_multiplier=0.5, dp_clip=CLIP)
    lines, _ = observed(cfg)
    assert len(lines) == 3
    recovered = 0
    for line in lines:
        info = line["secure"]
        if line["status"] == "committed":
            assert info["abandoned"] is None and line["reported"] == info["masked"]
            assert info["masked"] + info["dropped_after_sharing"] == info["shared"]
            recovered += info["pairwise_masks_recovered"]
            assert line["privacy"]["noise_multiplier"] == 0.5 and 0 < line["privacy"]["epsilon"] < float("inf")
        else:
            assert info["abandoned"] in ("cannot_unmask", "too_few_devices", "no_masked_inputs")
    assert recovered > 0, [line["secure"] for line in lines]
