"""Device profiles: frozen values read from TOML (the shipped catalog, plus the user's own file).

Every field is checked when a profile is read; a missing or bad one is
refused naming the profile and the field (``catalog.toml: phone-low.network.up-kbps: ...``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from device_profiles.errors import ProfileError
from edge_runtime.signals.base import Link as LinkClass

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CATALOG = Path(__file__).with_name("catalog.toml")
HOURS = 24
# A link's class (what an emulated device's status advertises, edge_runtime.signals.link): "constrained" below this
# uplink, whatever its kind (an update of a million float32 parameters takes over half a minute to send there);
# otherwise by kind, and any kind not listed here (3g, lte, lte-m, 5g, ...) is cellular.
CONSTRAINED_UP_KBPS = 1000.0
WIRED_KINDS = ("ethernet", "wired")
WIFI_KINDS = ("wifi", "wi-fi", "wlan")


@dataclass(frozen=True)
class Link:
    """The network a device trains over."""

    kind: str
    up_kbps: float
    down_kbps: float
    latency_ms: float

    def upload_s(self, size_bytes: int) -> float:
        return self.latency_ms / 1000 + size_bytes * 8 / (self.up_kbps * 1000)

    def download_s(self, size_bytes: int) -> float:
        return self.latency_ms / 1000 + size_bytes * 8 / (self.down_kbps * 1000)

    @property
    def link_class(self) -> LinkClass:
        if self.up_kbps < CONSTRAINED_UP_KBPS:
            return "constrained"
        kind = self.kind.lower()
        return "wired" if kind in WIRED_KINDS else "wifi" if kind in WIFI_KINDS else "cellular"


@dataclass(frozen=True)
class Availability:
    """Probabilities by local hour (24 each) and the time zones a device of the class may be in."""

    charging: tuple[float, ...]
    idle: tuple[float, ...]
    unmetered: tuple[float, ...]
    utc_offsets: tuple[float, ...]


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    slowdown: float
    memory_mb: int
    power: Literal["mains", "battery"]
    battery_mah: int | None
    drain_percent_per_minute: float
    network: Link
    availability: Availability
    dropout: float


def load_profiles(extra: Path | None = None) -> dict[str, DeviceProfile]:
    """The shipped catalog, with the classes of ``extra`` added (or replacing same-named ones)."""
    profiles = _read(CATALOG)
    if extra is not None:
        profiles.update(_read(extra))
    return profiles


def _read(path: Path) -> dict[str, DeviceProfile]:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ProfileError(path, "file", f"cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(path, "file", f"not valid TOML: {exc}") from None
    if not data:
        raise ProfileError(path, "file", "holds no profile; expected tables like [my-device]")
    return {name: profile_from_mapping(name, table, path) for name, table in data.items()}


def profile_from_mapping(name: str, table: Any, source: object) -> DeviceProfile:
    fields = _Fields(table, source, name)
    power: Literal["mains", "battery"] = "battery" if fields.choice("power", ("mains", "battery")) == "battery" \
        else "mains"
    battery = power == "battery"
    profile = DeviceProfile(
        name=name,
        description=fields.text("description"),
        slowdown=fields.number("slowdown", 0.1, 1000),
        memory_mb=int(fields.number("memory-mb", 16, 1 << 22)),
        power=power,
        battery_mah=int(fields.number("battery-mah", 100, 100_000)) if battery else None,
        drain_percent_per_minute=fields.number("drain-percent-per-minute", 0, 100) if battery else 0.0,
        network=_link(fields.table("network")),
        availability=_availability(fields.table("availability")),
        dropout=fields.number("dropout", 0, 1),
    )
    fields.done()
    return profile


def _link(fields: _Fields) -> Link:
    link = Link(fields.text("kind"), fields.number("up-kbps", 1, 1e8), fields.number("down-kbps", 1, 1e8),
                fields.number("latency-ms", 0, 60_000))
    fields.done()
    return link


def _availability(fields: _Fields) -> Availability:
    availability = Availability(fields.hourly("charging"), fields.hourly("idle"), fields.hourly("unmetered"),
                                fields.offsets("utc-offsets"))
    fields.done()
    return availability


class _Fields:
    """Reads the keys of one TOML table, each checked, and refuses keys nobody asked for."""

    def __init__(self, table: Any, source: object, where: str) -> None:
        if not isinstance(table, Mapping):
            raise ProfileError(source, where, f"expected a table, got {type(table).__name__}")
        self.data, self.source, self.where = table, source, where
        self.used: set[str] = set()

    def _get(self, key: str) -> Any:
        self.used.add(key)
        if key not in self.data:
            raise ProfileError(self.source, f"{self.where}.{key}", "missing")
        return self.data[key]

    def _bad(self, key: str, expected: str, value: Any) -> ProfileError:
        return ProfileError(self.source, f"{self.where}.{key}", f"expected {expected}, got {value!r}")

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str) or not value.strip():
            raise self._bad(key, "a non-empty string", value)
        return value

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self._get(key)
        if value not in options:
            raise self._bad(key, " or ".join(f'"{o}"' for o in options), value)
        return str(value)

    def number(self, key: str, low: float, high: float) -> float:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise self._bad(key, f"a number from {low:g} to {high:g}", value)
        return float(value)

    def hourly(self, key: str) -> tuple[float, ...]:
        value = self._get(key)
        values = [value] * HOURS if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        if not isinstance(values, list) or len(values) != HOURS or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1 for v in values):
            raise self._bad(key, "a probability in [0, 1], or a list of 24 (one per local hour from 00:00)", value)
        return tuple(float(v) for v in values)

    def offsets(self, key: str) -> tuple[float, ...]:
        value = self._get(key)
        if not isinstance(value, list) or not value or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and -12 <= v <= 14 for v in value):
            raise self._bad(key, "a non-empty list of UTC offsets in hours, from -12 to 14", value)
        return tuple(float(v) for v in value)

    def table(self, key: str) -> _Fields:
        return _Fields(self._get(key), self.source, f"{self.where}.{key}")

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ProfileError(self.source, f"{self.where}.{unknown[0]}",
                               f"unknown field; expected {', '.join(sorted(self.used))}")
