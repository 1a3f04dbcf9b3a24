"""``edgefl dp-plan``: the noise multiplier that meets a privacy target, and what it costs.

Needs ``dp-accounting`` (the coordinator extra), imported only when the command runs. docs/PRIVACY.md,
"Planning a budget: edgefl dp-plan", explains the output.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from coordinator.errors import ConfigError
from edge_runtime.argtypes import positive_float, positive_int, probability

DELTA_EXPONENT = 1.1  # default delta: 1 / population ** 1.1
CHECKPOINTS = 10  # epsilon is printed after every tenth of the rounds


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "dp-plan", help="calibrate the DP noise multiplier for a privacy target and print what it costs",
        description="Find the smallest noise multiplier z (--dp-noise-multiplier) whose rounds stay within "
                    "--target-epsilon at --target-delta, each round selecting --devices-per-round of --population "
                    "eligible devices (over-selection included), with dp-accounting's RDP accountant and the "
                    "sampling model of docs/PRIVACY.md. Prints z, the epsilon after every tenth of the rounds and "
                    "the noise relative to the clip bound and to the round's mean update.")
    p.add_argument("--target-epsilon", type=positive_float, required=True, help="epsilon after the last round")
    p.add_argument("--target-delta", type=probability,
                   help="delta, in (0, 1) (default: 1 / population^1.1, below 1 / population)")
    p.add_argument("--rounds", type=positive_int, required=True, help="rounds the budget has to cover")
    p.add_argument("--devices-per-round", type=positive_int, required=True,
                   help="devices selected each round, over-selected ones included (goal x --over-select)")
    p.add_argument("--goal", type=positive_int,
                   help="updates a round averages (the denominator of the mean; default: --devices-per-round)")
    p.add_argument("--population", type=positive_int, required=True,
                   help="devices eligible when a round selects (the smallest number you expect)")
    p.set_defaults(handler=run)


@dataclass(frozen=True)
class Plan:
    """A calibrated noise multiplier and the epsilon it leaves after some of the rounds."""

    noise_multiplier: float
    delta: float
    goal: int
    checkpoints: tuple[tuple[int, float], ...]  # (rounds, epsilon after them)


def default_delta(population: int) -> float:
    return float(population ** -DELTA_EXPONENT)


def make_plan(target_epsilon: float, delta: float | None, rounds: int, sampled: int, population: int,
              goal: int | None = None) -> Plan:
    """Calibrate z for the target (``ConfigError`` naming the flag for an impossible one) and account its rounds."""
    from coordinator.privacy import PrivacyError, RoundEvent, calibrate_noise, epsilon

    if sampled > population:
        raise ConfigError("dp-plan", "devices-per-round", f"at most --population ({population})", sampled)
    goal = sampled if goal is None else goal
    if goal > sampled:
        raise ConfigError("dp-plan", "goal", f"at most --devices-per-round ({sampled})", goal)
    delta = default_delta(population) if delta is None else delta
    if not 0 < delta < 1:
        raise ConfigError("dp-plan", "target-delta", "a number in (0, 1)", delta)
    if not math.isfinite(target_epsilon):
        raise ConfigError("dp-plan", "target-epsilon", "a finite number > 0", target_epsilon)
    try:
        z = calibrate_noise(target_epsilon, delta, rounds, sampled, population)
    except PrivacyError as exc:
        raise ConfigError("dp-plan", "target-epsilon", f"a reachable target ({exc})", target_epsilon) from exc
    marks = sorted({max(1, round(rounds * k / CHECKPOINTS)) for k in range(1, CHECKPOINTS + 1)})
    event = RoundEvent(population, sampled, z)
    return Plan(z, delta, goal, tuple((t, epsilon([event] * t, delta)) for t in marks))


def run(args: argparse.Namespace) -> int:
    plan = make_plan(args.target_epsilon, args.target_delta, args.rounds, args.devices_per_round, args.population,
                     args.goal)
    z = plan.noise_multiplier
    rate = args.devices_per_round / args.population
    print(f"target: epsilon {args.target_epsilon:g} at delta {plan.delta:.3g} after {args.rounds} rounds, "
          f"{args.devices_per_round} of {args.population} devices per round (sampling rate {rate:.3g})")
    print(f"noise multiplier: {z:.4f}   (--dp-noise-multiplier {z:.4f})")
    print(f"noise std on the sum: {z:.4f} x the clip bound C")
    print(f"noise std on the mean: {z / plan.goal:.4f} x C (z x C / goal, goal {plan.goal}), per coordinate")
    print("rounds  epsilon")
    for t, eps in plan.checkpoints:
        print(f"{t:>6}  {eps:.4f}")
    return 0
