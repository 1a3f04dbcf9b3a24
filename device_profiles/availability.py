"""Signals of an emulated device, drawn from its profile's availability model on a (simulated) clock.

Time is cut into slots (30 simulated minutes by default). In each slot a
device is charging, idle and on an unmetered network with the probabilities
its profile gives for the local hour, drawn independently per device, slot
and signal from a hash of the seed, so any device's state at any time is
computed in O(1) without keeping history, and a run is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable

from device_profiles.profiles import DeviceProfile
from edge_runtime.signals import Signals

SLOT_S = 1800.0
_MASK = (1 << 64) - 1
_CHARGING, _IDLE, _UNMETERED, _LEVEL = 1, 2, 3, 4


def draw(seed: int, device: int, slot: int, what: int) -> float:
    """A uniform number in [0, 1) that depends only on its arguments (splitmix64 finaliser)."""
    x = (seed * 0x9E3779B97F4A7C15 + device * 0xBF58476D1CE4E5B9 + slot * 0x94D049BB133111EB + what) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return ((x ^ (x >> 31)) >> 11) / float(1 << 53)


class ProfileSignals:
    """A signal provider for one emulated device (``edge_runtime.signals.SignalProvider``)."""

    refresh_s = 0.0  # pure arithmetic: exact at every check

    def __init__(self, profile: DeviceProfile, device: int, seed: int, clock: Callable[[], float],
                 utc_offset_h: float, slot_s: float = SLOT_S) -> None:
        self.name = f"profile {profile.name}"
        self.profile, self.device, self.seed = profile, device, seed
        self.clock, self.utc_offset_h, self.slot_s = clock, utc_offset_h, slot_s
        self._drained: tuple[int, float] = (-1, 0.0)  # (slot, battery percent spent training in it)

    def drain(self, training_s: float) -> None:
        """Spend battery for ``training_s`` simulated seconds of training (the profile's drain per minute),
        until the slot ends: the next slot draws its level afresh."""
        slot = int(self.clock() // self.slot_s)
        spent = self._drained[1] if self._drained[0] == slot else 0.0
        self._drained = (slot, spent + training_s / 60.0 * self.profile.drain_percent_per_minute)

    def state(self, now: float) -> tuple[bool, bool, bool]:
        """(charging, idle, unmetered) at simulated time ``now``."""
        slot = int(now // self.slot_s)
        hour = int(((now + self.utc_offset_h * 3600.0) % 86400.0) // 3600)
        a = self.profile.availability

        def happens(p: float, what: int) -> bool:
            return draw(self.seed, self.device, slot, what) < p

        return (self.profile.power == "mains" or happens(a.charging[hour], _CHARGING),
                happens(a.idle[hour], _IDLE), happens(a.unmetered[hour], _UNMETERED))

    def read(self) -> Signals:
        now = self.clock()
        charging, idle, unmetered = self.state(now)
        mains = self.profile.power == "mains"
        wired = self.profile.network.kind == "ethernet"
        slot = int(now // self.slot_s)
        level = None
        if not mains:
            spent = self._drained[1] if self._drained[0] == slot and not charging else 0.0
            level = max(0, round(20 + 80 * draw(self.seed, self.device, slot, _LEVEL) - spent))
        return Signals(
            power="mains" if mains else "charging" if charging else "battery",
            battery_percent=level,
            cpu_percent=3.0 if idle else 60.0,
            user_idle_s=3600.0 if idle else 0.0,
            temperature_c=35.0,
            network="unmetered" if unmetered else "metered",
            interface=("eth0" if wired else "wlan0") if unmetered else "wwan0",
            free_memory_mb=self.profile.memory_mb / 2,
            free_disk_mb=4096.0,
            link=self.profile.network.link_class,  # the link the profile's transfer times charge, whatever the hour
        )
