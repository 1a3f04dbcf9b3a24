"""Fleet emulation without a broker: the clock, the profile's pace, the options, the prepared run folder, and an
emulated device's own eligibility over a simulated day."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from coordinator.errors import ConfigError
from device_profiles.clock import DAY_S, SimClock, Speedup, hour_of_day
from device_profiles.emulated import DEFAULT_POLICY, check_interval_s, emulated_agent
from device_profiles.fleet_config import FleetConfig, build_fleet_config
from device_profiles.partition import load_partition
from device_profiles.prepare import DeviceEntry, assign_devices, load_devices, prepare_data, save_devices
from device_profiles.profile_pace import ProfilePace
from device_profiles.profiles import load_profiles
from device_profiles.run_folder import RunFolder
from edge_runtime.data import Dataset
from edge_runtime.errors import DataError
from edge_runtime.mqtt import BrokerUrl, MqttOptions
from edge_runtime.protocol import Topics

PROFILES = load_profiles()


def test_speedup_parses_factors_and_max() -> None:
    assert Speedup.parse("max").is_max and Speedup.parse("60").factor == 60.0 and Speedup.parse(2.5).factor == 2.5
    assert Speedup.parse("max").rate(day_seconds=48) == DAY_S / 48
    assert Speedup.parse(60).real_s(120) == 2.0 and Speedup.parse("max").real_s(120) == 0.0
    for bad in ("fast", "0", "-3", "inf"):
        with pytest.raises(ValueError, match="expected a factor > 0"):
            Speedup.parse(bad)


def test_the_simulated_clock_is_a_line_through_its_start() -> None:
    clock = SimClock(wall_start=1000.0, sim_start=6 * 3600.0, rate=60.0)
    assert clock.at(1000.0) == 6 * 3600.0
    assert clock.at(1060.0) == 6 * 3600.0 + 3600.0  # a real minute is a simulated hour
    assert hour_of_day(clock.at(1060.0)) == 7.0
    assert hour_of_day(DAY_S * 3 + 1800) == 0.5


def test_pace_waits_the_rest_of_the_profiles_times_and_nothing_under_max() -> None:
    phone = PROFILES["phone-low"]  # slowdown 6, 3G: 1000 kbps up, 3000 down, 120 ms
    assert ProfilePace(phone, Speedup(2.0), 0, 0).compute_wait_s(0.5) == pytest.approx(1.0)  # 3 s simulated in all
    pace = ProfilePace(phone, Speedup(10.0), seed=0, device=0)
    assert pace.compute_wait_s(0.5) == 0.0  # 3 s simulated are 0.3 s real: the 0.5 s spent already exceed them
    assert pace.download_wait_s(375_000) == pytest.approx((0.12 + 1.0) / 10)  # 3 Mbit at 3 Mbps + latency
    assert pace.upload_wait_s(125_000) == pytest.approx((0.12 + 1.0) / 10)
    fastest = ProfilePace(phone, Speedup(None), 0, 0)
    assert (fastest.compute_wait_s(9), fastest.download_wait_s(10**9), fastest.upload_wait_s(10**9)) == (0, 0, 0)


def test_drop_outs_follow_the_profiles_probability_and_are_reproducible() -> None:
    phone = PROFILES["phone-low"]  # dropout 0.10
    paces = [ProfilePace(phone, Speedup(None), seed=4, device=d) for d in range(400)]
    drops = [[p.drops_out(r) for r in range(1, 26)] for p in paces]
    assert abs(np.mean(drops) - phone.dropout) < 0.02
    assert drops == [[ProfilePace(phone, Speedup(None), 4, d).drops_out(r) for r in range(1, 26)] for d in range(400)]


def test_an_emulated_devices_own_policy_follows_its_availability_model_over_a_day() -> None:
    """The agent's scheduler, as emulated_agent builds it, checked every simulated hour for 600 phones."""
    profile, devices, offset = PROFILES["phone-mid"], 600, 3.0
    now = [0.0]
    clock = SimClock(0.0, 0.0, 1.0)
    agents = []
    for i in range(devices):
        entry = DeviceEntry(f"dev-{i:05d}", i, profile.name, offset, 10)
        agent = emulated_agent(entry, profile, Dataset(np.zeros((10, 4), np.float32), np.zeros(10, np.int32)),
                               mqtt=MqttOptions(BrokerUrl.parse("mqtt://127.0.0.1:1"), entry.id), topics=Topics(),
                               cache_dir=Path("/nonexistent"), clock=clock, speedup=Speedup(None),
                               deadline_clock=lambda: now[0], policy=DEFAULT_POLICY, seed=1, backend=None)
        agent.policy._clock = lambda: now[0]  # type: ignore[attr-defined]  # step the day by hand
        agent.policy.reader.providers[0].clock = lambda: now[0]  # type: ignore[attr-defined]
        agents.append(agent)
    a = profile.availability
    for hour in range(24):
        now[0] = 30 * DAY_S + (hour - offset) * 3600.0 + 900  # 15 minutes past the local hour
        eligible = sum(agent.policy.check().eligible for agent in agents) / devices
        expected = a.charging[hour] * a.idle[hour] * a.unmetered[hour]
        assert abs(eligible - expected) < 0.06, (hour, eligible, expected)


def test_idle_checks_see_every_availability_slot_but_are_bounded() -> None:
    assert check_interval_s(DAY_S / 1440) == pytest.approx(1800 / 6 / 60)  # six checks per 30-minute slot
    assert check_interval_s(1.0) == 10.0 and check_interval_s(1e9) == 0.2


@pytest.mark.parametrize(("overrides", "key"), [
    ({"devices": 0}, "devices"), ({"partition": "dirichlet"}, "partition"), ({"speedup": "fast"}, "speedup"),
    ({"shard": "3/2"}, "shard"), ({"shard": "2"}, "shard"), ({"model": "resnet"}, "model"),
    ({"broker": "tcp://x"}, "broker"), ({"shard": "1/2"}, "shard"), ({"fraction": 1.5}, "fraction"),
    ({"min_reports": 5, "min_clients": 3}, "min-reports"), ({"federation": "a/b"}, "federation"),
])
def test_bad_options_are_refused_naming_the_key(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_fleet_config(None, overrides)
    assert caught.value.key == key and caught.value.source == "command line"


def test_a_toml_file_sets_any_option_and_flags_win(tmp_path: Path) -> None:
    file = tmp_path / "fleet.toml"
    file.write_text('devices = 12\nhidden = [32, 16]\nspeedup = 60\nmodel = "mlp"\nout = "~/runs/x"\nrounds = 7\n')
    config = build_fleet_config(file, {"rounds": 3})
    assert (config.devices, config.hidden, config.speedup_value.factor, config.model, config.rounds) == \
        (12, (32, 16), 60.0, "mlp", 3)
    assert config.out == Path("~/runs/x").expanduser()
    file.write_text("devices = 12\nhidden = [32, 16]\nhiden = 3\n")
    with pytest.raises(ConfigError, match=r"'hiden'.*an unknown key"):
        build_fleet_config(file, {})
    file.write_text('devices = "many"\n')
    with pytest.raises(ConfigError, match=r"'devices'.*expected an integer"):
        build_fleet_config(file, {})


def test_processes_grow_with_the_devices_one_per_250() -> None:
    assert FleetConfig(processes=1).worker_processes(100) == 1
    assert FleetConfig(processes=1).worker_processes(1000) == 4
    assert FleetConfig(processes=6).worker_processes(1000) == 6


def test_prepared_data_partition_and_devices_are_saved_and_reproducible(tmp_path: Path) -> None:
    config = FleetConfig(devices=30, dataset="wine", partition="dirichlet:0.5", seed=3, min_examples=2, model="mlp")
    first, second = RunFolder(tmp_path / "a"), RunFolder(tmp_path / "b")
    train, test, parts = prepare_data(config, first)
    train2, _, parts2 = prepare_data(config, second)
    assert np.array_equal(train.x, train2.x) and all(np.array_equal(p, q) for p, q in zip(parts, parts2, strict=True))
    assert len(train) + len(test) == 178 and min(p.size for p in parts) >= 2
    saved, spec, seed = load_partition(first.partition)
    assert str(spec) == "dirichlet:0.5" and seed == 3 and all(np.array_equal(p, q) for p, q in zip(saved, parts,
                                                                                                    strict=True))
    with np.load(first.train) as archive:
        assert np.array_equal(archive["y"], train.y)
    entries = assign_devices(config, PROFILES, parts)
    assert entries == assign_devices(config, PROFILES, parts2)
    assert [e.examples for e in entries] == [p.size for p in parts]
    assert all(e.utc_offset in PROFILES[e.profile].availability.utc_offsets for e in entries)
    save_devices(first.devices, entries)
    assert load_devices(first.devices) == entries


def test_a_folder_of_device_files_is_used_as_it_is(tmp_path: Path) -> None:
    data = tmp_path / "devices"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i, n in enumerate((10, 20, 5)):
        np.savez(data / f"site-{i}.npz", x=rng.normal(size=(n, 4)), y=rng.integers(0, 2, n))
    config = FleetConfig(devices=3, dataset=str(data), test_fraction=0.2, model="mlp")
    train, test, parts = prepare_data(config, RunFolder(tmp_path / "run"))
    assert [p.size for p in parts] == [8, 16, 4] and len(test) == 2 + 4 + 1
    assert np.array_equal(np.concatenate(parts), np.arange(len(train)))
    with pytest.raises(DataError, match="holds 3 device files but --devices is 4"):
        prepare_data(FleetConfig(devices=4, dataset=str(data), model="mlp"), RunFolder(tmp_path / "run2"))


def test_training_drains_the_battery_until_the_slot_ends() -> None:
    from device_profiles.availability import ProfileSignals

    phone = PROFILES["phone-low"]  # 0.6 % per minute while training
    now = [1800.0 * 7 + 10]
    signals = ProfileSignals(phone, 2, 9, clock=lambda: now[0], utc_offset_h=0)
    charging = signals.state(now[0])[0]
    before = signals.read().battery_percent
    ProfilePace(phone, Speedup(None), 9, 2, signals).compute_wait_s(600.0 / phone.slowdown)  # 10 simulated minutes
    after = signals.read().battery_percent
    assert before is not None and after is not None
    assert after == (before if charging else max(0, before - 6))
    now[0] += 1800  # the next slot draws its level afresh
    assert signals.read().battery_percent == ProfileSignals(phone, 2, 9, lambda: now[0], 0).read().battery_percent


def test_a_split_that_leaves_no_training_data_is_refused() -> None:
    from device_profiles.prepare import split_data

    with pytest.raises(DataError, match="cannot split 178 examples as asked"):
        split_data(FleetConfig(dataset="wine", model="mlp", test_fraction=0.999))
