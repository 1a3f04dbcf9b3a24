"""The eligibility scheduler on scripted signal timelines, and the policy file's validation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from edge_runtime.errors import PolicyError, SignalError
from edge_runtime.policy import Decision, Scheduler
from edge_runtime.policy_file import HourWindow, Policy, load_policy, parse_window, policy_from_mapping
from edge_runtime.signals import SignalReader, Signals

HOUR = 3600.0
DAY = 24 * HOUR
MIDNIGHT = 20_000 * DAY  # a UTC midnight; the schedulers below run at UTC+0 unless a test says otherwise
GOOD = Signals(power="charging", battery_percent=90.0, cpu_percent=5.0, user_idle_s=900.0, temperature_c=40.0,
               network="unmetered", interface="wlan0", free_memory_mb=800.0, free_disk_mb=5000.0)


class Timeline:
    """A scripted device: the test moves the clock and changes the signals, the scheduler reads them."""

    name, refresh_s = "timeline", 0.0

    def __init__(self, policy: Policy, start: float = MIDNIGHT + 12 * HOUR, utc_offset_h: float = 0.0) -> None:
        self.start, self.now, self.signals = start, start, GOOD
        self.error: SignalError | None = None
        self.scheduler = Scheduler(policy, SignalReader([self]), clock=lambda: self.now, utc_offset_h=utc_offset_h)

    def read(self) -> Signals:
        if self.error:
            raise self.error
        return self.signals

    def at(self, t: float, **changes: object) -> Decision:
        """Move to ``start + t`` seconds with these signal changes, and decide."""
        self.now = self.start + t
        self.signals = replace(self.signals, **changes)  # type: ignore[arg-type]
        return self.scheduler.check()


PRODUCTION = Policy(require_charging=True, min_battery_percent=50, require_unmetered=True, max_cpu_percent=20,
                    min_user_idle_s=300, max_temperature_c=60, min_free_memory_mb=200, min_free_disk_mb=500)


def test_every_condition_holding_gives_its_reasons() -> None:
    decision = Timeline(PRODUCTION).at(0)
    assert decision.eligible and decision.failed == ()
    assert decision.reasons == (
        "charging", "battery 90% (minimum 50%)", "unmetered network (wlan0)",
        "other processes use 5% CPU (maximum 20%)", "user idle 900 s (minimum 300 s)",
        "temperature 40.0 °C (maximum 60 °C)", "800 MB memory free (minimum 200 MB)",
        "5000 MB disk free (minimum 500 MB)")


@pytest.mark.parametrize(("change", "failed", "reason"), [
    ({"power": "battery"}, "power", "not charging"),
    ({"battery_percent": 49.0}, "battery", "battery 49% (minimum 50%)"),
    ({"network": "metered", "interface": "wwan0"}, "network", "metered network (wwan0)"),
    ({"network": "offline", "interface": None}, "network", "offline network"),
    ({"cpu_percent": 35.0}, "cpu", "other processes use 35% CPU (maximum 20%)"),
    ({"user_idle_s": 12.0}, "user", "user idle 12 s (minimum 300 s)"),
    ({"temperature_c": 71.5}, "temperature", "temperature 71.5 °C (maximum 60 °C)"),
    ({"free_memory_mb": 150.0}, "memory", "150 MB memory free (minimum 200 MB)"),
    ({"free_disk_mb": 20.0}, "disk", "20 MB disk free (minimum 500 MB)"),
])
def test_each_failing_condition_is_named(change: dict[str, object], failed: str, reason: str) -> None:
    decision = Timeline(PRODUCTION).at(0, **change)
    assert decision == Decision(False, (reason,), (failed,))


def test_no_constraints() -> None:
    assert Timeline(Policy()).at(0) == Decision(True, ("no policy constraints",))


def test_mains_power_has_no_battery_to_protect() -> None:
    decision = Timeline(PRODUCTION).at(0, power="mains", battery_percent=None)
    assert decision.eligible and decision.reasons[0] == "on mains"


def test_hysteresis_holds_before_eligible_and_drops_at_once() -> None:
    t = Timeline(replace(PRODUCTION, hold_s=60))
    assert t.at(0) == Decision(False, ("conditions have held for 0 s of the required 60 s",), ("hold",))
    assert t.at(59).failed == ("hold",)
    assert t.at(60).eligible
    assert t.at(61, power="battery") == Decision(False, ("not charging",), ("power",))  # lost at once
    assert t.at(62, power="charging").failed == ("hold",)  # the hold starts again
    assert not t.at(121).eligible
    assert t.at(122).eligible


def test_a_running_task_is_not_held_back() -> None:
    t = Timeline(replace(PRODUCTION, hold_s=60, cpu_idle_s=30))
    assert t.at(100).failed == ("cpu",)  # quiet for 0 s of 30 s
    t.scheduler.begin_task()  # a task the coordinator sent while it was eligible elsewhere in time
    assert t.at(101).eligible
    assert t.at(102, power="battery").failed == ("power",)


def test_cpu_must_stay_quiet_for_its_duration() -> None:
    t = Timeline(Policy(max_cpu_percent=20, cpu_idle_s=120))
    assert t.at(0).failed == ("cpu",)
    assert t.at(119).reasons == ("CPU quiet (5% <= 20%) for 119 s of 120 s",)
    assert t.at(120).eligible
    assert t.at(130, cpu_percent=60.0).failed == ("cpu",)
    assert t.at(140, cpu_percent=5.0).failed == ("cpu",)  # quiet again, from 140 s
    assert t.at(260).eligible


@pytest.mark.parametrize(("clock", "eligible"), [
    ("21:59", False), ("22:00", True), ("23:59", True), ("00:00", True), ("03:30", True), ("05:59", True),
    ("06:00", False), ("12:00", False),
])
def test_window_across_midnight(clock: str, eligible: bool) -> None:
    hours, minutes = (int(v) for v in clock.split(":"))
    t = Timeline(Policy(allowed_hours=(parse_window("22:00-06:00"),)), start=MIDNIGHT)
    decision = t.at(hours * HOUR + minutes * 60)
    assert decision.eligible is eligible
    assert decision.reasons == (f"local time {clock} {'within' if eligible else 'outside'} 22:00-06:00",)


def test_windows_use_the_device_local_time() -> None:
    policy = Policy(allowed_hours=(parse_window("22:00-06:00"),))
    assert Timeline(policy, start=MIDNIGHT + 20 * HOUR, utc_offset_h=2).at(0).eligible  # 22:00 at UTC+2
    assert not Timeline(policy, start=MIDNIGHT + 20 * HOUR, utc_offset_h=-5).at(0).eligible  # 15:00 at UTC-5


def test_several_windows() -> None:
    policy = Policy(allowed_hours=(parse_window("01:00-05:00"), parse_window("12:00-13:30")))
    t = Timeline(policy, start=MIDNIGHT)
    assert [t.at(h * HOUR).eligible for h in (0, 1, 4.9, 5, 12, 13.4, 13.5)] == \
        [False, True, True, False, True, True, False]


@pytest.mark.parametrize(("policy", "code", "reason"), [
    (Policy(require_charging=True), "power", "power source unknown"),
    (Policy(min_battery_percent=20), "battery", "battery level unknown"),
    (Policy(require_unmetered=True), "network", "network type unknown"),
    (Policy(max_cpu_percent=50), "cpu", "CPU use unknown"),
    (Policy(min_user_idle_s=60), "user", "user activity unknown"),
    (Policy(max_temperature_c=70), "temperature", "temperature unknown"),
    (Policy(min_free_disk_mb=10), "disk", "free disk space unknown"),
])
def test_unknown_signals_block_or_are_ignored(policy: Policy, code: str, reason: str) -> None:
    t = Timeline(policy)
    t.signals = Signals()
    assert t.at(0) == Decision(False, (reason,), (code,))
    lenient = Timeline(replace(policy, unknown_signals="ignore"))
    lenient.signals = Signals()
    assert lenient.at(0) == Decision(True, (f"{reason} (ignored)",))


def test_unreadable_signals_make_the_device_ineligible() -> None:
    t = Timeline(replace(PRODUCTION, hold_s=10))
    t.at(0)
    assert t.at(10).eligible
    t.error = SignalError("signals.json", "not JSON (Expecting value at line 1)")
    decision = t.at(11)
    assert decision.failed == ("signals",) and "not JSON" in decision.reasons[0]
    t.error = None
    assert t.at(12).failed == ("hold",)


def test_daily_budget_counts_training_time_and_resets_at_local_midnight() -> None:
    t = Timeline(Policy(daily_budget_s=600), start=MIDNIGHT + 10 * HOUR)
    t.at(0)
    t.scheduler.begin_task()
    assert t.at(400).reasons == ("trained 400 s today (daily budget 600 s)",)
    t.scheduler.end_task(trained=True)
    t.at(1000)
    t.scheduler.begin_task()
    assert t.at(1199).eligible  # 599 s used
    decision = t.at(1200)  # 600 s used: stops the running task
    assert decision == Decision(False, ("trained 600 s today (daily budget 600 s)",), ("budget",))
    t.scheduler.end_task(trained=False)
    assert not t.at(13 * HOUR).eligible  # 23:00: still today
    assert t.at(14 * HOUR).eligible  # midnight: a new day


def test_a_task_across_midnight_counts_each_side_on_its_own_day() -> None:
    t = Timeline(Policy(daily_budget_s=1000), start=MIDNIGHT - 300)  # 23:55
    t.at(0)
    t.scheduler.begin_task()
    t.at(900)  # 00:10 the next day
    t.scheduler.end_task(trained=True)
    assert t.at(901).reasons == ("trained 600 s today (daily budget 1000 s)",)


def test_minimum_interval_between_participations() -> None:
    t = Timeline(Policy(min_interval_s=HOUR))
    t.at(0)
    t.scheduler.begin_task()
    t.at(10)
    t.scheduler.end_task(trained=False)  # interrupted: not a participation
    assert t.at(20).eligible
    t.scheduler.begin_task()
    t.at(30)
    t.scheduler.end_task(trained=True)
    assert t.at(30 + HOUR - 1) == Decision(False, ("last trained 3599 s ago (minimum 3600 s)",), ("interval",))
    assert t.at(30 + HOUR).eligible


# -- the policy file ---------------------------------------------------------------------------------

def test_policy_file_loads_every_key(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("""
require-charging = true
min-battery-percent = 40
require-unmetered = true
max-cpu-percent = 25.5
cpu-idle-seconds = 60
min-user-idle-seconds = 300
max-temperature-c = 70
min-free-memory-mb = 256
min-free-disk-mb = 1024
allowed-hours = ["22:00-06:30", "12:00-13:00"]
min-interval-seconds = 3600
daily-budget-seconds = 1800
hold-seconds = 120
unknown-signals = "ignore"
check-seconds = 5

[network]
metered-interfaces = ["usb", "wwan0"]
unmetered-interfaces = ["wwan1"]
""")
    assert load_policy(path) == Policy(
        require_charging=True, min_battery_percent=40, require_unmetered=True, max_cpu_percent=25.5,
        cpu_idle_s=60, min_user_idle_s=300, max_temperature_c=70, min_free_memory_mb=256, min_free_disk_mb=1024,
        allowed_hours=(HourWindow(22 * 60, 6 * 60 + 30), HourWindow(12 * 60, 13 * 60)), min_interval_s=3600,
        daily_budget_s=1800, hold_s=120, unknown_signals="ignore", check_interval_s=5,
        metered_interfaces=("usb", "wwan0"), unmetered_interfaces=("wwan1",))


@pytest.mark.parametrize(("text", "key", "problem"), [
    ("require-charing = true", "require-charing", "unknown key; did you mean 'require-charging'?"),
    ("colour = 3", "colour", "unknown key; expected one of: require-charging"),
    ('require-charging = "yes"', "require-charging", "expected true or false, got 'yes'"),
    ("min-battery-percent = 120", "min-battery-percent", "expected a number >= 0 and <= 100, got 120"),
    ("max-cpu-percent = -1", "max-cpu-percent", "expected a number >= 0 and <= 100, got -1"),
    ("hold-seconds = true", "hold-seconds", "expected a number >= 0, got True"),
    ('allowed-hours = "22:00-06:00"', "allowed-hours", "expected a non-empty list"),
    ('allowed-hours = ["22-06"]', "allowed-hours", "expected HH:MM-HH:MM (like 22:00-06:00), got '22-06'"),
    ('allowed-hours = ["25:00-06:00"]', "allowed-hours", "expected hours 00-23"),
    ('allowed-hours = ["08:00-08:00"]', "allowed-hours", "is empty; use 00:00-24:00 for the whole day"),
    ('unknown-signals = "allow"', "unknown-signals", 'expected "block"'),
    ("check-seconds = 0", "check-seconds", "expected a number >= 0.1"),
    ("daily-budget-seconds = 90000", "daily-budget-seconds", "<= 86400"),
    ("[network]\nmetered = true", "network.metered", "unknown key; expected metered-interfaces"),
    ('[network]\nmetered-interfaces = "usb0"', "network.metered-interfaces", "expected a list of interface names"),
    ("network = 1", "network", "expected a table [network]"),
])
def test_bad_policy_file_names_the_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text + "\n")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert caught.value.key == key
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"{path}: {key}: ")


def test_policy_file_that_is_not_toml(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text("require-charging = \n")
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(path)
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        load_policy(tmp_path / "absent.toml")


def test_whole_day_window() -> None:
    window = parse_window("00:00-24:00")
    assert all(window.contains(m) for m in (0, 720, 1439.9))
    assert str(window) == "00:00-24:00"
    assert policy_from_mapping({"allowed-hours": ["00:00-24:00"]}).allowed_hours == (window,)


def test_cpu_idle_duration_needs_a_cpu_limit() -> None:
    with pytest.raises(PolicyError, match="cpu-idle-seconds: needs max-cpu-percent"):
        policy_from_mapping({"cpu-idle-seconds": 60})
