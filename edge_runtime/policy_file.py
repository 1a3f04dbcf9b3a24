"""The eligibility policy as a frozen value, read from a TOML file.

Every key is optional; a policy with none of them lets the device train at any
time. An unknown key or a bad value is refused naming the key and saying what
was expected. Example (``docs/DEPLOY.md`` explains each key)::

    require-charging = true
    min-battery-percent = 50
    require-unmetered = true
    max-cpu-percent = 20
    cpu-idle-seconds = 120
    allowed-hours = ["22:00-07:00"]
    daily-budget-seconds = 1800
    hold-seconds = 60

    [network]
    metered-interfaces = ["usb0"]
"""

from __future__ import annotations

import difflib
import math
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edge_runtime.errors import PolicyError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_WINDOW = re.compile(r"^(\d{1,2}):(\d{2})-(\d{1,2}):(\d{2})$")


@dataclass(frozen=True)
class HourWindow:
    """Allowed local hours from ``start`` to ``end`` (minutes after midnight); wraps midnight when end <= start."""

    start: int
    end: int

    def contains(self, minute: float) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return f"{self.start // 60:02d}:{self.start % 60:02d}-{self.end // 60:02d}:{self.end % 60:02d}"


@dataclass(frozen=True)
class Policy:
    require_charging: bool = False
    min_battery_percent: float | None = None
    require_unmetered: bool = False
    max_cpu_percent: float | None = None
    cpu_idle_s: float = 0.0
    min_user_idle_s: float | None = None
    max_temperature_c: float | None = None
    min_free_memory_mb: float | None = None
    min_free_disk_mb: float | None = None
    allowed_hours: tuple[HourWindow, ...] = ()
    min_interval_s: float = 0.0
    daily_budget_s: float | None = None
    hold_s: float = 0.0
    unknown_signals: Literal["block", "ignore"] = "block"
    check_interval_s: float = 10.0
    metered_interfaces: tuple[str, ...] = ()
    unmetered_interfaces: tuple[str, ...] = ()


def parse_window(text: str) -> HourWindow:
    """``"22:00-06:00"`` -> HourWindow; ``ValueError`` saying what was expected otherwise."""
    match = _WINDOW.match(text.strip())
    if not match:
        raise ValueError(f"expected HH:MM-HH:MM (like 22:00-06:00), got {text!r}")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2 != 0):
        raise ValueError(f"expected hours 00-23 (24:00 as an end) and minutes 00-59, got {text!r}")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError(f"{text!r} is empty; use 00:00-24:00 for the whole day")
    return HourWindow(start, end)


def load_policy(path: Path) -> Policy:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise PolicyError(path, "", f"cannot read the policy file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(path, "", f"not valid TOML: {exc}") from None
    return policy_from_mapping(data, path)


def policy_from_mapping(data: Mapping[str, Any], source: object = "policy") -> Policy:
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key == "network":
            values.update(_network(value, source))
            continue
        if key not in _KEYS:
            close = difflib.get_close_matches(key, [*_KEYS, "network"], n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"expected one of: {', '.join([*_KEYS, 'network'])}"
            raise PolicyError(source, key, f"unknown key; {hint}")
        name, parse = _KEYS[key]
        try:
            values[name] = parse(value)
        except ValueError as exc:
            raise PolicyError(source, key, str(exc)) from None
    if values.get("cpu_idle_s") and values.get("max_cpu_percent") is None:
        raise PolicyError(source, "cpu-idle-seconds", "needs max-cpu-percent: the CPU counts as idle below it")
    return Policy(**values)


def _network(table: Any, source: object) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise PolicyError(source, "network", f"expected a table [network], got {type(table).__name__}")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in ("metered-interfaces", "unmetered-interfaces"):
            raise PolicyError(source, f"network.{key}", "unknown key; expected metered-interfaces or "
                                                        "unmetered-interfaces")
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise PolicyError(source, f"network.{key}", f"expected a list of interface names or prefixes, "
                                                        f"got {value!r}")
        values[key.replace("-", "_")] = tuple(value)
    return values


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _number(low: float, high: float = math.inf) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            upper = f" and <= {high:g}" if math.isfinite(high) else ""
            raise ValueError(f"expected a number >= {low:g}{upper}, got {value!r}")
        return float(value)
    return parse


def _windows(value: Any) -> tuple[HourWindow, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f'expected a non-empty list of "HH:MM-HH:MM" windows, got {value!r}')
    return tuple(parse_window(v) for v in value)


def _unknown(value: Any) -> str:
    if value not in ("block", "ignore"):
        raise ValueError(f'expected "block" (an unknown signal fails its condition) or "ignore", got {value!r}')
    return str(value)


_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "require-charging": ("require_charging", _flag),
    "min-battery-percent": ("min_battery_percent", _number(0, 100)),
    "require-unmetered": ("require_unmetered", _flag),
    "max-cpu-percent": ("max_cpu_percent", _number(0, 100)),
    "cpu-idle-seconds": ("cpu_idle_s", _number(0)),
    "min-user-idle-seconds": ("min_user_idle_s", _number(0)),
    "max-temperature-c": ("max_temperature_c", _number(-50, 150)),
    "min-free-memory-mb": ("min_free_memory_mb", _number(0)),
    "min-free-disk-mb": ("min_free_disk_mb", _number(0)),
    "allowed-hours": ("allowed_hours", _windows),
    "min-interval-seconds": ("min_interval_s", _number(0)),
    "daily-budget-seconds": ("daily_budget_s", _number(0, 86400)),
    "hold-seconds": ("hold_s", _number(0)),
    "unknown-signals": ("unknown_signals", _unknown),
    "check-seconds": ("check_interval_s", _number(0.1, 3600)),
}
