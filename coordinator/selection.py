"""Who takes part in a round: the goal count and a seeded, reproducible over-selection."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

import numpy as np


def goal_count(eligible: int, fraction: float, min_clients: int) -> int:
    """Reports a round waits for: ``fraction`` of the eligible devices, at least ``min_clients``."""
    return max(min_clients, math.ceil(round(fraction * eligible, 9)))


def selection_size(eligible: int, goal: int, over_select: float) -> int:
    """Devices to ask: the goal times the over-selection factor, at most every eligible device."""
    return min(eligible, math.ceil(round(goal * over_select, 9)))


def select(eligible: Iterable[str], count: int, seed: int, round_number: int) -> tuple[str, ...]:
    """``count`` devices drawn without replacement; the same ids, seed and round give the same draw."""
    pool = sorted(set(eligible))
    if count > len(pool):
        raise ValueError(f"cannot select {count} of {len(pool)} eligible devices")
    rng = np.random.default_rng([seed, round_number])
    picked = rng.choice(len(pool), size=count, replace=False)
    return tuple(sorted(pool[i] for i in picked))


def derived_seed(*parts: object) -> int:
    """A 32-bit seed derived from ``parts``: the first 4 bytes, little-endian, of sha256 of the parts joined by "/"
    (``derived_seed(7, 3, "d1")`` hashes ``"7/3/d1"``). Reproducible from the configured seed, so a resumed run
    draws what the first would have."""
    return int.from_bytes(hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()[:4], "little")
