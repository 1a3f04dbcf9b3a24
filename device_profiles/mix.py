"""Which profile each emulated device gets: a mix like ``phone-mid:0.5,phone-low:0.3,pi-4:0.2``."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from device_profiles.errors import ProfileError
from device_profiles.profiles import DeviceProfile

# The default fleet: mostly phones of every class, some Raspberry Pis and gateways.
MIXED = "phone-low:0.25,phone-mid:0.3,phone-high:0.15,pi-zero-2w:0.1,pi-4:0.1,pi-5:0.05,gateway:0.05"


def parse_mix(text: str, profiles: Mapping[str, DeviceProfile]) -> tuple[tuple[DeviceProfile, float], ...]:
    """``NAME:WEIGHT,...`` (weights need not sum to 1), a single ``NAME``, or ``mixed``."""
    text = MIXED if text.strip() == "mixed" else text
    mix = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, weight_text = part.partition(":")
        if name not in profiles:
            raise ProfileError("--profiles", name, f"no such profile; known: {', '.join(sorted(profiles))}")
        try:
            weight = float(weight_text) if weight_text else 1.0
        except ValueError:
            raise ProfileError("--profiles", name, f"expected a weight after ':', got {weight_text!r}") from None
        if not weight > 0:
            raise ProfileError("--profiles", name, f"expected a weight > 0, got {weight_text}")
        mix.append((profiles[name], weight))
    if not mix:
        raise ProfileError("--profiles", "mix", f"expected NAME:WEIGHT,... or 'mixed', got {text!r}")
    return tuple(mix)


def assign(devices: int, mix: tuple[tuple[DeviceProfile, float], ...], seed: int) -> list[DeviceProfile]:
    """Exactly proportional counts (largest remainder), then shuffled reproducibly over the device indices."""
    weights = np.array([w for _, w in mix], dtype=np.float64)
    exact = weights / weights.sum() * devices
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: devices - counts.sum()]:
        counts[i] += 1
    order = [profile for (profile, _), count in zip(mix, counts, strict=True) for _ in range(count)]
    shuffled = np.random.default_rng(seed).permutation(devices)
    return [order[i] for i in shuffled]
