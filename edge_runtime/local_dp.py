"""Local differential privacy: a device adds its own Gaussian noise to its clipped update before it leaves.

For deployments that trust no server. ``LocalGaussian`` is an ``UpdateStage``: after the update is clipped to the
task's bound C it adds N(0, (z C)^2) to every value, z the device's ``--local-noise-multiplier``; the codec (and
error feedback, post-processing) run after it. docs/PRIVACY.md, "Local DP", gives the guarantee and its limits:

* The noised update is larger than C: its norm is at most ``C (1 + z (sqrt(n) + 6))`` (n values) except with
  probability below 2e-8 (the Gaussian norm concentrates: P(|g| > sigma (sqrt(n) + t)) <= exp(-t^2 / 2)). The
  update header declares z (``UpdateHeader.local_noise``) and the coordinator checks the norm against that bound
  (``noised_bound``) instead of C: nothing is clipped or rescaled after the noise, which would bias the mean.
* With local noise the header withholds what it would otherwise disclose in the clear: the pre-clip norm and
  the training loss are sent as 0 and the example count as 1.
* The noise comes from numpy's PCG64 seeded with 128 bits of the operating system's CSPRNG (``secrets``) for
  every update; ``test_seed`` (tests only) seeds it from ``(test_seed, round)`` instead. PCG64 is not a
  cryptographic generator and the floating-point sampling is not hardened against attacks on the low bits of
  the noise (Mironov, CCS 2012).
* The device's epsilon (``local_epsilon``) is the composition of its own Gaussian mechanisms, one per update it
  sent, at its configured delta, without any amplification (the device knows it was selected), by dp-accounting's
  analytic Gaussian (``get_epsilon_gaussian``). It needs
  ``dp-accounting``, which the device extra does not install (it pulls scipy): without it the device reports
  ``local_epsilon`` null and its status carries ``local_noise`` and ``local_rounds`` so that a machine with
  dp-accounting (the coordinator logs it) computes the same number.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.protocol import TrainTask
from edge_runtime.weights import Weights

log = logging.getLogger(__name__)

DEFAULT_LOCAL_DELTA = 1e-5
TAIL = 6.0  # the noise norm's bound: sigma (sqrt(n) + TAIL), exceeded with probability <= exp(-TAIL^2 / 2)


class LocalDpError(EdgeRuntimeError):
    """A local DP setting or the device's local DP ledger is wrong."""


def _check_noise(z: object, name: str = "local-noise-multiplier") -> float:
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z) or z <= 0:
        raise LocalDpError(f"{name}: expected a finite number > 0, found {z!r}")
    return float(z)


def noise_generator(test_seed: int | None, round_number: int) -> np.random.Generator:
    """A fresh generator for one draw of privacy noise (a device's local noise, the coordinator's central noise):
    numpy's PCG64 seeded with 128 bits of the operating system's CSPRNG, or, tests only, from
    ``(test_seed, round_number)``."""
    if test_seed is not None:
        return np.random.default_rng([test_seed, round_number])
    return np.random.default_rng(secrets.randbits(128))


def noised_bound(clip_norm: float, local_noise: float, values: int) -> float:
    """The L2 norm a clipped update of ``values`` values stays within once N(0, (z C)^2) noise is added, z =
    ``local_noise``, except with probability below exp(-18): ``C (1 + z (sqrt(n) + 6))``. ``clip_norm`` if z is 0."""
    if local_noise == 0:
        return clip_norm
    return clip_norm * (1 + local_noise * (math.sqrt(values) + TAIL))


@dataclass(frozen=True)
class LocalGaussian:
    """An ``UpdateStage`` adding N(0, (z C)^2) to every value of the clipped update, C the task's ``clip_norm``."""

    noise_multiplier: float
    test_seed: int | None = None  # tests only: draw from (test_seed, round) instead of a fresh CSPRNG seed

    def __post_init__(self) -> None:
        _check_noise(self.noise_multiplier)

    @property
    def local_noise(self) -> float:
        """The z the update header declares (``UpdatePipeline`` reads it)."""
        return self.noise_multiplier

    def __call__(self, update: Weights, task: TrainTask) -> Weights:
        sigma = self.noise_multiplier * task.clip_norm
        rng = noise_generator(self.test_seed, task.round)
        return {name: (np.asarray(value, np.float64) + rng.normal(0.0, sigma, np.shape(value))).astype(np.float32)
                for name, value in update.items()}


def local_epsilon(mechanisms: Sequence[tuple[float, int]], delta: float) -> float | None:
    """The epsilon at ``delta`` of a device that sent ``count`` updates with noise multiplier ``z`` for each
    ``(z, count)``; None when dp-accounting is not installed.

    One update is a Gaussian mechanism on the clipped update; with "replace the device's data" neighbours its
    sensitivity is 2C, so its noise is z / 2 of the sensitivity. Gaussian mechanisms compose exactly into one
    Gaussian with ``sigma = (sum over updates of (z / 2)^-2)^-1/2`` (what dp-accounting's PLD accountant does for
    a ``SelfComposedDpEvent`` of a ``GaussianDpEvent``), whose epsilon dp-accounting's ``get_epsilon_gaussian``
    gives exactly (the analytic Gaussian mechanism, Balle and Wang 2018). The PLD accountant itself is not used:
    at the large epsilons of local DP its discretization costs seconds and gigabytes, and over-reports.
    """
    if not 0 < delta < 1:
        raise LocalDpError(f"local-delta: expected a number in (0, 1), found {delta!r}")
    mechanisms = [(_check_noise(z), count) for z, count in mechanisms if count > 0]
    if not mechanisms:
        return 0.0
    try:
        from dp_accounting import get_epsilon_gaussian
    except ImportError:
        return None
    try:
        precision = math.fsum(count * 4.0 / (z * z) for z, count in mechanisms)  # sigma^-2 of the composition
    except (OverflowError, ZeroDivisionError):  # a noise multiplier so small that it is no noise
        return math.inf
    if precision == 0:  # so much noise that nothing is disclosed
        return 0.0
    if not math.isfinite(precision):
        return math.inf
    return float(get_epsilon_gaussian(precision ** -0.5, delta))


class LocalDpLedger:
    """A device's own count of the updates it sent with local noise, per artifact and noise multiplier, in
    ``<cache>/local-dp/<device id>/<artifact id>.json`` (replaced atomically; it survives restarts)."""

    def __init__(self, root: Path, device_id: str) -> None:
        self.device_id = device_id
        self.folder = Path(root) / "local-dp" / device_id

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.json"

    def load(self, key: str) -> list[tuple[float, int]]:
        """The ``(z, updates sent)`` pairs of artifact ``key`` ([] for none); ``LocalDpError`` if the file is bad
        (a device never forgets its spending by starting again from zero)."""
        path = self.path(key)
        if not path.is_file():
            return []
        try:
            raw = json.loads(path.read_text())
            pairs = [(float(z), int(n)) for z, n in raw["sent"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LocalDpError(f"{path}: not a local DP ledger ({exc}); fix or delete it") from exc
        if any(n < 0 or not math.isfinite(z) or z <= 0 for z, n in pairs):
            raise LocalDpError(f"{path}: counts must be >= 0 and noise multipliers > 0")
        return pairs

    def add(self, key: str, z: float) -> list[tuple[float, int]]:
        """Count one more update sent with noise multiplier ``z``; the updated pairs."""
        counts = dict(self.load(key))
        counts[z] = counts.get(z, 0) + 1
        pairs = sorted(counts.items())
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"artifact_id": key, "sent": [[z, n] for z, n in pairs]}, f)
        os.replace(tmp, self.path(key))
        return pairs
