"""What an aggregation strategy is: ``init`` and a pure ``apply`` over the server state (FedJAX's shape).

A round asks the strategy for an accumulator (``begin``), adds each accepted
update to it with its weight, and, if the round commits, hands it to
``apply(state, accumulator)``, which returns the next ``ServerState`` (new
weights and new strategy arrays; the counters are the round's business) and
diagnostics for the round line. ``apply`` does no I/O and changes nothing it
was given, so a state can be checkpointed and a round replayed.

A strategy is a frozen dataclass whose fields are its hyperparameters, named
as their command-line options (``server_lr`` is ``--server-lr``); its
``__post_init__`` refuses a bad value naming the option.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np

from coordinator.options import want
from coordinator.server_state import Arrays, ServerState

Diagnostics = dict[str, float]
A = TypeVar("A")


@dataclass(frozen=True)
class RoundContext:
    """What a round tells its strategy's ``begin``: a wrapper may need it (differential privacy divides by the
    goal, a fixed denominator, and accounts the round by its eligible and selected counts); the plain strategies
    ignore it."""

    number: int
    goal: int
    eligible: int
    selected: int


class Strategy(Protocol[A]):
    name: ClassVar[str]
    streaming: ClassVar[bool]  # True: O(model) memory per round; False: holds the round's accepted updates

    def init(self, weights: Arrays) -> Arrays:
        """The strategy's arrays before the first round (empty for a stateless strategy)."""
        ...

    def begin(self, weights: Arrays, capacity: int, context: RoundContext | None = None) -> A:
        """A fresh accumulator for one round of at most ``capacity`` updates (``context``: the round's counts,
        when a round gives them)."""
        ...

    def apply(self, state: ServerState, accumulated: A) -> tuple[ServerState, Diagnostics]:
        """The state after a committed round; ``accumulated`` holds at least one update."""
        ...


@runtime_checkable
class NormObserver(Protocol):
    """An accumulator that also wants each accepted update's norm before clipping, as its device reported it
    (adaptive clipping counts the updates that were clipped)."""

    def observe_norm(self, norm: float) -> None: ...


@runtime_checkable
class SumAccumulator(Protocol):
    """A streaming strategy's accumulator that can take the sum of several updates at once (secure aggregation,
    where the coordinator never sees one update alone)."""

    def add_sum(self, total: Mapping[str, np.ndarray], count: int) -> None: ...


@runtime_checkable
class Private(Protocol):
    """What the round machine asks a differentially private wrapper (``coordinator.strategies.dp_fedavg``),
    without importing it (its accountant needs ``dp_accounting``, which a run without DP does not)."""

    def prepared(self, state: ServerState, known_devices: int) -> ServerState:
        """``state`` with what the first private round fixes in the ledger (delta from the devices known)."""
        ...

    def clip_bound(self, state: ServerState) -> float:
        """The L2 bound devices clip to in the next round."""
        ...

    def refusal(self, state: ServerState, context: RoundContext) -> str | None:
        """Why the round ``context`` describes must not run (the budget would be exceeded), or None."""
        ...

    def report(self, state: ServerState, clip: float) -> dict[str, Any]:
        """The round line's ``privacy`` object: epsilon so far at delta, the noise multiplier, ``clip``."""
        ...


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def check_fraction(value: float, key: str, low_open: bool = False, high_open: bool = True) -> None:
    bounds = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    ok = _finite(value) and (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    want(ok, key, f"a number in {bounds}", value)


def check_positive(value: float, key: str) -> None:
    want(_finite(value) and value > 0, key, "a number > 0", value)


def zeros_like(weights: Arrays, prefix: str) -> dict[str, np.ndarray]:
    """One float32 zero tensor per weight, named ``prefix/<weight name>``."""
    return {f"{prefix}/{name}": np.zeros(np.shape(value), np.float32) for name, value in weights.items()}


def slot(arrays: Arrays, prefix: str, weights: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The ``prefix/<weight name>`` arrays of a strategy state, keyed by weight name."""
    return {name: np.asarray(arrays[f"{prefix}/{name}"], np.float32) for name in weights}


def named(prefix: str, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}/{name}": value for name, value in tensors.items()}
