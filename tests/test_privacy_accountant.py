"""The DP accountant (coordinator.privacy) against dp_accounting's own computation of events the tests build, and
``edgefl dp-plan``."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting import NeighboringRelation
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from coordinator.dp_plan_cli import default_delta, make_plan
from coordinator.errors import ConfigError
from coordinator.privacy import (
    RDP_ORDERS,
    PrivacyError,
    RoundEvent,
    allows,
    calibrate_noise,
    epsilon,
    round_dp_event,
)
from tests.test_deploy_docs import parse_edgefl

DELTA = 1e-5


def direct_rdp(rounds: list[tuple[int, int, float]], delta: float = DELTA) -> float:
    """The epsilon of (population, sampled, z) rounds, composed by hand: each round samples ``sampled`` of
    ``population`` devices without replacement and adds Gaussian noise z x C to a sum whose replace-one
    sensitivity is 2C."""
    accountant = RdpAccountant(RDP_ORDERS, NeighboringRelation.REPLACE_ONE)
    for population, sampled, z in rounds:
        accountant.compose(dp_accounting.SampledWithoutReplacementDpEvent(
            population, sampled, dp_accounting.GaussianDpEvent(z / 2)))
    return float(accountant.get_epsilon(delta))


def direct_rdp_repeated(population: int, sampled: int, z: float, t: int, delta: float = DELTA) -> float:
    """``direct_rdp`` of t identical rounds, as one ``SelfComposedDpEvent``."""
    accountant = RdpAccountant(RDP_ORDERS, NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.SampledWithoutReplacementDpEvent(
        population, sampled, dp_accounting.GaussianDpEvent(z / 2)), t))
    return float(accountant.get_epsilon(delta))


def test_one_round_is_sampling_without_replacement_of_a_gaussian_at_half_z() -> None:
    event = round_dp_event(RoundEvent(population=100, sampled=13, noise_multiplier=1.2))
    assert event == dp_accounting.SampledWithoutReplacementDpEvent(100, 13, dp_accounting.GaussianDpEvent(0.6))


def test_epsilon_after_t_identical_rounds_is_dp_accountings() -> None:
    t = 30
    eps = epsilon([RoundEvent(200, 26, 1.1)] * t, DELTA)
    assert eps == pytest.approx(direct_rdp([(200, 26, 1.1)] * t), rel=1e-9)  # round by round, as a ledger
    assert eps == pytest.approx(direct_rdp_repeated(200, 26, 1.1, t), rel=1e-9)
    assert 0 < eps < math.inf


def test_epsilon_of_rounds_with_varying_populations_is_dp_accountings() -> None:
    rounds = [(80 + 7 * (i % 4), 10 + i % 3, 0.9 + 0.1 * (i % 2)) for i in range(12)]
    events = [RoundEvent(*r) for r in rounds]
    assert epsilon(events, DELTA) == pytest.approx(direct_rdp(rounds), rel=1e-9)
    assert epsilon(events[:5], DELTA) == pytest.approx(direct_rdp(rounds[:5]), rel=1e-9)
    # round by round, as a run asks (the cached accountant of the rounds before, plus one)
    for t in range(1, 4):
        assert epsilon(events[:t], DELTA) == pytest.approx(direct_rdp(rounds[:t]), rel=1e-9)


def test_the_order_of_rounds_does_not_change_epsilon() -> None:
    events = [RoundEvent(60, 8, 1.0), RoundEvent(70, 9, 1.3), RoundEvent(60, 8, 1.0)]
    assert epsilon(events, DELTA) == pytest.approx(epsilon(events[::-1], DELTA), rel=1e-9)


def test_pld_composes_the_gaussians_without_amplification() -> None:
    events = [RoundEvent(500, 50, 2.0)] * 20
    # PLD's REPLACE_ONE convention: the multiplier is relative to one device's C, a replacement moves the sum by 2C
    accountant = PLDAccountant(NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 20))
    eps = epsilon(events, DELTA, "pld")
    assert eps == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-9)
    # which is the one Gaussian of 20 rounds at z / 2 of the sensitivity 2C (pessimistic discretization aside)
    assert eps == pytest.approx(dp_accounting.get_epsilon_gaussian(1.0 / math.sqrt(20), DELTA), rel=1e-2)
    assert eps > epsilon(events, DELTA, "rdp")  # an upper bound: no sampling credit


def test_with_every_device_selected_rdp_and_pld_agree_up_to_rdps_looseness() -> None:
    events = [RoundEvent(40, 40, 3.0)] * 10
    rdp, pld = epsilon(events, DELTA, "rdp"), epsilon(events, DELTA, "pld")
    assert pld <= rdp <= 1.3 * pld  # the same mechanism: RDP's conversion to (epsilon, delta) is a little loose


def test_every_device_selected_is_the_plain_gaussian() -> None:
    accountant = RdpAccountant(RDP_ORDERS, NeighboringRelation.REPLACE_ONE)
    accountant.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.5), 10))
    assert epsilon([RoundEvent(40, 40, 3.0)] * 10, DELTA) == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-9)


def test_no_rounds_cost_nothing_and_a_round_without_noise_costs_everything() -> None:
    assert epsilon([], DELTA) == 0.0
    assert epsilon([RoundEvent(10, 2, 1.0), RoundEvent(10, 2, 0.0)], DELTA) == math.inf


def test_allows_stops_before_the_round_that_would_exceed_the_target() -> None:
    event = RoundEvent(100, 10, 1.0)
    target = direct_rdp_repeated(100, 10, 1.0, 7) + 1e-9  # exactly 7 rounds fit
    ledger: list[RoundEvent] = []
    while allows(ledger, event, target, DELTA):
        ledger.append(event)
        assert len(ledger) < 50
    assert len(ledger) == 7
    assert epsilon(ledger, DELTA) <= target < direct_rdp_repeated(100, 10, 1.0, 8)


def test_calibration_hits_the_target_from_below() -> None:
    z = calibrate_noise(4.0, DELTA, rounds=50, sampled=20, population=400)
    eps = direct_rdp_repeated(400, 20, z, 50)
    assert eps <= 4.0
    assert eps == pytest.approx(4.0, rel=1e-3)
    assert direct_rdp_repeated(400, 20, z - 2e-3, 50) > 4.0  # the smallest z that meets it, within the tolerance


def test_calibration_refuses_impossible_targets() -> None:
    with pytest.raises(PrivacyError, match="target epsilon"):
        calibrate_noise(0.0, DELTA, 10, 5, 50)
    with pytest.raises(PrivacyError, match="delta"):
        calibrate_noise(1.0, 1.0, 10, 5, 50)
    with pytest.raises(PrivacyError, match="sampled"):
        calibrate_noise(1.0, DELTA, 10, 60, 50)
    with pytest.raises(PrivacyError, match="rounds"):
        calibrate_noise(1.0, DELTA, 0, 5, 50)


def test_round_event_json_round_trip() -> None:
    event = RoundEvent(123, 17, 0.75)
    assert event.to_json() == {"population": 123, "sampled": 17, "noise_multiplier": 0.75}
    assert RoundEvent.from_json(event.to_json()) == event
    assert RoundEvent.from_json({"population": 5, "sampled": 5, "noise_multiplier": 2}).noise_multiplier == 2


@pytest.mark.parametrize(("value", "message"), [
    ([1, 2, 3], "expected an object"),
    ({"population": 10, "sampled": 2}, "missing fields \\['noise_multiplier'\\]"),
    ({"population": 10, "sampled": 2, "noise_multiplier": 1.0, "z": 1}, "unknown fields \\['z'\\]"),
    ({"population": 10.0, "sampled": 2, "noise_multiplier": 1.0}, "population: expected an integer >= 1"),
    ({"population": 10, "sampled": 0, "noise_multiplier": 1.0}, "sampled: expected an integer >= 1"),
    ({"population": 10, "sampled": True, "noise_multiplier": 1.0}, "sampled: expected an integer"),
    ({"population": 10, "sampled": 11, "noise_multiplier": 1.0}, "sampled: expected at most population"),
    ({"population": 10, "sampled": 2, "noise_multiplier": -1.0}, "noise_multiplier: expected a finite number"),
    ({"population": 10, "sampled": 2, "noise_multiplier": float("nan")}, "noise_multiplier"),
    ({"population": 10, "sampled": 2, "noise_multiplier": "1.0"}, "noise_multiplier"),
])
def test_round_event_from_json_refuses_malformed_values(value: object, message: str) -> None:
    with pytest.raises(PrivacyError, match=message):
        RoundEvent.from_json(value)  # type: ignore[arg-type]


def test_epsilon_refuses_a_bad_delta_or_method() -> None:
    with pytest.raises(PrivacyError, match="delta"):
        epsilon([RoundEvent(10, 2, 1.0)], 0.0)
    with pytest.raises(PrivacyError, match="method"):
        epsilon([RoundEvent(10, 2, 1.0)], DELTA, "gdp")  # type: ignore[arg-type]


def test_dp_plan_calibrates_and_reports_every_tenth_of_the_rounds() -> None:
    plan = make_plan(6.0, None, rounds=20, sampled=12, population=300, goal=10)
    assert plan.delta == pytest.approx(300 ** -1.1) == default_delta(300)
    assert [t for t, _ in plan.checkpoints] == list(range(2, 21, 2))
    assert plan.checkpoints[-1][1] <= 6.0
    assert plan.checkpoints[-1][1] == pytest.approx(direct_rdp_repeated(300, 12, plan.noise_multiplier, 20, plan.delta))
    epsilons = [eps for _, eps in plan.checkpoints]
    assert epsilons == sorted(epsilons)


def test_dp_plan_refuses_impossible_plans_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match="devices-per-round"):
        make_plan(1.0, None, rounds=10, sampled=60, population=50)
    with pytest.raises(ConfigError, match="target-delta"):
        make_plan(1.0, 2.0, rounds=10, sampled=5, population=50)
    with pytest.raises(ConfigError, match="'goal'"):
        make_plan(1.0, None, rounds=10, sampled=5, population=50, goal=6)


def test_dp_plan_command_prints_the_multiplier_and_the_epsilons(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse_edgefl(["dp-plan", "--target-epsilon", "3", "--target-delta", "1e-5", "--rounds", "5",
                         "--devices-per-round", "10", "--population", "100"])
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    z = calibrate_noise(3.0, 1e-5, 5, 10, 100)
    assert f"noise multiplier: {z:.4f}" in out
    assert f"noise std on the mean: {z / 10:.4f} x C" in out
    assert out.strip().splitlines()[-1].split()[0] == "5"
