"""What a device can tell about its own state, and how the readings are gathered.

A ``Signals`` value holds one reading of every signal; ``None`` means unknown
(the platform does not expose it, or its command is missing). Each provider
reads the few signals it knows and leaves the rest unknown; a ``SignalReader``
merges providers and re-reads each no more often than its ``refresh_s``, so the
cheap signals (power, a signals file) can be checked between training steps
while a slow command (nmcli, Termux:API) runs every few seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, Protocol

Power = Literal["mains", "charging", "battery"]
Network = Literal["unmetered", "metered", "offline"]
POWER_VALUES: tuple[str, ...] = ("mains", "charging", "battery")
NETWORK_VALUES: tuple[str, ...] = ("unmetered", "metered", "offline")
# The class of the link a device trains over, as its status advertises it (docs/PROTOCOL.md 5.1); the coordinator
# may choose each device's codec by it (docs/COMPRESSION.md).
Link = Literal["wired", "wifi", "cellular", "constrained"]
LINK_VALUES: tuple[str, ...] = ("wired", "wifi", "cellular", "constrained")


@dataclass(frozen=True)
class Signals:
    """One reading of the device's signals; ``None`` is unknown.

    ``power`` is ``mains`` on a machine with no battery, ``charging`` when a
    battery is being charged (or full on a charger), ``battery`` otherwise.
    ``cpu_percent`` is the CPU share used by other processes, in percent of all
    cores, so a device's own training does not make it look busy. ``link`` is
    the link's class when a provider knows it (a signals file, an emulated
    device's profile); otherwise ``link_class`` derives it from ``network`` and
    ``interface``.
    """

    power: Power | None = None
    battery_percent: float | None = None
    cpu_percent: float | None = None
    load_1m: float | None = None
    user_idle_s: float | None = None
    temperature_c: float | None = None
    network: Network | None = None
    interface: str | None = None
    free_memory_mb: float | None = None
    free_disk_mb: float | None = None
    link: Link | None = None

    def known(self) -> dict[str, Any]:
        """The signals this reading knows, by name."""
        return {name: value for name, value in vars(self).items() if value is not None}

    def merged(self, other: Signals) -> Signals:
        """This reading with every signal ``other`` knows taken from ``other``."""
        return replace(self, **other.known())

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


SIGNAL_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Signals))
UNITS = {"battery_percent": "%", "cpu_percent": "%", "user_idle_s": "s", "temperature_c": "°C",
         "free_memory_mb": "MB", "free_disk_mb": "MB"}


def describe(name: str, value: object) -> str:
    """A signal's value as a person reads it (``unknown`` for ``None``)."""
    if value is None:
        return "unknown"
    if isinstance(value, float):
        text = f"{value:.0f}" if math.isinf(value) or abs(value) >= 100 else f"{value:.1f}"
        return f"{text} {UNITS[name]}".strip() if name in UNITS else text
    return str(value)


class SignalProvider(Protocol):
    """Reads the signals it knows; everything else in the returned value stays ``None``."""

    name: str
    refresh_s: float

    def read(self) -> Signals: ...


class SignalReader:
    """Merges providers (later ones win for a signal both know) and caches each for its ``refresh_s``.

    ``metered`` and ``unmetered`` are interface-name prefixes that override
    what the providers concluded about the network (a flat-rate LTE modem, a
    phone hotspot seen as Wi-Fi).
    """

    def __init__(self, providers: Sequence[SignalProvider], metered: Sequence[str] = (),
                 unmetered: Sequence[str] = (), clock: Callable[[], float] = time.monotonic) -> None:
        self.providers = tuple(providers)
        self.metered, self.unmetered = tuple(metered), tuple(unmetered)
        self._clock = clock
        self._cache: dict[int, tuple[float, Signals]] = {}
        self._merged: Signals | None = None

    def read(self) -> Signals:
        """Re-read the providers that are due; merge again only if a reading changed (this runs every step)."""
        now, changed = self._clock(), self._merged is None
        for i, provider in enumerate(self.providers):
            cached = self._cache.get(i)
            if cached is None or now - cached[0] >= provider.refresh_s:
                reading = provider.read()
                changed = changed or cached is None or reading != cached[1]
                self._cache[i] = (now, reading)
        if changed or self._merged is None:
            values: dict[str, Any] = {}
            for i in range(len(self.providers)):
                values.update(self._cache[i][1].known())
            self._merged = self._override(Signals(**values))
        return self._merged

    def _override(self, signals: Signals) -> Signals:
        name = signals.interface
        if name is None or signals.network == "offline":
            return signals
        if any(name.startswith(p) for p in self.metered):
            return replace(signals, network="metered")
        if any(name.startswith(p) for p in self.unmetered):
            return replace(signals, network="unmetered")
        return signals

    def sources(self) -> dict[str, str]:
        """Which provider each known signal came from in the last read."""
        out: dict[str, str] = {}
        for i, provider in enumerate(self.providers):
            if i in self._cache:
                out.update(dict.fromkeys(self._cache[i][1].known(), provider.name))
        return out
