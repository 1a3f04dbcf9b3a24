"""Device profiles: the catalog validates, bad profiles are refused by field, mixes are exact, and an emulated
device's eligibility follows its profile's availability model over a simulated day."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from device_profiles.availability import ProfileSignals, draw
from device_profiles.errors import ProfileError
from device_profiles.mix import assign, parse_mix
from device_profiles.profiles import CATALOG, load_profiles
from edge_runtime.policy import Scheduler
from edge_runtime.policy_file import Policy
from edge_runtime.signals import SignalReader

HOUR = 3600.0
FLEET_POLICY = Policy(require_charging=True, require_unmetered=True, max_cpu_percent=20)


def test_the_catalog_has_every_class() -> None:
    profiles = load_profiles()
    assert set(profiles) == {"pi-zero-2w", "pi-4", "pi-5", "gateway", "phone-low", "phone-mid", "phone-high"}
    assert profiles["phone-low"].network.down_kbps == 3000  # 3G at about 3 Mbps
    assert profiles["gateway"].network.up_kbps <= 100  # a constrained link
    assert all(p.power == "mains" and p.battery_mah is None for p in profiles.values() if p.name.startswith("pi"))
    assert profiles["pi-4"].availability.charging == (1.0,) * 24


def test_link_times() -> None:
    link = load_profiles()["gateway"].network  # 100 kbps up, 300 ms
    assert link.upload_s(125_000) == pytest.approx(0.3 + 10.0)


GOOD = """
[my-board]
description = "a board"
slowdown = 3
memory-mb = 2048
power = "battery"
battery-mah = 3000
drain-percent-per-minute = 0.5
dropout = 0.1
network = { kind = "wifi", up-kbps = 1000, down-kbps = 2000, latency-ms = 40 }
availability = { charging = 0.5, idle = 0.5, unmetered = 1, utc-offsets = [2] }
"""


def test_a_user_profile_file_adds_classes(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(GOOD)
    profiles = load_profiles(path)
    assert profiles["my-board"].battery_mah == 3000 and profiles["my-board"].availability.utc_offsets == (2.0,)
    assert "pi-4" in profiles


@pytest.mark.parametrize(("old", "new", "field", "problem"), [
    ('slowdown = 3\n', "", "my-board.slowdown", "missing"),
    ("slowdown = 3", "slowdown = 0", "my-board.slowdown", "expected a number from 0.1 to 1000, got 0"),
    ('power = "battery"', 'power = "solar"', "my-board.power", 'expected "mains" or "battery"'),
    ("battery-mah = 3000\n", "", "my-board.battery-mah", "missing"),
    ("up-kbps = 1000", 'up-kbps = "fast"', "my-board.network.up-kbps", "expected a number"),
    ("charging = 0.5", "charging = [0.5, 0.5]", "my-board.availability.charging", "a list of 24"),
    ("idle = 0.5", "idle = 1.5", "my-board.availability.idle", "a probability in [0, 1]"),
    ("utc-offsets = [2]", "utc-offsets = []", "my-board.availability.utc-offsets", "non-empty list"),
    ("dropout = 0.1", "dropout = 0.1\ncolour = 'red'", "my-board.colour", "unknown field"),
    ("latency-ms = 40", "latency-ms = 40, jitter-ms = 3", "my-board.network.jitter-ms", "unknown field"),
])
def test_a_bad_profile_names_its_field(tmp_path: Path, old: str, new: str, field: str, problem: str) -> None:
    assert old in GOOD
    path = tmp_path / "mine.toml"
    path.write_text(GOOD.replace(old, new, 1))
    with pytest.raises(ProfileError) as caught:
        load_profiles(path)
    assert caught.value.field == field and problem in caught.value.problem
    assert str(caught.value).startswith(f"{path}: {field}: ")


def test_a_profile_file_that_is_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text("[my-board\n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profiles(path)
    with pytest.raises(ProfileError, match="cannot read it"):
        load_profiles(tmp_path / "absent.toml")
    assert CATALOG.is_file()


def test_mixes_are_exact_and_reproducible() -> None:
    profiles = load_profiles()
    mix = parse_mix("phone-mid:0.5, phone-low:0.3,pi-4:0.2", profiles)
    fleet = assign(10, mix, seed=1)
    assert Counter(p.name for p in fleet) == {"phone-mid": 5, "phone-low": 3, "pi-4": 2}
    assert [p.name for p in fleet] == [p.name for p in assign(10, mix, seed=1)]
    assert [p.name for p in fleet] != [p.name for p in assign(10, mix, seed=2)]
    counts = Counter(p.name for p in assign(1000, parse_mix("mixed", profiles), seed=0))
    assert sum(counts.values()) == 1000 and counts["phone-mid"] == 300
    assert Counter(p.name for p in assign(7, parse_mix("pi-5", profiles), seed=0)) == {"pi-5": 7}


@pytest.mark.parametrize(("text", "problem"), [
    ("iphone:1", "no such profile; known: gateway"), ("pi-4:x", "expected a weight"), ("pi-4:0", "weight > 0"),
    (",", "expected NAME:WEIGHT"),
])
def test_bad_mixes(text: str, problem: str) -> None:
    with pytest.raises(ProfileError, match=problem):
        parse_mix(text, load_profiles())


def test_draws_are_uniform_and_independent() -> None:
    values = np.array([draw(7, d, s, w) for d in range(50) for s in range(20) for w in (1, 2)])
    assert values.min() >= 0 and values.max() < 1
    assert abs(values.mean() - 0.5) < 0.02 and abs(values.std() - 12 ** -0.5) < 0.02


def eligible_by_hour(profile_name: str, devices: int, utc_offset_h: float = 0.0) -> list[float]:
    """Fraction of ``devices`` emulated devices eligible under the fleet policy, at each local hour of a day."""
    profile = load_profiles()[profile_name]
    now = [0.0]
    schedulers = [Scheduler(FLEET_POLICY, SignalReader([ProfileSignals(profile, i, 11, lambda: now[0],
                                                                        utc_offset_h)]),
                            clock=lambda: now[0], utc_offset_h=utc_offset_h) for i in range(devices)]
    fractions = []
    for hour in range(24):
        now[0] = 20_000 * 86400.0 + (hour - utc_offset_h) * HOUR + 600  # 10 minutes past the local hour
        fractions.append(sum(s.check().eligible for s in schedulers) / devices)
    return fractions


def test_eligibility_follows_the_availability_model_over_a_day() -> None:
    a = load_profiles()["phone-mid"].availability
    expected = [a.charging[h] * a.idle[h] * a.unmetered[h] for h in range(24)]
    observed = eligible_by_hour("phone-mid", 2000)
    for hour in range(24):  # binomial standard error at n=2000 is at most 0.011
        assert abs(observed[hour] - expected[hour]) < 0.04, (hour, observed[hour], expected[hour])
    night, day = np.mean(observed[0:5]), np.mean(observed[9:17])
    assert night > 4 * day  # eligible phones peak at night


def test_local_time_follows_the_device_time_zone() -> None:
    shifted = eligible_by_hour("phone-mid", 500, utc_offset_h=5.5)
    assert np.mean(shifted[0:5]) > 4 * np.mean(shifted[9:17])  # by its own local hours, still night-heavy


def test_a_mains_powered_pi_is_eligible_whenever_idle() -> None:
    observed = eligible_by_hour("pi-4", 1000)
    assert all(abs(f - 0.85) < 0.05 for f in observed)


def test_an_emulated_device_is_reproducible_and_changes_only_at_slot_boundaries() -> None:
    profile = load_profiles()["phone-low"]
    signals = ProfileSignals(profile, 3, 5, clock=lambda: 0.0, utc_offset_h=0)
    states = [signals.state(t) for t in np.arange(0, 86400, 300.0)]
    assert states == [ProfileSignals(profile, 3, 5, lambda: 0.0, 0).state(t) for t in np.arange(0, 86400, 300.0)]
    changes = [i for i in range(1, len(states)) if states[i] != states[i - 1]]
    assert changes and all((i * 300) % 1800 == 0 for i in changes)
