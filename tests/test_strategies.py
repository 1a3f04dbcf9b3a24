"""Aggregation strategies without a broker: each one's round checked against numbers worked out by hand.

The model is one 1x2 kernel and one bias. Weights and updates are multiples of 1/64 wherever a result is exact
in float32, and such results are compared with ``==``; the adaptive optimizers are also followed for three
rounds against their update equations written out below in float64. Then what every strategy owes the round
and the checkpoint: refusing bad options by name, leaving its input alone, keeping its arrays' names and
shapes, and giving the same model whether or not the coordinator was restarted half-way.
"""

from __future__ import annotations

import math
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.checkpoint import load_checkpoint, save_checkpoint
from coordinator.errors import ConfigError
from coordinator.rounds import OpenRound, RoundPlan
from coordinator.server_state import ServerState
from coordinator.strategies import STRATEGIES, Strategy, build_strategy, options_of
from coordinator.strategies.arith import UpdateBuffer, WeightedSum, pairwise_sq_distances
from coordinator.strategies.fedadagrad import FedAdagrad
from coordinator.strategies.fedadam import FedAdam
from coordinator.strategies.fedavg import FedAvg
from coordinator.strategies.fedavgm import FedAvgM
from coordinator.strategies.fedyogi import FedYogi
from coordinator.strategies.krum import Krum, MultiKrum
from coordinator.strategies.median import Median
from coordinator.strategies.trimmed_mean import TrimmedMean, per_side
from edge_runtime.manifest import WeightSpec
from edge_runtime.protocol import UpdateHeader
from edge_runtime.updates import l2_norm
from edge_runtime.weights import Weights

KERNEL, BIAS = "dense/kernel", "dense/bias"
SPECS = (WeightSpec(KERNEL, (1, 2)), WeightSpec(BIAS, (1,)))
Update = tuple[float, float, float]  # kernel[0], kernel[1], bias


def model(values: Update) -> Weights:
    return {KERNEL: np.array([values[:2]], np.float32), BIAS: np.array([values[2]], np.float32)}


def flat(tensors: Any, prefix: str = "") -> list[float]:
    """kernel[0], kernel[1], bias of ``tensors`` (of ``prefix/<name>`` in a strategy state)."""
    prefix = f"{prefix}/" if prefix else ""
    return [float(x) for x in (*np.ravel(tensors[prefix + KERNEL]), *np.ravel(tensors[prefix + BIAS]))]


GLOBAL = model((1.0, -1.0, 0.5))


def start(strategy: Strategy[Any], weights: Weights = GLOBAL) -> ServerState:
    return ServerState("ab" * 32, strategy.name, weights, strategy.init(weights))


def one_round(strategy: Strategy[Any], state: ServerState, updates: Sequence[tuple[Update, float]]
              ) -> tuple[ServerState, dict[str, float]]:
    """Feed ``(update, weight)`` pairs to a fresh accumulator and apply it."""
    accumulated = strategy.begin(state.weights, len(updates))
    for values, weight in updates:
        accumulated.add(model(values), weight)
    return strategy.apply(state, accumulated)


def assert_exact(actual: Any, expected: Any) -> None:
    """Same names in the same order, float32, equal values."""
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert actual[name].dtype == np.float32, name
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


# --- FedAvgM ------------------------------------------------------------------------------------


def test_fedavgm_accumulates_momentum_over_rounds() -> None:
    strategy = FedAvgM(server_lr=0.5, server_momentum=0.5)
    state = start(strategy)
    assert list(state.strategy_state) == [f"momentum/{KERNEL}", f"momentum/{BIAS}"]
    assert flat(state.strategy_state, "momentum") == [0.0, 0.0, 0.0]
    # round 1: delta = (1 * (0.5, -0.25, 0.25) + 3 * (-0.25, 0.5, 0.5)) / 4 = (-0.0625, 0.3125, 0.4375) = v
    state, diagnostics = one_round(strategy, state, [((0.5, -0.25, 0.25), 1), ((-0.25, 0.5, 0.5), 3)])
    assert flat(state.strategy_state, "momentum") == [-0.0625, 0.3125, 0.4375]
    assert flat(state.weights) == [0.96875, -0.84375, 0.71875]  # GLOBAL + 0.5 * v
    assert diagnostics["update_norm"] == l2_norm(model((-0.0625, 0.3125, 0.4375)))
    # round 2: delta = (0.25, 0.25, -0.5); v = 0.5 * v + delta = (0.21875, 0.40625, -0.28125)
    state, diagnostics = one_round(strategy, state, [((0.25, 0.25, -0.5), 2)])
    assert flat(state.strategy_state, "momentum") == [0.21875, 0.40625, -0.28125]
    assert flat(state.weights) == [1.078125, -0.640625, 0.578125]  # + 0.5 * v
    assert diagnostics["momentum_norm"] == l2_norm(model((0.21875, 0.40625, -0.28125)))


def test_fedavgm_without_momentum_is_fedavg() -> None:
    updates = [((0.5, -0.25, 0.25), 1.0), ((-0.25, 0.5, 0.5), 3.0)]
    with_momentum, _ = one_round(FedAvgM(server_lr=0.5, server_momentum=0.0), start(FedAvgM()), updates)
    plain, _ = one_round(FedAvg(server_lr=0.5), start(FedAvg()), updates)
    assert_exact(with_momentum.weights, plain.weights)


# --- FedAdam, FedYogi, FedAdagrad: one round by hand --------------------------------------------

# Each optimizer with tau = 0.75 (v starts at 0.5625) and a mean update delta = (d, -d, 0), chosen so that
# sqrt(v) is exact. The two updates (d + 0.75, -d + 0.75, 0.75) with weight 1 and (d - 0.25, -d - 0.25, -0.25)
# with weight 3 average to delta.
ONE_ROUND = [
    # FedAdam, d = 0.75: m = 0.5 * 0.75 = 0.375; v = 0.75 * 0.5625 + 0.25 * 0.5625 = 0.5625 (bias: 0.421875);
    # step = 0.5 * 0.375 / (0.75 + 0.75) = 0.125
    pytest.param(FedAdam(server_lr=0.5, beta1=0.5, beta2=0.75, tau=0.75), 0.75,
                 (0.375, -0.375, 0.0), (0.5625, 0.5625, 0.421875), (1.125, -1.125, 0.5), id="fedadam"),
    # FedYogi, d = 2: m = 1; v = 0.5625 + 0.25 * 4 (v < delta ** 2) = 1.5625 (bias: delta ** 2 = 0 < v, so
    # v - 0.25 * 0 = 0.5625); step = 0.5 * 1 / (1.25 + 0.75) = 0.25
    pytest.param(FedYogi(server_lr=0.5, beta1=0.5, beta2=0.75, tau=0.75), 2.0,
                 (1.0, -1.0, 0.0), (1.5625, 1.5625, 0.5625), (1.25, -1.25, 0.5), id="fedyogi"),
    # FedAdagrad, d = 1: m = 0.5; v = 0.5625 + 1 = 1.5625 (bias: 0.5625); step = 0.5 * 0.5 / 2 = 0.125
    pytest.param(FedAdagrad(server_lr=0.5, beta1=0.5, tau=0.75), 1.0,
                 (0.5, -0.5, 0.0), (1.5625, 1.5625, 0.5625), (1.125, -1.125, 0.5), id="fedadagrad"),
]


@pytest.mark.parametrize(("strategy", "d", "m", "v", "weights"), ONE_ROUND)
def test_an_adaptive_optimizer_round_by_hand(strategy: Strategy[Any], d: float, m: Update, v: Update,
                                             weights: Update) -> None:
    state = start(strategy)
    assert (flat(state.strategy_state, "m"), flat(state.strategy_state, "v")) == ([0.0] * 3, [0.5625] * 3)
    after, diagnostics = one_round(strategy, state, [((d + 0.75, -d + 0.75, 0.75), 1),
                                                     ((d - 0.25, -d - 0.25, -0.25), 3)])
    assert_exact(after.strategy_state, {**{f"m/{k}": t for k, t in model(m).items()},
                                        **{f"v/{k}": t for k, t in model(v).items()}})
    assert_exact(after.weights, model(weights))
    assert diagnostics["update_norm"] == l2_norm(model((d, -d, 0.0)))


# --- FedAdam, FedYogi, FedAdagrad: three rounds against the equations ---------------------------


def reference(rule: str, deltas: Sequence[Update], server_lr: float, beta1: float, beta2: float,
              tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reddi et al.'s Algorithm 2 without bias correction, in float64: weights, m and v after ``deltas``."""
    x, m, v = np.array(flat(GLOBAL)), np.zeros(3), np.full(3, tau**2)
    for delta in deltas:
        d = np.array(delta)
        m = beta1 * m + (1 - beta1) * d
        if rule == "adam":
            v = beta2 * v + (1 - beta2) * d**2
        elif rule == "yogi":
            v = v - (1 - beta2) * d**2 * np.sign(v - d**2)
        else:
            v = v + d**2
        x = x + server_lr * m / (np.sqrt(v) + tau)
    return x, m, v


# Three rounds of two updates (weights 1 and 3): their weighted means are the deltas the reference sees.
ROUNDS = [
    [((0.5, -0.25, 0.25), 1), ((-0.25, 0.5, 0.5), 3)],  # delta (-0.0625, 0.3125, 0.4375)
    [((0.03125, 0.0, -0.5), 1), ((0.015625, -0.25, 0.0), 3)],  # delta (0.01953125, -0.1875, -0.125)
    [((-1.0, 0.125, 0.0), 1), ((0.5, 0.125, 0.0009765625), 3)],  # delta (0.125, 0.125, 0.000732421875)
]
DELTAS = [(-0.0625, 0.3125, 0.4375), (0.01953125, -0.1875, -0.125), (0.125, 0.125, 0.000732421875)]


@pytest.mark.parametrize(("strategy", "rule"), [
    (FedAdam(), "adam"), (FedYogi(), "yogi"), (FedAdagrad(), "adagrad"),
    (FedAdam(server_lr=0.5, beta1=0.5, beta2=0.5, tau=0.25), "adam"),
    (FedYogi(server_lr=0.5, beta1=0.5, beta2=0.5, tau=0.25), "yogi"),
    (FedAdagrad(server_lr=1.0, beta1=0.9, tau=0.01), "adagrad"),
])
def test_an_adaptive_optimizer_follows_its_equations_for_three_rounds(strategy: Any, rule: str) -> None:
    state = start(strategy)
    for rounds, updates in enumerate(ROUNDS, 1):
        state, diagnostics = one_round(strategy, state, updates)
        assert diagnostics["update_norm"] == l2_norm(model(DELTAS[rounds - 1]))
        beta2 = getattr(strategy, "beta2", 0.0)
        x, m, v = reference(rule, DELTAS[:rounds], strategy.server_lr, strategy.beta1, beta2, strategy.tau)
        np.testing.assert_allclose(flat(state.strategy_state, "m"), m, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(flat(state.strategy_state, "v"), v, rtol=1e-6)
        np.testing.assert_allclose(flat(state.weights), x, rtol=1e-6, atol=1e-7)


def test_yogi_and_adam_part_where_v_is_above_the_squared_update() -> None:
    # The bias's v after round 2 is about 0.0021 for both; in round 3 its delta ** 2 is about 5.4e-7, far below:
    # Adam's v loses 1% of itself, Yogi's only 1% of that delta ** 2.
    adam, yogi = start(FedAdam()), start(FedYogi())
    for updates in ROUNDS[:2]:
        adam, _ = one_round(FedAdam(), adam, updates)
        yogi, _ = one_round(FedYogi(), yogi, updates)
    adam_v, yogi_v = float(adam.strategy_state[f"v/{BIAS}"][0]), float(yogi.strategy_state[f"v/{BIAS}"][0])
    adam, _ = one_round(FedAdam(), adam, ROUNDS[2])
    yogi, _ = one_round(FedYogi(), yogi, ROUNDS[2])
    assert float(adam.strategy_state[f"v/{BIAS}"][0]) == pytest.approx(0.99 * adam_v + 0.01 * DELTAS[2][2] ** 2)
    assert float(yogi.strategy_state[f"v/{BIAS}"][0]) == pytest.approx(yogi_v - 0.01 * DELTAS[2][2] ** 2)


# --- robust rules by hand -----------------------------------------------------------------------

# Five honest updates around E and one outlier X; X also claims far more examples than anyone else.
A, B, C, D, E = (0.25, 0.5, 0.0), (0.5, 0.25, 0.0), (0.25, 0.25, 0.25), (0.5, 0.5, 0.25), (0.375, 0.375, 0.125)
X = (8.0, -8.0, 4.0)
ZERO = model((0.0, 0.0, 0.0))


def robust_round(strategy: Strategy[Any], outlier: Update = X) -> tuple[list[float], dict[str, float]]:
    """The aggregate update (server_lr 1 from a zero model) of A..E and ``outlier``, and the diagnostics."""
    updates = [(A, 1.0), (B, 2.0), (C, 1.0), (D, 3.0), (E, 1.0), (outlier, 1000.0)]
    after, diagnostics = one_round(strategy, start(strategy, ZERO), updates)
    return flat(after.weights), diagnostics


ROBUST = [
    # per coordinate, the mean of the 3rd and 4th of six sorted values:
    # kernel[0] 0.25 0.25 [0.375 0.5] 0.5 8 -> 0.4375; kernel[1] -8 0.25 [0.25 0.375] 0.5 0.5 -> 0.3125;
    # bias 0 0 [0.125 0.25] 0.25 4 -> 0.1875
    pytest.param(Median(), (0.4375, 0.3125, 0.1875), {}, id="median"),
    # k = floor(0.2 * 6) = 1 per side, the mean of the middle four:
    # (0.25 + 0.375 + 0.5 + 0.5) / 4 = 0.40625; (0.25 + 0.25 + 0.375 + 0.5) / 4 = 0.34375;
    # (0 + 0.125 + 0.25 + 0.25) / 4 = 0.15625
    pytest.param(TrimmedMean(trim=0.2), (0.40625, 0.34375, 0.15625), {"trimmed": 1.0}, id="trimmed-mean"),
    # f = 1, 6 - 1 - 2 = 3 neighbours. E is 3/64 from each of A..D: score 9/64. A is 3/64 from E and 8/64
    # from B, C and D: score 19/64, and so are B, C and D. X is far from everyone. Krum takes E.
    pytest.param(Krum(), E, {"selected": 1.0, "bound_met": 1.0}, id="krum"),
    # m = n - f = 5: all but X, averaged uniformly: (1.875 / 5, 1.875 / 5, 0.625 / 5)
    pytest.param(MultiKrum(), (0.375, 0.375, 0.125), {"selected": 5.0, "bound_met": 1.0}, id="multi-krum"),
    # m = 2: E, then A (A, B, C and D tie at 19/64; the first to arrive wins)
    pytest.param(MultiKrum(krum_select=2), (0.3125, 0.4375, 0.0625), {"selected": 2.0, "bound_met": 1.0},
                 id="multi-krum-2"),
    pytest.param(MultiKrum(krum_select=1), E, {"selected": 1.0, "bound_met": 1.0}, id="multi-krum-1-is-krum"),
    # m = 50 is capped at n = 6: the plain mean, (1.875 + 8) / 6, (1.875 - 8) / 6, (0.625 + 4) / 6 in float32
    pytest.param(MultiKrum(krum_select=50), tuple(float(np.float32(x / 6)) for x in (9.875, -6.125, 4.625)),
                 {"selected": 6.0, "bound_met": 1.0}, id="multi-krum-all"),
]


@pytest.mark.parametrize(("strategy", "aggregate", "reported"), ROBUST)
def test_a_robust_rule_by_hand(strategy: Strategy[Any], aggregate: Update, reported: dict[str, float]) -> None:
    values, diagnostics = robust_round(strategy)
    assert values == list(aggregate)
    assert diagnostics == {"update_norm": l2_norm(model(aggregate)), **reported}


@pytest.mark.parametrize("strategy", [Median(), TrimmedMean(trim=0.2), Krum(), MultiKrum()],
                         ids=["median", "trimmed-mean", "krum", "multi-krum"])
def test_an_outlier_barely_moves_a_robust_rule_and_takes_fedavg(strategy: Strategy[Any]) -> None:
    honest = np.array([0.375, 0.375, 0.125])  # the plain mean of A..E
    values, _ = robust_round(strategy)
    assert np.abs(np.array(values) - honest).max() <= 0.0625
    assert robust_round(strategy, (800.0, -800.0, 400.0))[0] == values  # however large the outlier
    fedavg = np.array(flat(one_round(FedAvg(), start(FedAvg(), ZERO), [(u, 1.0) for u in (A, B, C, D, E, X)])[0]
                           .weights))
    assert np.abs(fedavg - honest).max() > 1.0  # (8 - 0.375) / 6 ~ 1.27 away, and growing with the outlier


def test_robust_rules_ignore_the_weights() -> None:
    for strategy in (Median(), TrimmedMean(trim=0.2), Krum(), MultiKrum()):
        weighted, _ = one_round(strategy, start(strategy, ZERO), [(A, 1.0), (B, 50.0), (C, 3.0)])
        uniform, _ = one_round(strategy, start(strategy, ZERO), [(A, 1.0), (B, 1.0), (C, 1.0)])
        assert_exact(weighted.weights, uniform.weights)


def test_a_robust_rule_steps_by_the_server_lr() -> None:
    after, _ = one_round(Median(server_lr=0.5), start(Median()), [(A, 1.0), (B, 1.0), (C, 1.0)])
    assert flat(after.weights) == [1.125, -0.875, 0.5]  # GLOBAL + 0.5 * median (0.25, 0.25, 0)


@pytest.mark.parametrize(("count", "attackers", "met"), [(5, 1, True), (4, 1, False), (3, 1, False),
                                                         (2, 0, False), (3, 0, True), (7, 2, True), (6, 2, False)])
def test_krum_says_whether_the_round_meets_n_above_2f_plus_2(count: int, attackers: int, met: bool) -> None:
    updates = [(A, 1.0), (B, 1.0), (C, 1.0), (D, 1.0), (E, 1.0), ((0.0, 0.0, 0.0), 1.0), (X, 1.0)][:count]
    _, diagnostics = one_round(Krum(attackers=attackers), start(Krum(), ZERO), updates)
    assert diagnostics["bound_met"] == float(met)


def test_krum_below_the_bound_still_picks_an_update() -> None:
    after, diagnostics = one_round(Krum(attackers=3), start(Krum(), ZERO), [(A, 1.0)])
    assert (flat(after.weights), diagnostics["bound_met"]) == (list(A), 0.0)
    # two updates are each other's only neighbour: equal scores, the first to arrive is taken
    after, _ = one_round(Krum(attackers=3), start(Krum(), ZERO), [(X, 1.0), (A, 1.0)])
    assert flat(after.weights) == list(X)
    # multi-krum with f >= n still averages at least one update
    after, diagnostics = one_round(MultiKrum(attackers=5), start(Krum(), ZERO), [(A, 1.0), (B, 1.0), (C, 1.0)])
    assert diagnostics["selected"] == 1.0


def test_pairwise_squared_distances_match_the_direct_sums() -> None:
    rng = np.random.default_rng(0)
    updates = [{KERNEL: rng.normal(size=(1, 2)).astype(np.float32), "x": rng.normal(size=(3, 4)).astype(np.float32)}
               for _ in range(5)]
    direct = [[sum(float(np.sum((np.float64(u[k]) - np.float64(w[k])) ** 2)) for k in u) for w in updates]
              for u in updates]
    np.testing.assert_allclose(pairwise_sq_distances(updates), direct, rtol=1e-12, atol=1e-12)
    assert np.all(np.diag(pairwise_sq_distances(updates)) == 0.0)


@pytest.mark.parametrize(("trim", "count", "k", "capped"), [
    (0.1, 9, 0, False), (0.1, 10, 1, False), (0.2, 6, 1, False), (0.0, 100, 0, False), (0.49, 3, 1, False),
    (0.49, 2, 0, False), (0.49, 1, 0, False), (0.4999999999999999, 1000, 499, False),
    (0.5, 4, 1, True), (0.75, 5, 2, True),  # outside what TrimmedMean accepts: the cap is only a guard
])
def test_trimmed_mean_drops_floor_trim_n_per_side(trim: float, count: int, k: int, capped: bool) -> None:
    assert per_side(trim, count) == (k, capped)


def test_trimmed_mean_with_too_few_updates_to_trim_is_the_plain_mean() -> None:
    after, diagnostics = one_round(TrimmedMean(), start(TrimmedMean(), ZERO), [(A, 1.0), (B, 1.0), (X, 9.0),
                                                                                (D, 1.0)])
    assert flat(after.weights) == [2.3125, -1.6875, 1.0625]  # (A + B + X + D) / 4, weights ignored
    assert diagnostics["trimmed"] == 0.0


# --- options --------------------------------------------------------------------------------------

DEFAULTS = {
    "fedavg": {"server_lr": 1.0},
    "fedavgm": {"server_lr": 1.0, "server_momentum": 0.9},
    "fedadam": {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    "fedyogi": {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3},
    "fedadagrad": {"server_lr": 0.1, "beta1": 0.0, "tau": 1e-3},
    "median": {"server_lr": 1.0},
    "trimmed-mean": {"server_lr": 1.0, "trim": 0.1},
    "krum": {"server_lr": 1.0, "attackers": 1},
    "multi-krum": {"server_lr": 1.0, "attackers": 1, "krum_select": None},
}
STREAMING = {"fedavg", "fedavgm", "fedadam", "fedyogi", "fedadagrad"}


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_a_strategy_has_its_documented_defaults(name: str) -> None:
    strategy = build_strategy(name, {key: None for key in DEFAULTS[name]})
    assert {f.name: getattr(strategy, f.name) for f in fields(strategy)} == DEFAULTS[name]
    assert (strategy.name, strategy.streaming) == (name, name in STREAMING)


def test_the_registry_holds_every_strategy() -> None:
    assert sorted(STRATEGIES) == sorted(DEFAULTS)
    assert {name: set(options_of(name)) for name in STRATEGIES} == {n: set(d) for n, d in DEFAULTS.items()}


BAD = [
    *[(name, "server_lr", value, "server-lr") for name in DEFAULTS for value in (0.0, -0.5, math.nan, math.inf)],
    *[("fedavgm", "server_momentum", value, "server-momentum") for value in (-0.1, 1.0, 1.5, math.nan)],
    *[(name, "beta1", value, "beta1") for name in ("fedadam", "fedyogi", "fedadagrad")
      for value in (-0.1, 1.0, math.nan)],
    *[(name, "beta2", value, "beta2") for name in ("fedadam", "fedyogi") for value in (-0.1, 1.0, math.inf)],
    *[(name, "tau", value, "tau") for name in ("fedadam", "fedyogi", "fedadagrad") for value in (0.0, -1e-3,
                                                                                                 math.nan)],
    *[("trimmed-mean", "trim", value, "trim") for value in (-0.1, 0.5, 0.75, math.nan)],
    *[(name, "attackers", value, "attackers") for name in ("krum", "multi-krum") for value in (-1, 1.5, True)],
    *[("multi-krum", "krum_select", value, "krum-select") for value in (0, -2, 2.5, False)],
]


@pytest.mark.parametrize(("name", "option", "value", "key"), BAD)
def test_a_bad_hyperparameter_is_refused_naming_its_option(name: str, option: str, value: Any, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_strategy(name, {option: value})
    assert caught.value.key == key
    assert key in str(caught.value)


def test_an_unknown_strategy_is_refused_listing_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as caught:
        build_strategy("fedprox", {})
    assert caught.value.key == "strategy"
    assert caught.value.expected == f"one of {', '.join(sorted(DEFAULTS))}"


@pytest.mark.parametrize(("name", "option", "accepted"), [
    ("fedavg", "beta1", "server-lr"),
    ("fedadagrad", "beta2", "server-lr, beta1, tau"),
    ("median", "trim", "server-lr"),
    ("krum", "krum_select", "server-lr, attackers"),
    ("fedadam", "server_momentum", "server-lr, beta1, tau, beta2"),
])
def test_an_option_a_strategy_does_not_take_is_refused(name: str, option: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_strategy(name, {option: 0.5, "server_lr": None})
    assert caught.value.key == option.replace("_", "-")
    assert caught.value.expected == f"an option of strategy {name!r}, which takes {accepted}"


# --- what every strategy owes the round and the checkpoint --------------------------------------

EVERY = [pytest.param(STRATEGIES[name](), id=name) for name in sorted(DEFAULTS)]


def copied(state: ServerState) -> dict[str, np.ndarray]:
    return {**{f"w:{k}": np.array(v) for k, v in state.weights.items()},
            **{f"s:{k}": np.array(v) for k, v in state.strategy_state.items()}}


@pytest.mark.parametrize("strategy", EVERY)
def test_apply_changes_nothing_it_was_given_and_keeps_the_arrays_init_made(strategy: Strategy[Any]) -> None:
    state, _ = one_round(strategy, start(strategy), ROUNDS[0])  # strategy arrays that are not the initial ones
    before = copied(state)
    updates = [model(values) for values, _ in ROUNDS[1]]
    given = [{k: v.copy() for k, v in update.items()} for update in updates]
    accumulated = strategy.begin(state.weights, 2)
    for update, (_, weight) in zip(updates, ROUNDS[1], strict=True):
        accumulated.add(update, weight)
    after, diagnostics = strategy.apply(state, accumulated)
    for name, value in copied(state).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    for update, kept in zip(updates, given, strict=True):
        assert_exact(update, kept)
    init = strategy.init(GLOBAL)
    shapes = {name: (value.shape, value.dtype) for name, value in after.strategy_state.items()}
    assert shapes == {name: (value.shape, value.dtype) for name, value in init.items()}
    assert list(after.weights) == list(GLOBAL)
    assert (after.next_round, after.model_version, after.strategy) == (1, 0, strategy.name)  # the round's business
    assert diagnostics["update_norm"] > 0


@pytest.mark.parametrize("strategy", EVERY)
def test_the_accumulator_is_streaming_or_a_buffer_of_the_selection(strategy: Strategy[Any]) -> None:
    accumulated = strategy.begin(GLOBAL, 2)
    assert isinstance(accumulated, WeightedSum if strategy.streaming else UpdateBuffer)
    if not strategy.streaming:
        reused = model(A)
        accumulated.add(reused, 1.0)
        reused[KERNEL][0, 0] = 99.0  # the caller's array changes after the add: the buffered update does not
        accumulated.add(model(B), 1.0)
        with pytest.raises(ValueError, match="holds 2 updates already"):
            accumulated.add(model(C), 1.0)
        assert flat(accumulated.updates[0]) == list(A)


def bytes_kept(work: Callable[[], None]) -> int:
    """Memory allocated while ``work`` ran and still held after it, as tracemalloc counts it."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        work()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def feed(accumulated: Any, count: int, size: int) -> Callable[[], None]:
    """Adds ``count`` updates, each a fresh ``size``-element tensor of value ``i`` and a 10-element one of ``-i``."""
    def work() -> None:
        for i in range(1, count + 1):
            accumulated.add({"w": np.full(size, i, np.float32), "b": np.full(10, -i, np.float32)}, 1.0)
    return work


TEMPLATE = {"w": np.zeros(1000, np.float32), "b": np.zeros(10, np.float32)}


def test_fedadam_round_memory_is_one_model_however_many_updates() -> None:
    strategy = FedAdam()
    accumulated = strategy.begin(TEMPLATE, 1000)
    grown = bytes_kept(feed(accumulated, 1000, 1000))
    assert grown < 4000, f"{grown} bytes kept after 1000 updates of a 4000-byte tensor"
    after, _ = strategy.apply(ServerState("ab" * 32, "fedadam", TEMPLATE, strategy.init(TEMPLATE)), accumulated)
    np.testing.assert_allclose(after.strategy_state["m/w"], np.full(1000, 50.05, np.float32))  # 0.1 * 500.5


def test_a_buffered_round_holds_selected_times_parameters_times_4_bytes() -> None:
    accumulated = Median().begin(TEMPLATE, 100)
    grown = bytes_kept(feed(accumulated, 100, 1000))
    assert 100 * 1010 * 4 <= grown < 1.2 * 100 * 1010 * 4  # plus a little bookkeeping per update


def test_a_fedadam_state_survives_a_checkpoint_bit_for_bit(tmp_path: Path) -> None:
    strategy = FedAdam()
    state = start(strategy)
    for updates in ROUNDS:
        committed, _ = one_round(strategy, state, updates)
        state = state.after_round(committed)
    save_checkpoint(tmp_path, state)
    loaded = load_checkpoint(tmp_path, SPECS)
    assert (loaded.artifact_id, loaded.strategy, loaded.next_round, loaded.model_version, loaded.committed_rounds) \
        == (state.artifact_id, "fedadam", 4, 3, 3)
    for mine, theirs in ((state.weights, loaded.weights), (state.strategy_state, loaded.strategy_state)):
        assert set(mine) == set(theirs)
        for name, value in mine.items():
            assert (theirs[name].dtype, theirs[name].shape) == (value.dtype, value.shape), name
            assert theirs[name].tobytes() == value.tobytes(), name


# --- resuming through OpenRound -----------------------------------------------------------------

# What devices a, b and c send in rounds 1-4: (update, examples).
SENT: list[dict[str, tuple[Update, int]]] = [
    {"a": ((0.5, -0.25, 0.25), 1), "b": ((-0.25, 0.5, 0.5), 3), "c": ((0.125, 0.125, 0.0), 2)},
    {"a": ((0.03125, 0.0, -0.5), 4), "b": ((0.015625, -0.25, 0.0), 1), "c": ((-0.5, 0.75, 0.25), 3)},
    {"a": ((-1.0, 0.125, 0.0), 2), "b": ((0.5, 0.125, 0.001), 2), "c": ((0.25, -0.25, 0.25), 1)},
    {"a": ((0.0, 0.5, -0.5), 1), "b": ((0.75, 0.0, 0.125), 5), "c": ((-0.125, -0.125, 0.5), 2)},
]


def play(strategy: Strategy[Any], state: ServerState, rounds: range) -> ServerState:
    for number in rounds:
        plan = RoundPlan(number=number, task_id=f"t{number}", model_version=state.model_version,
                         selected=frozenset(SENT[number - 1]), eligible=3, goal=3, min_reports=2, clip_norm=10.0,
                         deadline=1000.0)
        current = OpenRound(plan, state, SPECS, strategy)
        for device, (values, examples) in SENT[number - 1].items():
            header = UpdateHeader(device, f"t{number}", number, state.model_version, examples, 1.0, 0.5)
            assert current.offer_update(device, True, header, model(values)) is None
        outcome = current.close("goal")
        assert outcome.status == "committed"
        state = state.after_round(outcome.state)
    return state


@pytest.mark.parametrize("make", [FedAdam, FedAvgM, lambda: FedYogi(server_lr=0.1), MultiKrum],
                         ids=["fedadam", "fedavgm", "fedyogi", "multi-krum"])
def test_a_resumed_run_ends_where_an_uninterrupted_one_does(make: Callable[[], Strategy[Any]],
                                                            tmp_path: Path) -> None:
    strategy = make()
    straight = play(strategy, start(strategy), range(1, 5))
    save_checkpoint(tmp_path, play(strategy, start(strategy), range(1, 3)))
    resumed_from = load_checkpoint(tmp_path, SPECS)
    restarted = make()  # a new coordinator process builds its strategy afresh
    shapes = {name: (v.shape, v.dtype) for name, v in resumed_from.strategy_state.items()}
    assert shapes == {name: (v.shape, v.dtype) for name, v in restarted.init(resumed_from.weights).items()}
    resumed = play(restarted, resumed_from, range(3, 5))
    assert (resumed.next_round, resumed.model_version) == (straight.next_round, straight.model_version) == (5, 4)
    assert_exact(resumed.weights, straight.weights)
    assert_exact(dict(resumed.strategy_state), {name: straight.strategy_state[name]
                                                for name in resumed.strategy_state})
    assert set(resumed.strategy_state) == set(straight.strategy_state)
    assert straight.weights[KERNEL].tobytes() != GLOBAL[KERNEL].tobytes()


# --- wrappers: the shape privacy and robustness layers will take ---------------------------------------------


class RoundCounter:
    """A wrapper around any strategy: delegates the arithmetic, keeps its own record in the ledger."""

    def __init__(self, inner: Strategy[Any]) -> None:
        self.inner = inner
        self.name = inner.name
        self.streaming = inner.streaming

    def init(self, weights: Any) -> Any:
        return self.inner.init(weights)

    def begin(self, weights: Any, capacity: int) -> Any:
        return self.inner.begin(weights, capacity)

    def apply(self, state: ServerState, accumulated: Any) -> tuple[ServerState, dict[str, float]]:
        after, diagnostics = self.inner.apply(state, accumulated)
        wrapped = int(state.ledger.get("wrapped_rounds", 0)) + 1
        return ServerState(after.artifact_id, after.strategy, after.weights, after.strategy_state,
                           after.next_round, after.model_version, after.committed_rounds,
                           {**after.ledger, "wrapped_rounds": wrapped}), {**diagnostics, "wrapped_rounds": wrapped}


@pytest.mark.parametrize("name", ["fedadam", "median"])
def test_a_wrapper_composes_around_any_strategy_and_its_ledger_is_checkpointed(name: str, tmp_path: Path) -> None:
    inner = build_strategy(name, {})
    wrapper = RoundCounter(inner)
    state = ServerState("ab" * 32, name, GLOBAL, wrapper.init(GLOBAL))
    for _ in range(2):
        accumulated = wrapper.begin(state.weights, 2)
        accumulated.add(model((0.5, -0.25, 0.25)), 1.0)
        accumulated.add(model((-0.25, 0.5, 0.5)), 3.0)
        expected, _ = inner.apply(state, accumulated)
        state, diagnostics = wrapper.apply(state, accumulated)
        assert_exact(state.weights, expected.weights)  # the wrapper changes nothing of the arithmetic
    assert diagnostics["wrapped_rounds"] == 2
    save_checkpoint(tmp_path, state)
    assert dict(load_checkpoint(tmp_path, SPECS).ledger) == {"wrapped_rounds": 2}
