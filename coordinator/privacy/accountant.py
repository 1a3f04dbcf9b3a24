"""User-level privacy accounting for DP-FedAvg rounds, by Google's ``dp_accounting`` (no I/O).

The sampling model (docs/PRIVACY.md, "Accounting and its assumptions", says it at length):

* A user is a device. In one round a device sends at most one update, clipped to L2 norm ``C``
  (the clip bound); the server adds Gaussian noise of standard deviation ``z * C`` to the *sum* of
  the updates it accepts and divides by a fixed denominator. ``RoundEvent.noise_multiplier`` is
  that ``z``, relative to ``C``.
* Each round selects ``sampled`` devices uniformly at random without replacement among the
  ``population`` eligible ones (``coordinator/selection.py``), over-selection included: every
  selected device is counted as sampled, although the goal truncation keeps only the first reports.
* The neighbouring relation is *replace one device* (``NeighboringRelation.REPLACE_ONE``), the one
  ``SampledWithoutReplacementDpEvent`` is defined for (Wang, Balle and Kasiviswanathan, 2019): the
  population size is public, one device's data is replaced by anything else. Replacing one update
  moves the sum by up to ``2C`` (two vectors of norm ``C``), and so does the goal truncation (the
  replaced device's report may displace one other report, never more), so the Gaussian of a round
  has multiplier ``z / 2`` relative to that sensitivity. ``round_dp_event`` builds
  ``SampledWithoutReplacementDpEvent(population, sampled, GaussianDpEvent(z / 2))``.
* Rounds compose (``ComposedDpEvent`` of ``SelfComposedDpEvent`` s, identical rounds grouped).

``epsilon(..., method="rdp")`` (the default) uses the RDP accountant with the sampling
amplification above. The PLD accountant of ``dp_accounting`` 0.6 does not support sampling
without replacement, so ``method="pld"`` composes the rounds' Gaussians *without* amplification
(``unamplified_dp_event``, in the PLD accountant's own convention for ``REPLACE_ONE``):
a sound upper bound, exact when every eligible device is selected, loose otherwise (its discretization is
pessimistic too, and at small noise multipliers over many rounds it needs seconds and a lot of memory: it is for
comparisons, not for the round lines). No Poisson approximation is used anywhere: it would describe a sampling
the coordinator does not do.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dp_accounting
from dp_accounting import NeighboringRelation
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from coordinator.errors import CoordinatorError

#: RDP orders: wider than ``dp_accounting``'s default at both ends (orders near 1 for large epsilons,
#: orders up to 4096 for large noise multipliers and small sampling rates).
RDP_ORDERS: tuple[float, ...] = (
    tuple(1 + x / 100 for x in range(1, 10))
    + tuple(1 + x / 10 for x in range(1, 100))
    + tuple(float(x) for x in range(11, 64))
    + (64.0, 80.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0, 768.0, 1024.0, 2048.0, 4096.0)
)

Method = Literal["rdp", "pld"]
_FIELDS = ("population", "sampled", "noise_multiplier")
_SMALLEST_NOISE = 0.01
_CACHE_SIZE = 16
_CACHE: dict[tuple[str, tuple[RoundEvent, ...]], dp_accounting.PrivacyAccountant] = {}


class PrivacyError(CoordinatorError, ValueError):
    """A privacy value is malformed, or a privacy target cannot be met."""


@dataclass(frozen=True)
class RoundEvent:
    """The privacy-relevant facts of one aggregated round."""

    population: int  # devices eligible when the round's devices were selected
    sampled: int  # devices selected (over-selection included: each of them may contribute)
    noise_multiplier: float  # the effective z of the round's Gaussian mechanism (sum sensitivity = the clip bound)

    def __post_init__(self) -> None:
        _check_count("population", self.population, 1)
        _check_count("sampled", self.sampled, 1)
        if self.sampled > self.population:
            raise PrivacyError(f"sampled: expected at most population ({self.population}), found {self.sampled}")
        z = self.noise_multiplier
        if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z) or z < 0:
            raise PrivacyError(f"noise_multiplier: expected a finite number >= 0, found {z!r}")

    def to_json(self) -> dict[str, Any]:
        z = float(self.noise_multiplier)
        return {"population": self.population, "sampled": self.sampled, "noise_multiplier": z}

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> RoundEvent:
        """The event a ``to_json`` wrote; a missing, extra or mistyped field raises ``PrivacyError``."""
        if not isinstance(value, Mapping):
            raise PrivacyError(f"round event: expected an object, found {type(value).__name__}")
        missing = [k for k in _FIELDS if k not in value]
        extra = sorted(str(k) for k in value if k not in _FIELDS)
        if missing or extra:
            raise PrivacyError(f"round event: missing fields {missing}, unknown fields {extra}")
        return cls(value["population"], value["sampled"], value["noise_multiplier"])


def _check_count(name: str, value: object, smallest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
        raise PrivacyError(f"{name}: expected an integer >= {smallest}, found {value!r}")


def _check_delta(delta: float) -> None:
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0 < delta < 1:
        raise PrivacyError(f"delta: expected a number in (0, 1), found {delta!r}")


def round_dp_event(event: RoundEvent) -> dp_accounting.DpEvent:
    """The mechanism of one round, for an accountant with ``NeighboringRelation.REPLACE_ONE``."""
    gaussian = dp_accounting.GaussianDpEvent(event.noise_multiplier / 2)
    return dp_accounting.SampledWithoutReplacementDpEvent(event.population, event.sampled, gaussian)


def run_dp_event(events: Sequence[RoundEvent]) -> dp_accounting.DpEvent:
    """The composition of ``events``, identical rounds grouped into one ``SelfComposedDpEvent``."""
    counts = Counter(events)
    return dp_accounting.ComposedDpEvent(
        [dp_accounting.SelfComposedDpEvent(round_dp_event(e), n) for e, n in counts.items()]
    )


def make_accountant(method: Method = "rdp") -> dp_accounting.PrivacyAccountant:
    """A fresh accountant of the kind ``epsilon`` uses."""
    if method == "rdp":
        return RdpAccountant(RDP_ORDERS, NeighboringRelation.REPLACE_ONE)
    if method == "pld":
        return PLDAccountant(NeighboringRelation.REPLACE_ONE)
    raise PrivacyError(f"method: expected 'rdp' or 'pld', found {method!r}")


def unamplified_dp_event(events: Sequence[RoundEvent]) -> dp_accounting.DpEvent:
    """The rounds ``events`` as if every eligible device took part in each, for ``PLDAccountant(REPLACE_ONE)``.

    dp-accounting's PLD accountant states a Gaussian's noise multiplier relative to one record's contribution and,
    under ``REPLACE_ONE``, moves the mean by twice it (``privacy_loss_mechanism``: "REPLACE adjacency corresponds
    to the same privacy loss distribution with twice the sensitivity"). So the PLD event of a round is
    ``GaussianDpEvent(z)``, z relative to C, where the RDP accountant's ``SampledWithoutReplacementDpEvent`` takes
    ``z / 2``, relative to the 2C a replacement moves the sum by.
    """
    counts = Counter(e.noise_multiplier for e in events)
    return dp_accounting.ComposedDpEvent(
        [dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), n) for z, n in counts.items()]
    )


def epsilon(events: Sequence[RoundEvent], delta: float, method: Method = "rdp") -> float:
    """The epsilon at ``delta`` of the rounds ``events`` (0 for none; ``inf`` if a round had no noise)."""
    _check_delta(delta)
    if not events:
        return 0.0
    if any(e.noise_multiplier == 0 for e in events):
        return math.inf
    return float(_composed(tuple(events), method).get_epsilon(delta))


def _composed(events: tuple[RoundEvent, ...], method: Method) -> dp_accounting.PrivacyAccountant:
    """An accountant holding ``events``: the cached one of ``events[:-1]`` plus the last round, if there is one.

    A round's RDP costs about 0.2 s to compute, so the round-by-round calls of a run (``allows``, then
    ``epsilon`` of the same rounds) reuse the previous call's accountant instead of composing every round
    again. The cache only holds accountants of exactly the events of their key: the results are the same.
    """
    key = (method, events)
    found = _CACHE.get(key)
    if found is None:
        before = _CACHE.get((method, events[:-1]))
        if before is not None:
            found = copy.deepcopy(before)
            found.compose(round_dp_event(events[-1]) if method == "rdp" else unamplified_dp_event(events[-1:]))
        else:
            found = make_accountant(method)
            found.compose(run_dp_event(events) if method == "rdp" else unamplified_dp_event(events))
        _CACHE[key] = found
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
    return found


def allows(events: Sequence[RoundEvent], next_event: RoundEvent, target_epsilon: float, delta: float) -> bool:
    """Whether running ``next_event`` after ``events`` keeps the epsilon at ``delta`` within the target."""
    return epsilon([*events, next_event], delta) <= target_epsilon


def calibrate_noise(target_epsilon: float, delta: float, rounds: int, sampled: int, population: int) -> float:
    """The smallest noise multiplier (within 1e-4) whose ``rounds`` identical rounds cost at most the target.

    The result always meets the target: ``epsilon`` of those rounds at ``delta`` is ``<= target_epsilon``.
    """
    _check_count("rounds", rounds, 1)
    RoundEvent(population, sampled, 1.0)  # checks the counts
    _check_delta(delta)
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, (int, float)) or not (
        0 < target_epsilon < math.inf
    ):
        raise PrivacyError(f"target epsilon: expected a finite number > 0, found {target_epsilon!r}")

    def run(z: float) -> dp_accounting.DpEvent:
        return dp_accounting.SelfComposedDpEvent(round_dp_event(RoundEvent(population, sampled, z)), rounds)

    if epsilon([RoundEvent(population, sampled, _SMALLEST_NOISE)] * rounds, delta) <= target_epsilon:
        return _SMALLEST_NOISE
    try:
        z = dp_accounting.calibrate_dp_mechanism(
            make_accountant, run, target_epsilon, delta,
            dp_accounting.LowerEndpointAndGuess(_SMALLEST_NOISE, 1.0), tol=1e-4,
        )
    except dp_accounting.mechanism_calibration.NoBracketIntervalFoundError as e:
        raise PrivacyError(
            f"no noise multiplier up to 2^30 reaches epsilon {target_epsilon} at delta {delta} in {rounds} rounds"
        ) from e
    return float(z)
