"""DP-FedAvg (McMahan et al., 2018) around any streaming strategy, with fixed or adaptive clipping (Andrew et al.,
2021). docs/PRIVACY.md says what it protects and how to choose its options.

Each round, the wrapper sums the accepted updates (each clipped by its device to the round's bound C, and checked
against it here) with weight 1 whatever example count a device claims, adds Gaussian noise of standard deviation
``z_value * C`` to every coordinate of the sum, divides by the round's goal (a fixed denominator, not the number
of updates that arrived), and hands that noised mean to the wrapped strategy as the round's only update: FedAvg,
FedAdam and the others then step as usual.

Adaptive clipping moves C geometrically towards the ``target_quantile`` of the updates' norms:
``C <- C * exp(-clip_lr * (b - target_quantile))``, b the fraction of updates with norm <= C (as their devices
reported it), noised with ``clipped_count_stddev`` on the count (``noised_fraction``). The accountant is charged
the configured ``z``; the noise on the sum then has ``z_value = (z^-2 - (2 sigma_b)^-2)^-1/2`` (Andrew et al.,
Theorem 1, as TensorFlow Federated's ``gaussian_adaptive`` does).

The accountant's events, the bound and the delta live in the server state's ledger under ``privacy`` (JSON),
checkpointed with the rest: ``--resume`` continues the same ledger. Noise comes from a generator seeded by the
operating system's CSPRNG each round (``secrets``), or, for tests only, from ``(test_seed, round)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from coordinator.errors import ConfigError
from coordinator.options import want
from coordinator.privacy.accountant import RoundEvent, allows, epsilon
from coordinator.server_state import Arrays, ServerState
from coordinator.strategies.arith import WeightedSum
from coordinator.strategies.base import Diagnostics, RoundContext, Strategy
from edge_runtime.local_dp import noise_generator
from edge_runtime.weights import Weights

ADAPTIVE = "adaptive"
LEDGER_KEY = "privacy"
# Andrew et al. (2021) and TensorFlow Federated's DifferentiallyPrivateFactory.gaussian_adaptive defaults.
INITIAL_CLIP = 0.1
TARGET_QUANTILE = 0.5
CLIP_LR = 0.2
CLIPPED_COUNT_STDDEV_PER_GOAL = 0.05  # sigma_b = 0.05 x clients per round (the goal)
DELTA_EXPONENT = 1.1  # default delta: 1 / population ** 1.1, population = devices known at the first round


@dataclass(frozen=True)
class DpOptions:
    """Central DP's options, named like their flags (``noise_multiplier`` is ``--dp-noise-multiplier``)."""

    noise_multiplier: float  # z >= 0; the configuration builds no wrapper for 0 (no DP), tests use it (no noise)
    clip: float | None = None  # a fixed bound; None: adaptive, starting at INITIAL_CLIP
    target_quantile: float = TARGET_QUANTILE
    clip_lr: float = CLIP_LR
    clipped_count_stddev: float | None = None  # None: CLIPPED_COUNT_STDDEV_PER_GOAL x the goal, at least z
    target_epsilon: float | None = None
    target_delta: float | None = None  # None: 1 / population ** DELTA_EXPONENT
    test_seed: int | None = None  # tests only: noise drawn from (test_seed, round) instead of the OS's CSPRNG
    method: Literal["rdp"] = "rdp"

    def __post_init__(self) -> None:
        z = self.noise_multiplier
        want(_number(z) and z >= 0, "dp-noise-multiplier", "a finite number >= 0 (0: no DP)", z)
        want(self.clip is None or (_number(self.clip) and self.clip > 0), "dp-clip",
             f"an L2 bound > 0 or {ADAPTIVE}", self.clip)
        want(_number(self.target_quantile) and 0 < self.target_quantile < 1, "dp-target-quantile",
             "a number in (0, 1)", self.target_quantile)
        want(_number(self.clip_lr) and self.clip_lr > 0, "dp-clip-lr", "a number > 0", self.clip_lr)
        stddev = self.clipped_count_stddev
        want(stddev is None or (_number(stddev) and stddev > z / 2), "dp-clipped-count-stddev",
             f"a number > dp-noise-multiplier / 2 ({z / 2:g}): below it the noise on the sum is undefined "
             "(Andrew et al., Theorem 1)", stddev)
        want(self.target_epsilon is None or (_number(self.target_epsilon) and self.target_epsilon > 0),
             "target-epsilon", "a finite number > 0", self.target_epsilon)
        want(self.target_delta is None or (_number(self.target_delta) and 0 < self.target_delta < 1),
             "target-delta", "a number in (0, 1)", self.target_delta)

    @property
    def adaptive(self) -> bool:
        return self.clip is None

    def count_stddev(self, goal: int) -> float:
        """sigma_b: the noise on a round's count of unclipped updates. By default TFF's 0.05 x the goal, but at
        least z, so that a round with a small goal still has a noise multiplier for the sum (at most 2/sqrt(3) z)
        where TFF would refuse: a fleet's goal follows its eligible devices through the day."""
        if self.clipped_count_stddev is not None:
            return self.clipped_count_stddev
        return max(CLIPPED_COUNT_STDDEV_PER_GOAL * goal, self.noise_multiplier)

    def value_multiplier(self, goal: int) -> float | None:
        """The multiplier of the noise on the sum: z with a fixed bound; (z^-2 - (2 sigma_b)^-2)^-1/2 under
        adaptive clipping, None where that is undefined (z >= 2 sigma_b)."""
        z = self.noise_multiplier
        if not self.adaptive or z == 0:
            return z
        rest = z ** -2 - (2 * self.count_stddev(goal)) ** -2
        return rest ** -0.5 if rest > 0 else None


@dataclass(frozen=True)
class PrivacyLedger:
    """The ``privacy`` entry of the server state's ledger: every released round's event, the next bound, delta."""

    events: tuple[RoundEvent, ...]
    clip: float
    delta: float | None = None  # fixed at the first private round (or by --target-delta)

    @classmethod
    def of(cls, state: ServerState, options: DpOptions) -> PrivacyLedger:
        raw = state.ledger.get(LEDGER_KEY)
        if raw is None:
            return cls((), options.clip if options.clip is not None else INITIAL_CLIP, options.target_delta)
        delta = options.target_delta if options.target_delta is not None else raw.get("delta")
        clip = options.clip if options.clip is not None else float(raw["clip"])
        return cls(tuple(RoundEvent.from_json(e) for e in raw["events"]), clip, delta)

    def to_json(self) -> dict[str, Any]:
        return {"events": [e.to_json() for e in self.events], "clip": self.clip, "delta": self.delta}

    def into(self, state: ServerState) -> ServerState:
        return replace(state, ledger={**state.ledger, LEDGER_KEY: self.to_json()})


class DpSum:
    """A round's accumulator under DP: the float64 sum of the accepted updates, each with weight 1, and the
    norms their devices reported before clipping."""

    def __init__(self, template: Mapping[str, np.ndarray], context: RoundContext) -> None:
        self.context = context
        self.norms: list[float] = []
        self._sum = WeightedSum(template)

    @property
    def count(self) -> int:
        return self._sum.count

    def add(self, tensors: Mapping[str, np.ndarray], weight: float) -> None:
        self._sum.add(tensors, 1.0)  # uniform: an example count is a device's claim, of unbounded sensitivity

    def add_sum(self, total: Mapping[str, np.ndarray], count: int) -> None:
        self._sum.add_sum(total, count)  # each of weight 1, as ``add`` weighs them

    def observe_norm(self, norm: float) -> None:
        self.norms.append(float(norm))

    def total(self) -> dict[str, np.ndarray]:
        return self._sum.total()


class DpFedAvg:
    """Differentially private aggregation around the streaming strategy ``inner`` (module docstring)."""

    streaming = True

    def __init__(self, inner: Strategy[Any], options: DpOptions) -> None:
        if not inner.streaming:
            raise ConfigError("configuration", "strategy", "a streaming strategy (fedavg, fedavgm, fedadam, fedyogi, "
                              "fedadagrad) with --dp-noise-multiplier: DP-FedAvg bounds how much one device moves "
                              "the noised sum; a robust rule aggregates otherwise and that bound, hence the privacy "
                              "the accountant states, would not hold", inner.name)
        self.inner, self.options = inner, options
        self.name = inner.name  # the checkpoint's strategy arrays are the wrapped strategy's

    def init(self, weights: Arrays) -> Arrays:
        return self.inner.init(weights)

    def begin(self, weights: Arrays, capacity: int, context: RoundContext | None = None) -> DpSum:
        if context is None:
            raise ValueError("DP-FedAvg needs the round's context (its goal is the fixed denominator)")
        return DpSum(weights, context)

    def apply(self, state: ServerState, accumulated: DpSum) -> tuple[ServerState, Diagnostics]:
        context, options = accumulated.context, self.options
        ledger = PrivacyLedger.of(state, options)
        multiplier = options.value_multiplier(context.goal)
        if multiplier is None:
            raise ValueError(f"no noise multiplier for the sum: z {options.noise_multiplier} >= 2 x "
                             f"{options.count_stddev(context.goal)} (the clipped count's noise)")
        rng = noise_generator(options.test_seed, context.number)
        std = multiplier * ledger.clip
        mean = noised_mean(accumulated.total(), std, context.goal, rng)
        single = self.inner.begin(state.weights, 1, context)
        single.add(mean, 1.0)
        after, diagnostics = self.inner.apply(state, single)
        clip, unclipped = ledger.clip, math.nan
        if options.adaptive:
            unclipped = noised_fraction(accumulated.norms, ledger.clip, options.count_stddev(context.goal),
                                        context.goal, rng)
            clip = next_clip(ledger.clip, unclipped, options.target_quantile, options.clip_lr)
        event = RoundEvent(context.eligible, context.selected, options.noise_multiplier)
        after = replace(ledger, events=(*ledger.events, event), clip=clip).into(after)
        extra = {"dp_noise_std": std, "dp_clip": ledger.clip, "dp_next_clip": clip}
        if options.adaptive:
            extra["dp_unclipped"] = unclipped
        return after, {**diagnostics, **extra}

    # -- what the round machine asks (coordinator.strategies.base.Private) ----------------------------

    def prepared(self, state: ServerState, known_devices: int) -> ServerState:
        ledger = PrivacyLedger.of(state, self.options)
        if ledger.delta is not None and LEDGER_KEY in state.ledger:
            return state
        delta = ledger.delta if ledger.delta is not None else default_delta(known_devices)
        return replace(ledger, delta=delta).into(state)

    def clip_bound(self, state: ServerState) -> float:
        return PrivacyLedger.of(state, self.options).clip

    def refusal(self, state: ServerState, context: RoundContext) -> str | None:
        options = self.options
        if options.value_multiplier(context.goal) is None:
            return (f"dp-noise-multiplier {options.noise_multiplier:g} is not below 2 x the clipped count's noise "
                    f"({2 * options.count_stddev(context.goal):g} for a goal of {context.goal}): raise "
                    "--dp-clipped-count-stddev or the goal, or lower the multiplier")
        if options.target_epsilon is None:
            return None
        ledger = PrivacyLedger.of(state, options)
        delta = _delta(ledger)
        event = RoundEvent(context.eligible, context.selected, options.noise_multiplier)
        if allows(ledger.events, event, options.target_epsilon, delta):
            return None
        after = epsilon([*ledger.events, event], delta, options.method)
        return (f"round {context.number} would bring epsilon to {after:.4g} at delta {delta:.3g}, over "
                f"--target-epsilon {options.target_epsilon:g}")

    def report(self, state: ServerState, clip: float) -> dict[str, Any]:
        options = self.options
        ledger = PrivacyLedger.of(state, options)
        delta = _delta(ledger)
        return {"epsilon": epsilon(ledger.events, delta, options.method), "delta": delta,
                "noise_multiplier": options.noise_multiplier, "clip": clip, "method": options.method}


def noised_mean(total: Mapping[str, np.ndarray], std: float, denominator: int,
                rng: np.random.Generator) -> Weights:
    """``(total + N(0, std^2)) / denominator`` per coordinate, in float64."""
    return {name: (np.asarray(value, np.float64) + rng.normal(0.0, std, np.shape(value))) / denominator
            for name, value in total.items()}


def noised_fraction(norms: list[float], clip: float, stddev: float, denominator: int,
                    rng: np.random.Generator) -> float:
    """The fraction of updates whose norm was at most ``clip``, noised as TensorFlow Privacy's quantile estimator
    does: each update counts +1/2 if unclipped, -1/2 if clipped (so one device moves the count by at most 1),
    ``(centred count + N(0, stddev^2)) / denominator + 1/2``, kept in [0, 1] (post-processing). With fewer updates
    than the denominator the missing ones count as neither."""
    centred = sum(0.5 if norm <= clip else -0.5 for norm in norms)
    return float(min(1.0, max(0.0, (centred + rng.normal(0.0, stddev)) / denominator + 0.5)))


def next_clip(clip: float, unclipped: float, target_quantile: float, lr: float) -> float:
    """Andrew et al.'s geometric step: the bound shrinks when more than ``target_quantile`` went unclipped."""
    return float(clip * math.exp(-lr * (unclipped - target_quantile)))


def default_delta(population: int) -> float:
    return float(max(2, population) ** -DELTA_EXPONENT)


def _delta(ledger: PrivacyLedger) -> float:
    if ledger.delta is None:
        raise ValueError("the privacy ledger has no delta yet (prepared() fixes it before the first round)")
    return ledger.delta


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
