"""The simulated clock an emulated fleet shares: simulated time runs ``rate`` times faster than wall time.

Every process of a run (and every machine of a sharded run) builds the same
``SimClock`` from the same three numbers, so they agree on the simulated time
without talking to each other. ``Speedup`` is the user's ``--speedup``: a
factor, or ``max`` (no simulated waiting at all; the availability clock then
runs a simulated day in ``day_seconds`` of wall time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

DAY_S = 86400.0


@dataclass(frozen=True)
class Speedup:
    """``factor`` simulated seconds per real second, or ``None`` for ``max``."""

    factor: float | None

    @classmethod
    def parse(cls, value: str | float) -> Speedup:
        if isinstance(value, str) and value.strip() == "max":
            return cls(None)
        try:
            factor = float(value)
        except ValueError:
            raise ValueError(f"expected a factor > 0 (e.g. 60: a simulated minute per real second) or 'max', "
                             f"got {value!r}") from None
        if not 0 < factor < float("inf"):
            raise ValueError(f"expected a factor > 0 or 'max', got {value!r}")
        return cls(factor)

    @property
    def is_max(self) -> bool:
        return self.factor is None

    def rate(self, day_seconds: float) -> float:
        """Simulated seconds per wall second of the availability clock."""
        return DAY_S / day_seconds if self.factor is None else self.factor

    def deadline_clock(self, clock: SimClock) -> Callable[[], float]:
        """The clock round deadlines are on, for the coordinator and devices alike: simulated with a factor,
        the wall clock under ``max`` (where nothing simulated waits)."""
        return time.time if self.factor is None else clock.now

    def real_s(self, simulated_s: float) -> float:
        """Real seconds to wait for ``simulated_s``; nothing under ``max``."""
        return 0.0 if self.factor is None else simulated_s / self.factor

    def __str__(self) -> str:
        return "max" if self.factor is None else f"{self.factor:g}"


@dataclass(frozen=True)
class SimClock:
    """``now() = sim_start + (time.time() - wall_start) * rate``, in simulated seconds since the epoch."""

    wall_start: float
    sim_start: float
    rate: float

    @classmethod
    def starting_now(cls, start_hour_utc: float, rate: float, day: int = 0) -> SimClock:
        """A clock whose simulated time is ``start_hour_utc`` on simulated day ``day`` (since the epoch) now."""
        return cls(time.time(), day * DAY_S + start_hour_utc * 3600.0, rate)

    def now(self) -> float:
        return self.at(time.time())

    def at(self, wall: float) -> float:
        return self.sim_start + (wall - self.wall_start) * self.rate


def hour_of_day(simulated: float) -> float:
    """UTC hour, 0 <= h < 24, of a simulated time."""
    return (simulated % DAY_S) / 3600.0
