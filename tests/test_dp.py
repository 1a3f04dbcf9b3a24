"""Central differential privacy (DP-FedAvg around a streaming strategy) without a broker.

The noise's standard deviation is checked statistically on many seeded draws (tolerances stated with each
test); everything without noise is checked against hand values in multiples of 1/64, compared with ``==``. The
accountant (``coordinator.privacy.accountant``) is the reference for epsilon: the machine's round lines and its
budget must agree with it exactly.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("dp_accounting")

from coordinator.checkpoint import load_checkpoint, save_checkpoint
from coordinator.config import CoordinatorConfig
from coordinator.errors import ConfigError
from coordinator.machine import Effect, Line, RoundMachine
from coordinator.privacy.accountant import RoundEvent, epsilon
from coordinator.server_state import ServerState
from coordinator.strategies import build_strategy
from coordinator.strategies.arith import WeightedSum
from coordinator.strategies.base import RoundContext
from coordinator.strategies.dp_fedavg import (
    INITIAL_CLIP,
    DpFedAvg,
    DpOptions,
    default_delta,
    noised_mean,
)
from tests.test_machine import AID, GLOBAL, SPECS, at, started, status, tasks, update
from tests.test_strategies import BIAS, KERNEL, assert_exact, model

UPDATE_A, UPDATE_B = (0.5, -0.25, 0.25), (-0.25, 0.5, 0.5)


def wrapped(inner: str = "fedavg", **options: Any) -> DpFedAvg:
    return DpFedAvg(build_strategy(inner, {}), DpOptions(**{"noise_multiplier": 0.0, "clip": 1.0, **options}))


def context(goal: int = 2, number: int = 1, eligible: int = 10, selected: int = 3) -> RoundContext:
    return RoundContext(number, goal, eligible, selected)


def state_for(strategy: Any, weights: Any) -> ServerState:
    return ServerState("ab" * 32, strategy.name, weights, strategy.init(weights))


def dp_round(strategy: DpFedAvg, state: ServerState, updates: list[tuple[tuple[float, float, float], float]],
             ctx: RoundContext, norms: list[float] | None = None) -> tuple[ServerState, dict[str, float]]:
    accumulated = strategy.begin(state.weights, ctx.selected, ctx)
    for (values, weight), norm in zip(updates, norms or [0.0] * len(updates), strict=True):
        accumulated.add(model(values), weight)
        accumulated.observe_norm(norm)
    return strategy.apply(state, accumulated)


# --- the wrapper's arithmetic ---------------------------------------------------------------------


def test_without_noise_the_wrapper_is_the_wrapped_strategy_on_the_uniform_mean() -> None:
    strategy = wrapped()
    before = state_for(strategy, model((1.0, -1.0, 0.5)))
    after, diagnostics = dp_round(strategy, before, [(UPDATE_A, 1.0), (UPDATE_B, 3.0)], context(goal=2))
    # (A + B) / 2 = (0.125, 0.125, 0.375), whatever example counts the devices claimed
    assert_exact(after.weights, model((1.125, -0.875, 0.875)))
    assert diagnostics["dp_noise_std"] == 0.0 and diagnostics["dp_clip"] == 1.0
    uniform = WeightedSum(before.weights)
    uniform.add(model(UPDATE_A), 1.0)
    uniform.add(model(UPDATE_B), 1.0)
    inner = build_strategy("fedadam", {})
    expected, _ = inner.apply(state_for(inner, before.weights), uniform)
    adam = wrapped("fedadam")
    got, _ = dp_round(adam, state_for(adam, before.weights), [(UPDATE_A, 5.0), (UPDATE_B, 1.0)], context(goal=2))
    assert_exact(got.weights, expected.weights)
    assert_exact(got.strategy_state, expected.strategy_state)  # the inner optimizer's moments, as it made them


def test_the_denominator_is_the_goal_not_the_updates_that_arrived() -> None:
    strategy = wrapped()
    after, _ = dp_round(strategy, state_for(strategy, model((1.0, -1.0, 0.5))), [(UPDATE_A, 1.0), (UPDATE_B, 1.0)],
                        context(goal=4))
    assert_exact(after.weights, model((1.0625, -0.9375, 0.6875)))  # + (A + B) / 4


def test_the_noise_on_a_known_sum_has_the_configured_standard_deviation() -> None:
    # 50 seeded rounds x 4,000 coordinates = 200,000 draws of the noise on the mean, whose standard deviation is
    # z * C / goal = 1.5 * 2 / 4 = 0.75. The sample's relative error is about 1 / sqrt(2 n) = 0.16%: 1% is > 6 sigma.
    z, clip, goal = 1.5, 2.0, 4
    strategy = wrapped(noise_multiplier=z, clip=clip, test_seed=11)
    zeros = {"w": np.zeros(4000, np.float32)}
    start = state_for(strategy, zeros)
    ones = {"w": np.full(4000, 0.25, np.float32)}
    noise = []
    for number in range(1, 51):
        accumulated = strategy.begin(zeros, goal, context(goal=goal, number=number))
        for _ in range(3):
            accumulated.add(ones, 7.0)
        after, diagnostics = strategy.apply(start, accumulated)
        noise.append(np.asarray(after.weights["w"], np.float64) - 3 * 0.25 / goal)  # the sum's mean: 0.1875
        assert diagnostics["dp_noise_std"] == z * clip
    drawn = np.concatenate(noise)
    assert abs(drawn.std() / (z * clip / goal) - 1) < 0.01
    assert abs(drawn.mean()) < 5 * 0.75 / math.sqrt(drawn.size)
    direct = noised_mean({"w": np.zeros(100_000)}, 3.0, 4, np.random.default_rng(5))["w"]
    assert abs(direct.std() / 0.75 - 1) < 0.015  # 100,000 draws: the relative error is about 0.22%


def test_unseeded_rounds_draw_different_noise_and_the_test_seed_the_same() -> None:
    def weights(seed: int | None) -> np.ndarray:
        strategy = wrapped(noise_multiplier=1.0, test_seed=seed)
        after, _ = dp_round(strategy, state_for(strategy, model((0.0, 0.0, 0.0))), [(UPDATE_A, 1.0)], context())
        return np.concatenate([after.weights[KERNEL].ravel(), after.weights[BIAS]])

    assert not np.array_equal(weights(None), weights(None))  # each round seeded from the OS's CSPRNG
    np.testing.assert_array_equal(weights(3), weights(3))
    assert not np.array_equal(weights(3), weights(4))


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "krum", "multi-krum"])
def test_a_robust_rule_is_refused_saying_why(name: str) -> None:
    with pytest.raises(ConfigError, match="streaming strategy"):
        DpFedAvg(build_strategy(name, {}), DpOptions(1.0, 1.0))
    with pytest.raises(ConfigError, match="streaming strategy"):
        CoordinatorConfig(Path("a"), Path("s"), strategy=name, dp_noise_multiplier=1.0)


# --- adaptive clipping ----------------------------------------------------------------------------


def test_the_adaptive_bound_converges_to_the_target_quantile_of_the_norms() -> None:
    # Norms lognormal(0, 0.5): their 0.5 quantile is 1, their 0.8 quantile exp(0.5 * 0.8416) = 1.523. From the
    # initial 0.1, 300 rounds of 100 updates; the bound's mean over the last 100 rounds is within 10% of the quantile.
    rng = np.random.default_rng(0)
    for quantile, expected in ((0.5, 1.0), (0.8, math.exp(0.5 * 0.8416))):
        strategy = wrapped(clip=None, noise_multiplier=1.0, target_quantile=quantile, test_seed=1)
        state = state_for(strategy, model((0.0, 0.0, 0.0)))
        bounds = []
        for number in range(1, 301):
            norms = list(rng.lognormal(0.0, 0.5, 100))
            ctx = context(goal=100, number=number, eligible=1000, selected=100)
            state, diagnostics = dp_round(strategy, state, [((0.0, 0.0, 0.0), 1.0)] * 100, ctx, norms)
            bounds.append(strategy.clip_bound(state))
            assert diagnostics["dp_next_clip"] == bounds[-1]
        assert abs(np.mean(bounds[-100:]) / expected - 1) < 0.1, (quantile, np.mean(bounds[-100:]))
        assert bounds[0] > INITIAL_CLIP  # every norm was above 0.1: the bound grew


def test_adaptive_clipping_charges_z_and_noises_the_sum_with_the_larger_multiplier() -> None:
    options = DpOptions(0.8, None, clipped_count_stddev=0.5)  # z_sum = (0.8^-2 - 1^-2)^-1/2 = 4/3
    assert options.value_multiplier(10) == pytest.approx(4 / 3)
    default = DpOptions(0.8, None)
    assert default.value_multiplier(40) == pytest.approx(1.5 ** -0.5)  # sigma_b = 0.05 x 40 = 2: (0.8^-2 - 4^-2)
    # goal 6: 0.05 x 6 = 0.3 would leave it undefined (2 sigma_b < z); the default takes sigma_b = z instead
    assert default.value_multiplier(6) == pytest.approx(0.8 / math.sqrt(0.75))
    strategy = DpFedAvg(build_strategy("fedavg", {}), options)
    after, diagnostics = dp_round(strategy, state_for(strategy, model((0.0, 0.0, 0.0))), [(UPDATE_A, 1.0)],
                                  context(goal=10), [0.05])
    assert diagnostics["dp_noise_std"] == pytest.approx(4 / 3 * INITIAL_CLIP)
    ledger = after.ledger["privacy"]
    assert ledger["events"] == [{"population": 10, "sampled": 3, "noise_multiplier": 0.8}]  # charged z, not 4/3
    with pytest.raises(ConfigError, match="dp-clipped-count-stddev"):
        DpOptions(1.0, None, clipped_count_stddev=0.5)


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "key"), [
    ({"dp_clip": 1.0}, "dp-clip"),
    ({"target_epsilon": 3.0}, "target-epsilon"),
    ({"dp_noise_multiplier": -1.0}, "dp-noise-multiplier"),
    ({"dp_noise_multiplier": 1.0, "dp_clip": "sometimes"}, "dp-clip"),
    ({"dp_noise_multiplier": 1.0, "dp_clip": -2.0}, "dp-clip"),
    ({"dp_noise_multiplier": 1.0, "dp_target_quantile": 1.0}, "dp-target-quantile"),
    ({"dp_noise_multiplier": 1.0, "target_delta": 1.0}, "target-delta"),
])
def test_bad_privacy_options_are_refused_by_name(changes: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        CoordinatorConfig(Path("a"), Path("s"), **changes)


def test_dp_clip_defaults_to_clip_norm_and_adaptive_starts_at_the_tff_default() -> None:
    fixed = CoordinatorConfig(Path("a"), Path("s"), clip_norm=3.0, dp_noise_multiplier=1.0).dp_options()
    assert (fixed.clip, fixed.target_quantile, fixed.clip_lr) == (3.0, 0.5, 0.2)
    adaptive = CoordinatorConfig(Path("a"), Path("s"), dp_noise_multiplier=0.5, dp_clip="adaptive").dp_options()
    assert adaptive.adaptive and adaptive.count_stddev(20) == 1.0
    assert CoordinatorConfig(Path("a"), Path("s")).build_strategy().name == "fedavg"  # DP off: no wrapper
    assert default_delta(100) == 100 ** -1.1


def test_the_options_come_from_toml_too(tmp_path: Path) -> None:
    from coordinator.config import build_config

    file = tmp_path / "coordinator.toml"
    file.write_text('dp-noise-multiplier = 0.5\ndp-clip = "adaptive"\ndp-clip-lr = 0.1\ntarget-epsilon = 5\n')
    options = build_config(file, {"artifact": Path("a"), "state_dir": Path("s")}).dp_options()
    assert (options.noise_multiplier, options.adaptive, options.clip_lr, options.target_epsilon) == (0.5, True, 0.1, 5)
    file.write_text("dp-clip = 2\n")
    with pytest.raises(ConfigError, match="dp-clip"):
        build_config(file, {"artifact": Path("a"), "state_dir": Path("s")})


# --- the machine: round lines, budget, resume -------------------------------------------------------


def machine(state: ServerState | None = None, **changes: Any) -> RoundMachine:
    options: dict[str, Any] = {"artifact": Path("artifact"), "state_dir": Path("state"), "federation": "test",
                               "rounds": 4, "fraction": 0.5, "min_clients": 2, "min_reports": 2, "over_select": 1.5,
                               "round_timeout": 30.0, "eval_every": 0, "clip_norm": 1.0, "dp_noise_multiplier": 2.0,
                               "target_delta": 1e-5, "dp_test_seed": 9, **changes}
    config = CoordinatorConfig(**options)
    strategy = config.build_strategy()
    ids = iter(f"task-{i}" for i in range(100))
    return RoundMachine(config, state or ServerState(AID, strategy.name, GLOBAL, strategy.init(GLOBAL)), strategy,
                        SPECS, b"the artifact bundle", payload_limit=10**6, task_lr=0.05, new_id=lambda: next(ids))


def rounds(m: RoundMachine, effects: list[Effect], count: int, t: float = 2.0) -> tuple[list[dict[str, Any]], float]:
    """Answer ``count`` rounds with two small updates each; the round lines, and the time reached."""
    lines: list[dict[str, Any]] = []
    for _ in range(count):
        sent = tasks(effects)
        if not sent:
            break
        for device in sorted(sent)[:2]:
            assert sent[device].clip_norm == m.state.ledger["privacy"]["clip"]
            effects = m.receive(*update(sent[device], device, (0.015625, 0.0, 0.0)), at(t))
            t += 1
        lines += [e.line for e in effects if isinstance(e, Line)]
    return lines, t


# Three eligible devices, goal 2, three selected (fraction 0.5, min-clients 2, over-select 1.5).
EVENT = RoundEvent(3, 3, 2.0)


def test_round_lines_carry_epsilon_at_delta_as_the_accountant_says() -> None:
    m = machine()
    lines, _ = rounds(m, started(m), 4)
    assert [line["status"] for line in lines] == ["committed"] * 4
    for k, line in enumerate(lines, 1):
        assert line["privacy"] == {"epsilon": epsilon([EVENT] * k, 1e-5), "delta": 1e-5, "noise_multiplier": 2.0,
                                   "clip": 1.0, "method": "rdp"}


def test_the_line_without_dp_has_a_null_privacy_object() -> None:
    m = machine(dp_noise_multiplier=0.0, target_delta=None, dp_test_seed=None)
    effects = started(m)
    sent = tasks(effects)
    for device in sorted(sent)[:2]:
        effects = m.receive(*update(sent[device], device, (0.015625, 0.0, 0.0)), at(3))
    line = next(e.line for e in effects if isinstance(e, Line))
    assert line["status"] == "committed" and line["privacy"] is None


def test_the_budget_stops_before_the_round_that_would_exceed_it() -> None:
    target = (epsilon([EVENT] * 2, 1e-5) + epsilon([EVENT] * 3, 1e-5)) / 2  # allows two rounds, not three
    m = machine(target_epsilon=target)
    lines, _ = rounds(m, started(m), 4)
    assert [(line["round"], line["status"]) for line in lines] == [(1, "committed"), (2, "committed"), (3, "stopped")]
    stop = lines[-1]
    assert stop["closed_by"] == "privacy_budget" and stop["selected"] == 0
    assert "round 3 would bring epsilon to" in stop["privacy"]["stopped"]
    assert stop["privacy"]["epsilon"] == epsilon([EVENT] * 2, 1e-5) <= target
    assert m.finished and m.state.next_round == 3


def test_resume_continues_the_ledger_exactly(tmp_path: Path) -> None:
    options = {"dp_clip": "adaptive", "dp_noise_multiplier": 0.5, "dp_clipped_count_stddev": 1.0}
    whole = machine(**options)
    whole_lines, _ = rounds(whole, started(whole), 4)
    first = machine(rounds=2, **options)
    first_lines, t = rounds(first, started(first), 2)
    assert first.finished
    save_checkpoint(tmp_path, first.state)
    resumed = machine(load_checkpoint(tmp_path, SPECS), **options)
    resumed.start(at(t))
    for device in ("d1", "d2", "d3"):
        resumed.receive(*status(device), at(t + 0.1))
    rest, _ = rounds(resumed, resumed.tick(at(t + 1.5)), 2, t + 2)
    assert [line["round"] for line in first_lines + rest] == [1, 2, 3, 4]
    for got, expected in zip(first_lines + rest, whole_lines, strict=True):
        assert got["privacy"] == expected["privacy"]
        assert got["strategy"] == expected["strategy"]  # the same noise (test seed) and the same adaptive bound
    assert dict(resumed.state.ledger) == dict(whole.state.ledger)
    assert len(resumed.state.ledger["privacy"]["events"]) == 4
    assert_exact(resumed.state.weights, whole.state.weights)


# --- the fleet: the report's epsilon axis ------------------------------------------------------------


def test_the_fleet_report_draws_epsilon_by_round_next_to_the_accuracy() -> None:
    pytest.importorskip("matplotlib")
    from device_profiles.report import report_figure
    from tests.test_fleet_report import round_line

    privacy = {"delta": 1e-5, "noise_multiplier": 1.0, "clip": 1.0, "method": "rdp"}
    lines = [{**round_line(n), "privacy": {**privacy, "epsilon": 0.5 * n}} for n in (1, 2, 3)]
    fig = report_figure(lines, "fleet run")
    curves = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert np.asarray(curves["epsilon (DP, right axis)"].get_ydata()).tolist() == [0.5, 1.0, 1.5]
    plain = report_figure([round_line(n) for n in (1, 2, 3)], "fleet run")
    assert "epsilon (DP, right axis)" not in {line.get_label() for ax in plain.axes for line in ax.get_lines()}


@pytest.mark.broker
def test_a_fleet_with_dp_reports_epsilon_in_its_lines_summary_and_checkpoint(tmp_path: Path, federation: str) -> None:
    import json

    from tests.federation_tools import SYSTEM_BROKER
    from tests.test_fleet import fleet, lines_of

    out = tmp_path / "run"
    done = fleet(out, "--devices", "20", "--rounds", "3", "--broker", SYSTEM_BROKER, "--federation", federation,
                 "--partition", "iid", "--dp-noise-multiplier", "1.0", "--dp-clip", "adaptive",
                 "--dp-clipped-count-stddev", "1.0", "--target-delta", "1e-4")
    assert done.returncode == 0, done.stderr
    lines = lines_of(out / "rounds.jsonl")
    saved = json.loads((out / "coordinator" / "state.json").read_text())["ledger"]["privacy"]
    events = [RoundEvent.from_json(e) for e in saved["events"]]
    assert len(events) == sum(1 for line in lines if line["status"] == "committed") >= 1
    assert lines[-1]["privacy"]["epsilon"] == epsilon(events, 1e-4) > 0
    assert saved["delta"] == 1e-4 and saved["clip"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["privacy"] == lines[-1]["privacy"]
