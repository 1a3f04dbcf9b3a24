"""How long a task's phases take beyond the host's own time: the hook an emulator uses to play a device class.

A real device has nothing to add (``RealPace``): downloading, training and
uploading take the time they take. An emulated device (``device_profiles``)
returns the extra *real* seconds to wait so that, on its simulated clock, a
phase lasts what its profile says, and may drop out of a task silently.
The agent does the waiting itself, between the same checks it makes between
training steps, so a withdrawal, a deadline or a lost eligibility still
stops the task.
"""

from __future__ import annotations

from typing import Protocol


class Pace(Protocol):
    def download_wait_s(self, size_bytes: int) -> float:
        """Extra real seconds before training, for fetching a global model of ``size_bytes``."""
        ...

    def compute_wait_s(self, host_s: float) -> float:
        """Extra real seconds after training that took ``host_s`` real seconds on this host."""
        ...

    def upload_wait_s(self, size_bytes: int) -> float:
        """Extra real seconds before an update of ``size_bytes`` counts as delivered."""
        ...

    def drops_out(self, round_number: int) -> bool:
        """Whether the device vanishes during this round's task (no report at all)."""
        ...


class RealPace:
    """A physical device: nothing added, nothing dropped on purpose."""

    def download_wait_s(self, size_bytes: int) -> float:
        return 0.0

    def compute_wait_s(self, host_s: float) -> float:
        return 0.0

    def upload_wait_s(self, size_bytes: int) -> float:
        return 0.0

    def drops_out(self, round_number: int) -> bool:
        return False
