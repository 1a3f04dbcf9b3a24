"""Eligibility: whether training now costs the device's owner nothing.

The agent asks its policy before it accepts a task, again between training
steps, and every ``check_interval_s`` while it waits. ``AlwaysEligible`` is the
policy of a device with no constraints (a lab machine, a test);
``Scheduler`` applies a ``Policy`` (``edge_runtime.policy_file``) to readings
from a ``SignalReader``, with hysteresis: every condition must hold for
``hold_s`` seconds before the device becomes eligible, and one failing
condition makes it ineligible at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from edge_runtime.errors import SignalError
from edge_runtime.policy_file import Policy
from edge_runtime.signals import SignalReader, Signals

DAY_S = 86400.0
UNKNOWN = {"power": "power source", "battery": "battery level", "network": "network type", "cpu": "CPU use",
           "user": "user activity", "memory": "free memory", "disk": "free disk space"}


@dataclass(frozen=True)
class Decision:
    """An eligibility decision, its reasons (why not, or what held), and the codes of the failed conditions."""

    eligible: bool
    reasons: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


class EligibilityPolicy(Protocol):
    check_interval_s: float

    def check(self) -> Decision: ...

    def begin_task(self) -> None: ...

    def end_task(self, trained: bool) -> None: ...


class AlwaysEligible:
    """Eligible at every check."""

    check_interval_s = 60.0

    def check(self) -> Decision:
        return Decision(True, ("no policy configured",))

    def begin_task(self) -> None:
        pass

    def end_task(self, trained: bool) -> None:
        pass


class Scheduler:
    """Decides eligibility from a policy and live signals; keeps the state that hysteresis and budgets need.

    ``clock`` gives seconds since the epoch (the agent's wall clock, or an
    emulator's simulated one). Local time for ``allowed-hours`` and the daily
    budget is the system's, or UTC shifted by ``utc_offset_h`` when given.
    Thread-safe: the agent checks from its own thread.
    """

    # The reader returns the same Signals object while no reading changed; the conditions that depend on
    # time alone (hold, hours, budget, interval, CPU-idle duration) are then re-evaluated this often.
    REDECIDE_S = 1.0

    def __init__(self, policy: Policy, reader: SignalReader, clock: Callable[[], float] = time.time,
                 utc_offset_h: float | None = None) -> None:
        self.policy = policy
        self.reader = reader
        self.check_interval_s = policy.check_interval_s
        self._clock = clock
        self._utc_offset_h = utc_offset_h
        self._lock = threading.Lock()
        self._held_since: float | None = None
        self._cpu_quiet_since: float | None = None
        self._task_started: float | None = None
        self._spent: list[tuple[float, float]] = []  # (start, end) of past tasks, for the daily budget
        self._last_trained: float | None = None
        self.last_signals = Signals()
        self._decided_at = -float("inf")
        self._last = Decision(False)

    def check(self) -> Decision:
        with self._lock:
            now = self._clock()
            try:
                signals = self.reader.read()
            except SignalError as exc:
                self._held_since = self._cpu_quiet_since = None
                return Decision(False, (f"signals unreadable: {exc}",), ("signals",))
            if signals is self.last_signals and now - self._decided_at < self.REDECIDE_S:
                return self._last  # nothing read has changed: the per-step check stays cheap
            self.last_signals, self._decided_at = signals, now
            self._last = self._decide(signals, now)
            return self._last

    def begin_task(self) -> None:
        with self._lock:
            self._task_started = self._clock()
            self._decided_at = -float("inf")

    def end_task(self, trained: bool) -> None:
        with self._lock:
            now = self._clock()
            if self._task_started is not None:
                self._spent = [s for s in self._spent if s[1] > now - 2 * DAY_S] + [(self._task_started, now)]
            self._task_started = None
            self._decided_at = -float("inf")
            if trained:
                self._last_trained = now

    # -- the decision -----------------------------------------------------------------------------

    def _decide(self, s: Signals, now: float) -> Decision:
        conditions = _Conditions(self.policy.unknown_signals == "ignore")
        p = self.policy
        if p.require_charging:
            conditions.need("power", s.power, s.power in ("mains", "charging"),
                            f"on {s.power}" if s.power == "mains" else s.power if s.power == "charging"
                            else "not charging")
        if p.min_battery_percent is not None and s.power != "mains":
            conditions.at_least("battery", s.battery_percent, p.min_battery_percent, "battery {v:.0f}%", "%")
        if p.require_unmetered:
            conditions.need("network", s.network, s.network == "unmetered",
                            f"{s.network} network" + (f" ({s.interface})" if s.interface else ""))
        if p.max_cpu_percent is not None:
            self._cpu_idle(conditions, s.cpu_percent, p.max_cpu_percent, now)
        if p.min_user_idle_s is not None:
            conditions.at_least("user", s.user_idle_s, p.min_user_idle_s, "user idle {v:.0f} s", " s")
        if p.max_temperature_c is not None:
            conditions.at_most("temperature", s.temperature_c, p.max_temperature_c, "temperature {v:.1f} °C", " °C")
        if p.min_free_memory_mb is not None:
            conditions.at_least("memory", s.free_memory_mb, p.min_free_memory_mb, "{v:.0f} MB memory free", " MB")
        if p.min_free_disk_mb is not None:
            conditions.at_least("disk", s.free_disk_mb, p.min_free_disk_mb, "{v:.0f} MB disk free", " MB")
        self._calendar(conditions, now)
        if conditions.failed:
            self._held_since = None
            return Decision(False, tuple(r for _, r in conditions.failed), tuple(c for c, _ in conditions.failed))
        if self._held_since is None:
            self._held_since = now
        held = now - self._held_since
        if held < p.hold_s and self._task_started is None:
            return Decision(False, (f"conditions have held for {held:.0f} s of the required {p.hold_s:.0f} s",),
                            ("hold",))
        return Decision(True, tuple(conditions.held) or ("no policy constraints",))

    def _cpu_idle(self, conditions: _Conditions, cpu: float | None, limit: float, now: float) -> None:
        if cpu is None or cpu > limit or not self.policy.cpu_idle_s:
            self._cpu_quiet_since = None if cpu is None or cpu > limit else now
            conditions.at_most("cpu", cpu, limit, "other processes use {v:.0f}% CPU", "%")
            return
        if self._cpu_quiet_since is None:
            self._cpu_quiet_since = now
        quiet, needed = now - self._cpu_quiet_since, self.policy.cpu_idle_s
        conditions.need("cpu", cpu, quiet >= needed or self._task_started is not None,
                        f"CPU quiet ({cpu:.0f}% <= {limit:.0f}%) for {quiet:.0f} s of {needed:.0f} s")

    def _calendar(self, conditions: _Conditions, now: float) -> None:
        p = self.policy
        since_midnight = self._seconds_since_midnight(now)
        if p.allowed_hours:
            minute = since_midnight / 60
            inside = [w for w in p.allowed_hours if w.contains(minute)]
            clock = f"{int(minute) // 60:02d}:{int(minute) % 60:02d}"
            where = f"within {inside[0]}" if inside else f"outside {', '.join(str(w) for w in p.allowed_hours)}"
            conditions.need("hours", minute, bool(inside), f"local time {clock} {where}")
        if p.min_interval_s and self._last_trained is not None:
            ago = now - self._last_trained
            conditions.at_least("interval", ago, p.min_interval_s, "last trained {v:.0f} s ago", " s")
        if p.daily_budget_s is not None:
            used = self._spent_since(now - since_midnight, now)
            conditions.need("budget", used, used < p.daily_budget_s,
                            f"trained {used:.0f} s today (daily budget {p.daily_budget_s:.0f} s)")

    def _seconds_since_midnight(self, now: float) -> float:
        if self._utc_offset_h is not None:
            return (now + self._utc_offset_h * 3600.0) % DAY_S
        local = time.localtime(now)
        return local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec + (now % 1.0)

    def _spent_since(self, start: float, now: float) -> float:
        spans = [*self._spent, (self._task_started, now)] if self._task_started is not None else self._spent
        return sum(max(0.0, min(end, now) - max(begin, start)) for begin, end in spans)


class _Conditions:
    """Collects each condition's outcome: a reason for every one that held or failed."""

    def __init__(self, ignore_unknown: bool) -> None:
        self.ignore_unknown = ignore_unknown
        self.held: list[str] = []
        self.failed: list[tuple[str, str]] = []

    def need(self, code: str, value: object, ok: bool, reason: str) -> None:
        if value is None:
            if self.ignore_unknown:
                self.held.append(f"{UNKNOWN.get(code, code)} unknown (ignored)")
            else:
                self.failed.append((code, f"{UNKNOWN.get(code, code)} unknown"))
        elif ok:
            self.held.append(reason)
        else:
            self.failed.append((code, reason))

    def at_least(self, code: str, value: float | None, minimum: float, say: str, unit: str) -> None:
        self.need(code, value, value is not None and value >= minimum,
                  f"{say.format(v=value)} (minimum {minimum:g}{unit})" if value is not None else "")

    def at_most(self, code: str, value: float | None, maximum: float, say: str, unit: str) -> None:
        self.need(code, value, value is not None and value <= maximum,
                  f"{say.format(v=value)} (maximum {maximum:g}{unit})" if value is not None else "")
