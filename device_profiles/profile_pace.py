"""An emulated device's pace: the waits and drop-outs its profile implies (``edge_runtime.pace.Pace``).

Simulated durations come from the profile: training takes the host's time
times ``slowdown`` (and drains the battery for as long), transfers take the
link's latency plus size over bandwidth. The real time already spent counts towards them, so only the rest
is waited for, scaled by the speedup. Under ``--speedup max`` nothing waits.
Whether a device drops out of a round is drawn from the run's seed, so the
same run drops the same devices.
"""

from __future__ import annotations

from device_profiles.availability import ProfileSignals, draw
from device_profiles.clock import Speedup
from device_profiles.profiles import DeviceProfile

_DROP = 5  # the draw() channel of drop-outs (availability uses 1-4)


class ProfilePace:
    def __init__(self, profile: DeviceProfile, speedup: Speedup, seed: int, device: int,
                 signals: ProfileSignals | None = None) -> None:
        self.profile, self.speedup, self.seed, self.device = profile, speedup, seed, device
        self.signals = signals  # told how long the device trained, so that its battery drains

    def download_wait_s(self, size_bytes: int) -> float:
        return self.speedup.real_s(self.profile.network.download_s(size_bytes))

    def compute_wait_s(self, host_s: float) -> float:
        """The rest of ``host_s * slowdown`` simulated seconds, after the ``host_s`` real ones already spent."""
        if self.signals is not None:
            self.signals.drain(host_s * self.profile.slowdown)
        if self.speedup.factor is None:
            return 0.0
        return max(0.0, host_s * self.profile.slowdown / self.speedup.factor - host_s)

    def upload_wait_s(self, size_bytes: int) -> float:
        return self.speedup.real_s(self.profile.network.upload_s(size_bytes))

    def drops_out(self, round_number: int) -> bool:
        return draw(self.seed, self.device, round_number, _DROP) < self.profile.dropout
