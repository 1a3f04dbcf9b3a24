"""The coordinator's round logic with no broker and no TensorFlow: selection, FedAvg, accepting and refusing
updates, federated evaluation, and the update arithmetic both sides share.

Expected numbers are written out by hand. The model's weights and updates are multiples of 1/64, exact in
float32, so a committed model is compared with ``==``.
"""

from __future__ import annotations

import math
import tracemalloc
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from coordinator.errors import ConfigError
from coordinator.evaluation import Metrics, combine
from coordinator.evaluation_round import EvaluationRound
from coordinator.rounds import (
    BAD_METADATA,
    BAD_TENSORS,
    DUPLICATE,
    IDENTITY_MISMATCH,
    LATE,
    NON_FINITE,
    NORM_EXCEEDED,
    NOT_SELECTED,
    UNKNOWN_DEVICE,
    WRONG_MODEL_VERSION,
    WRONG_ROUND,
    WRONG_TASK,
    OpenRound,
    RoundOutcome,
    RoundPlan,
)
from coordinator.selection import goal_count, select, selection_size
from coordinator.server_state import ServerState
from coordinator.strategies.arith import WeightedSum
from coordinator.strategies.fedavg import FedAvg
from edge_runtime.codecs import FLOAT16, FLOAT32
from edge_runtime.manifest import WeightSpec
from edge_runtime.protocol import EvaluateTask, EvaluationReport, TaskFailed, UpdateHeader
from edge_runtime.updates import clip, difference, l2_norm
from edge_runtime.weights import Weights

KERNEL, BIAS = "dense/kernel", "dense/bias"
SPECS = (WeightSpec(KERNEL, (1, 2)), WeightSpec(BIAS, (1,)))


def model(kernel: tuple[float, float], bias: float, dtype: Any = np.float32) -> Weights:
    return {KERNEL: np.array([kernel], dtype), BIAS: np.array([bias], dtype)}


def server(weights: Weights | None = None) -> ServerState:
    return ServerState("ab" * 32, "fedavg", GLOBAL if weights is None else weights)


def committed(outcome: RoundOutcome) -> Weights | None:
    return dict(outcome.state.weights) if outcome.state is not None else None


def assert_same(actual: Any, expected: Weights) -> None:
    """Same names in the same order, float32, equal values."""
    assert actual is not None
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert actual[name].dtype == np.float32, name
        np.testing.assert_array_equal(actual[name], value, err_msg=name)


GLOBAL = model((1.0, -1.0), 0.5)
UPDATE_A = model((0.5, -0.25), 0.25)  # L2 norm sqrt(0.375) ~ 0.61; sent with 1 example, train loss 2.0
UPDATE_B = model((-0.25, 0.5), 0.5)  # L2 norm 0.75; sent with 3 examples, train loss 1.0
MEAN = model((-0.0625, 0.3125), 0.4375)  # (1 * A + 3 * B) / 4
COMMITTED = model((0.9375, -0.6875), 0.9375)  # GLOBAL + MEAN
TRAIN_LOSS = 1.25  # (1 * 2.0 + 3 * 1.0) / 4


# --- selection ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("eligible", "fraction", "min_clients", "goal"), [
    (10, 0.1, 2, 2),  # 1 device, raised to min_clients
    (100, 0.25, 2, 25),
    (10, 0.3, 1, 3),
    (100, 0.07, 1, 7),  # 0.07 * 100 = 7.000000000000001 in floats: still 7, not 8
    (100, 0.55, 2, 55),  # 55.00000000000001
    (25, 0.28, 1, 7),  # 7.000000000000001
    (100, 0.29, 1, 29),  # 28.999999999999996
    (3, 0.5, 1, 2),  # 1.5 rounds up
    (7, 0.1, 1, 1),
    (100, 1.0, 2, 100),
    (0, 0.5, 2, 2),
])
def test_goal_count(eligible: int, fraction: float, min_clients: int, goal: int) -> None:
    assert goal_count(eligible, fraction, min_clients) == goal


@pytest.mark.parametrize(("eligible", "goal", "over_select", "size"), [
    (100, 10, 1.3, 13),
    (100, 50, 1.1, 55),  # 50 * 1.1 = 55.00000000000001 in floats: still 55, not 56
    (100, 25, 1.12, 28),  # 28.000000000000004
    (100, 7, 1.1, 8),  # 7.7 rounds up
    (100, 3, 1.3, 4),  # 3.9
    (5, 2, 1.5, 3),
    (100, 2, 1.0, 2),
    (12, 10, 1.3, 12),  # capped at the eligible devices
    (10, 10, 1.3, 10),
    (1, 2, 1.3, 1),  # min_clients above the eligible count: everyone is asked
])
def test_selection_size(eligible: int, goal: int, over_select: float, size: int) -> None:
    assert selection_size(eligible, goal, over_select) == size


POOL = tuple(f"pi-{i:02d}" for i in range(20))


def test_select_is_reproducible_sorted_unique_and_drawn_from_the_pool() -> None:
    picked = select(POOL, 5, seed=7, round_number=3)
    assert picked == select(POOL, 5, seed=7, round_number=3)
    assert picked == tuple(sorted(picked))
    assert len(set(picked)) == 5
    assert set(picked) <= set(POOL)


def test_select_ignores_input_order_and_repeats() -> None:
    picked = select(POOL, 6, seed=1, round_number=2)
    assert select(reversed(POOL), 6, seed=1, round_number=2) == picked
    assert select(iter([*POOL, *POOL[:5]]), 6, seed=1, round_number=2) == picked


def test_select_differs_across_rounds_and_seeds() -> None:
    by_round = {select(POOL, 5, seed=0, round_number=r) for r in range(1, 11)}
    by_seed = {select(POOL, 5, seed=s, round_number=1) for s in range(10)}
    # 15504 possible draws: ten draws that all coincide would mean the round (or seed) is ignored.
    assert len(by_round) > 5
    assert len(by_seed) > 5
    assert select(POOL, 5, seed=0, round_number=1) != select(POOL, 5, seed=0, round_number=2)


def test_select_reaches_every_device_over_rounds() -> None:
    seen = {device for r in range(100) for device in select(POOL, 2, seed=0, round_number=r)}
    assert seen == set(POOL)


@pytest.mark.parametrize("count", [0, 1, 20])
def test_select_edge_counts(count: int) -> None:
    picked = select(POOL, count, seed=0, round_number=1)
    assert len(picked) == count
    if count == len(POOL):
        assert picked == POOL


def test_select_refuses_more_than_the_pool() -> None:
    with pytest.raises(ValueError, match="cannot select 4 of 3"):
        select(["a", "b", "c", "a"], 4, seed=0, round_number=1)


# --- WeightedSum and FedAvg ---------------------------------------------------------------------


def test_weighted_sum_is_the_example_weighted_mean() -> None:
    total = WeightedSum(GLOBAL)
    total.add(UPDATE_A, 1.0)
    total.add(UPDATE_B, 3.0)
    assert (total.count, total.total_weight) == (2, 4.0)
    assert_same(total.mean(), MEAN)


def test_weighted_sum_accepts_float64_and_returns_float32() -> None:
    total = WeightedSum(GLOBAL)
    total.add(model((0.1, 0.2), 0.3, np.float64), 2.0)
    mean = total.mean()
    assert all(value.dtype == np.float32 for value in mean.values())
    np.testing.assert_array_equal(mean[KERNEL], np.array([[0.1, 0.2]], np.float32))


def test_weighted_sum_refuses_empty_mean_and_non_positive_weights() -> None:
    total = WeightedSum(GLOBAL)
    with pytest.raises(ValueError, match="no tensors"):
        total.mean()
    for weight in (0.0, -1.0):
        with pytest.raises(ValueError, match="weight must be > 0"):
            total.add(UPDATE_A, weight)
    assert (total.count, total.total_weight) == (0, 0.0)


def test_weighted_sum_memory_is_one_model_however_many_updates() -> None:
    size = 1000
    total = WeightedSum({"w": np.zeros(size, np.float32), "b": np.zeros(10, np.float32)})
    accumulators = {name: id(value) for name, value in total._sums.items()}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1, 1001):  # a fresh array per update: keeping them would hold 1000 * 4 KB
            total.add({"w": np.full(size, i, np.float32), "b": np.full(10, -i, np.float32)}, 1.0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < size * 4, f"{grown} bytes kept after 1000 updates of a {size * 4}-byte tensor"
    assert {name: id(value) for name, value in total._sums.items()} == accumulators  # summed in place
    assert (total.count, total.total_weight) == (1000, 1000.0)
    mean = total.mean()
    np.testing.assert_array_equal(mean["w"], np.full(size, 500.5, np.float32))
    np.testing.assert_array_equal(mean["b"], np.full(10, -500.5, np.float32))


@pytest.mark.parametrize(("server_lr", "expected"), [
    (1.0, COMMITTED),
    (0.5, model((0.96875, -0.84375), 0.71875)),  # GLOBAL + MEAN / 2
    (2.0, model((0.875, -0.375), 1.375)),  # GLOBAL + 2 * MEAN
])
def test_fedavg_applies_the_weighted_mean_with_the_server_lr(server_lr: float, expected: Weights) -> None:
    strategy = FedAvg(server_lr)
    accumulated = strategy.begin(GLOBAL, 2)
    accumulated.add(UPDATE_A, 1)
    accumulated.add(UPDATE_B, 3)
    before = server()
    after, diagnostics = strategy.apply(before, accumulated)
    assert_same(after.weights, expected)
    assert diagnostics == {"update_norm": l2_norm(MEAN)}
    assert_same(before.weights, model((1.0, -1.0), 0.5))  # the state it was given is not modified
    assert strategy.init(GLOBAL) == {}


@pytest.mark.parametrize("server_lr", [0.0, -0.5, math.nan])
def test_fedavg_refuses_a_non_positive_server_lr(server_lr: float) -> None:
    with pytest.raises(ConfigError, match="server-lr"):
        FedAvg(server_lr)


# --- OpenRound: refusals ------------------------------------------------------------------------


def plan(**changes: Any) -> RoundPlan:
    base = RoundPlan(number=3, task_id="t3", model_version=2, selected=frozenset({"a", "b", "c"}), eligible=10,
                     goal=2, min_reports=2, clip_norm=1.0, deadline=1000.0)
    return replace(base, **changes)


def header(device: str, **changes: Any) -> UpdateHeader:
    base = UpdateHeader(device_id=device, task_id="t3", round=3, model_version=2, examples=1, train_loss=2.0,
                        norm=0.5)
    return replace(base, **changes)


def open_round(strategy: FedAvg | None = None, **plan_changes: Any) -> OpenRound:
    return OpenRound(plan(**plan_changes), server(), SPECS, strategy or FedAvg())


def accept_a(current: OpenRound) -> None:
    assert current.offer_update("a", True, header("a"), UPDATE_A) is None


def accept_b(current: OpenRound) -> None:
    assert current.offer_update("b", True, header("b", examples=3, train_loss=1.0), UPDATE_B) is None


def assert_commits_a_and_b(current: OpenRound) -> None:
    outcome = current.close("goal")
    assert (outcome.status, outcome.reported, outcome.examples, outcome.train_loss) == ("committed", 2, 4, TRAIN_LOSS)
    assert_same(committed(outcome), COMMITTED)


# Each refused offer as (sender, known, header changes, tensors). Device "a" has already sent a valid update.
REFUSALS = [
    pytest.param(IDENTITY_MISMATCH, "b", True, {"device_id": "c"}, UPDATE_B, id="identity-mismatch"),
    pytest.param(IDENTITY_MISMATCH, "b", True, {"device_id": "z"}, UPDATE_B, id="identity-mismatch-unselected"),
    pytest.param(UNKNOWN_DEVICE, "b", False, {}, UPDATE_B, id="unknown-device"),
    pytest.param(LATE, "b", True, {"round": 2}, UPDATE_B, id="late"),
    pytest.param(WRONG_ROUND, "b", True, {"round": 4}, UPDATE_B, id="wrong-round"),
    pytest.param(NOT_SELECTED, "z", True, {}, UPDATE_B, id="not-selected"),
    pytest.param(WRONG_TASK, "b", True, {"task_id": "t2"}, UPDATE_B, id="wrong-task"),
    pytest.param(WRONG_MODEL_VERSION, "b", True, {"model_version": 1}, UPDATE_B, id="wrong-model-version"),
    pytest.param(DUPLICATE, "a", True, {}, UPDATE_B, id="duplicate"),
    pytest.param(BAD_METADATA, "b", True, {"examples": 0}, UPDATE_B, id="zero-examples"),
    pytest.param(BAD_METADATA, "b", True, {"examples": -3}, UPDATE_B, id="negative-examples"),
    pytest.param(BAD_METADATA, "b", True, {"train_loss": math.nan}, UPDATE_B, id="nan-loss"),
    pytest.param(BAD_METADATA, "b", True, {"train_loss": math.inf}, UPDATE_B, id="inf-loss"),
    pytest.param(BAD_TENSORS, "b", True, {}, {KERNEL: UPDATE_B[KERNEL]}, id="missing-tensor"),
    pytest.param(BAD_TENSORS, "b", True, {}, {**UPDATE_B, "extra/bias": np.zeros(1, np.float32)}, id="extra-tensor"),
    pytest.param(BAD_TENSORS, "b", True, {}, {**UPDATE_B, KERNEL: np.array([-0.25, 0.5], np.float32)},
                 id="wrong-shape"),
    pytest.param(BAD_TENSORS, "b", True, {}, model((-0.25, 0.5), 0.5, np.float64), id="float64"),
    pytest.param(BAD_TENSORS, "b", True, {}, {**UPDATE_B, BIAS: np.array([0], np.int32)}, id="int32"),
    pytest.param(NON_FINITE, "b", True, {}, model((math.nan, 0.5), 0.5), id="nan"),
    pytest.param(NON_FINITE, "b", True, {}, model((-0.25, 0.5), math.inf), id="inf"),
    pytest.param(NON_FINITE, "b", True, {}, model((-math.inf, 0.5), 0.5), id="minus-inf"),
    pytest.param(NORM_EXCEEDED, "b", True, {}, model((1.2, 0.9), 0.0), id="norm-1.5"),
    pytest.param(NORM_EXCEEDED, "b", True, {}, model((0.6 * 1.0001, 0.8 * 1.0001), 0.0), id="norm-1.0001"),
]


@pytest.mark.parametrize(("reason", "sender", "known", "changes", "tensors"), REFUSALS)
def test_a_refused_update_returns_its_reason_and_changes_nothing(
        reason: str, sender: str, known: bool, changes: dict[str, Any], tensors: Weights) -> None:
    current = open_round()
    accept_a(current)
    offered = header(sender, examples=3, train_loss=1.0)
    assert current.offer_update(sender, known, replace(offered, **changes), tensors) == reason
    assert current.reported == 1
    assert current.tally.rejected == Counter({reason: 1})
    assert not current.goal_reached
    accept_b(current)  # "b" was not marked as answered by its refused update
    assert_commits_a_and_b(current)  # neither the aggregate nor the train loss moved


def test_the_tally_counts_every_refusal_by_reason() -> None:
    current = open_round()
    accept_a(current)
    for case in REFUSALS:
        reason, sender, known, changes, tensors = case.values
        assert current.offer_update(sender, known, header(sender, **changes), tensors) == reason
    assert current.tally.rejected == Counter(case.values[0] for case in REFUSALS)
    assert current.tally.rejected[BAD_TENSORS] == 5
    assert (current.reported, current.tally.failed, current.tally.interrupted) == (1, Counter(), Counter())


def test_an_update_clipped_on_the_device_is_accepted_at_the_bound() -> None:
    clipped, norm = clip(model((2.0, 1.0), 2.0), 1.0)
    assert norm == 3.0
    assert l2_norm(clipped) > 1.0  # float32 rounding lands just above the bound: the tolerance must absorb it
    current = open_round()
    assert current.offer_update("a", True, header("a", norm=norm), clipped) is None
    assert current.reported == 1


# --- OpenRound: accepting and closing -----------------------------------------------------------


def test_two_valid_updates_reach_the_goal_and_commit_the_weighted_mean() -> None:
    current = open_round()
    accept_a(current)
    assert (current.reported, current.goal_reached) == (1, False)
    accept_b(current)
    assert (current.reported, current.goal_reached, current.all_answered) == (2, True, False)
    outcome = current.close("goal")
    assert outcome.plan == plan()
    assert (outcome.status, outcome.closed_by, outcome.reported, outcome.examples) == ("committed", "goal", 2, 4)
    assert outcome.train_loss == TRAIN_LOSS
    assert outcome.no_answer == 1  # "c" never answered
    assert_same(committed(outcome), COMMITTED)
    assert_same(GLOBAL, model((1.0, -1.0), 0.5))
    assert current.tally.rejected == Counter()


def test_the_server_learning_rate_is_applied_at_commit() -> None:
    current = open_round(FedAvg(server_lr=0.5))
    accept_a(current)
    accept_b(current)
    assert_same(committed(current.close("goal")), model((0.96875, -0.84375), 0.71875))


@pytest.mark.parametrize(("senders", "closed_by", "status"), [
    (("a",), "deadline", "abandoned"),  # fewer than min_reports = 2
    (("a", "b"), "deadline", "committed"),  # min_reports reached, goal or not
    (("a", "b"), "stopped", "abandoned"),  # a stopped coordinator never commits
    ((), "deadline", "abandoned"),
])
def test_close_commits_only_with_min_reports_and_never_when_stopped(
        senders: tuple[str, ...], closed_by: Any, status: str) -> None:
    current = open_round()
    for accept in [accept_a, accept_b][:len(senders)]:
        accept(current)
    outcome = current.close(closed_by)
    assert (outcome.status, outcome.closed_by, outcome.reported) == (status, closed_by, len(senders))
    assert outcome.no_answer == 3 - len(senders)
    assert outcome.train_loss == {0: None, 1: 2.0, 2: TRAIN_LOSS}[len(senders)]
    if status == "committed":
        assert_same(committed(outcome), COMMITTED)
    else:
        assert outcome.state is None


def test_one_update_commits_when_min_reports_is_one() -> None:
    current = open_round(min_reports=1)
    accept_a(current)
    outcome = current.close("deadline")
    assert (outcome.status, outcome.examples, outcome.train_loss) == ("committed", 1, 2.0)
    assert_same(committed(outcome), model((1.5, -1.25), 0.75))  # GLOBAL + UPDATE_A


def failure(device: str, outcome: Any = "failed", reason: str = "oom", **changes: Any) -> TaskFailed:
    return replace(TaskFailed(device, "t3", 3, outcome, reason), **changes)


def test_failures_are_counted_by_outcome_and_reason_and_answer_for_the_device() -> None:
    current = open_round()
    assert current.offer_failure("a", True, failure("a", "failed", "oom")) is None
    assert current.offer_failure("b", True, failure("b", "interrupted", "not_charging")) is None
    assert not current.all_answered
    assert current.offer_failure("c", True, failure("c", "failed", "oom")) is None
    assert current.all_answered
    assert current.tally.failed == Counter({"oom": 2})
    assert current.tally.interrupted == Counter({"not_charging": 1})
    assert current.offer_update("a", True, header("a"), UPDATE_A) == DUPLICATE
    assert current.offer_failure("b", True, failure("b")) == DUPLICATE
    outcome = current.close("deadline")
    assert (outcome.status, outcome.reported, outcome.no_answer, outcome.train_loss) == ("abandoned", 0, 0, None)


def test_a_failure_after_an_update_is_a_duplicate() -> None:
    current = open_round()
    accept_a(current)
    assert current.offer_failure("a", True, failure("a")) == DUPLICATE
    assert current.tally.failed == Counter()


@pytest.mark.parametrize(("reason", "sender", "known", "changes"), [
    (IDENTITY_MISMATCH, "b", True, {"device_id": "c"}),
    (UNKNOWN_DEVICE, "b", False, {}),
    (LATE, "b", True, {"round": 2}),
    (WRONG_ROUND, "b", True, {"round": 4}),
    (NOT_SELECTED, "z", True, {}),
    (WRONG_TASK, "b", True, {"task_id": "t2"}),
])
def test_a_refused_failure_changes_nothing(reason: str, sender: str, known: bool, changes: dict[str, Any]) -> None:
    current = open_round()
    assert current.offer_failure(sender, known, failure(sender, **changes)) == reason
    assert current.tally.rejected == Counter({reason: 1})
    assert (current.tally.failed, current.tally.interrupted) == (Counter(), Counter())
    assert current.close("deadline").no_answer == 3


# --- federated evaluation -----------------------------------------------------------------------


TASK = EvaluateTask("e5", 5, 3, "ab" * 32, 1000.0)


def report(device: str, examples: int, loss_sum: float, correct: int) -> EvaluationReport:
    return EvaluationReport(device, "e5", 5, 3, examples, loss_sum, correct)


def test_combine_weights_loss_and_accuracy_by_examples() -> None:
    reports = [report("a", 10, 5.0, 8), report("b", 30, 3.0, 21), report("c", 0, 0.0, 0)]
    # loss (5 + 3) / 40, accuracy (8 + 21) / 40; the device with no examples does not count
    assert combine(reports) == Metrics(loss=0.2, accuracy=0.725, examples=40, devices=2)


@pytest.mark.parametrize("reports", [[], [report("c", 0, 0.0, 0)]])
def test_combine_without_examples_is_none(reports: list[EvaluationReport]) -> None:
    assert combine(reports) is None


def evaluation_with_a_and_b() -> EvaluationRound:
    evaluation = EvaluationRound(TASK, frozenset({"a", "b", "c"}))
    assert evaluation.offer("a", True, report("a", 10, 5.0, 8)) is None
    assert evaluation.offer("b", True, report("b", 30, 3.0, 21)) is None
    return evaluation


def test_an_evaluation_round_combines_the_reports_it_accepted() -> None:
    evaluation = evaluation_with_a_and_b()
    assert not evaluation.all_answered
    assert evaluation.offer("c", True, TaskFailed("c", "e5", 5, "interrupted", "on_battery")) is None
    assert evaluation.all_answered
    assert evaluation.failed == 1
    assert evaluation.metrics() == Metrics(0.2, 0.725, 40, 2, failed=1)
    assert evaluation.rejected == Counter()


def test_an_evaluation_round_without_reports_has_no_metrics() -> None:
    assert EvaluationRound(TASK, frozenset({"a"})).metrics() is None


@pytest.mark.parametrize(("reason", "sender", "known", "message"), [
    pytest.param(IDENTITY_MISMATCH, "c", True, report("a", 10, 1.0, 1), id="identity-mismatch"),
    pytest.param(UNKNOWN_DEVICE, "c", False, report("c", 10, 1.0, 1), id="unknown-device"),
    pytest.param(NOT_SELECTED, "z", True, report("z", 10, 1.0, 1), id="not-selected"),
    pytest.param(DUPLICATE, "a", True, report("a", 10, 1.0, 1), id="duplicate-report"),
    pytest.param(DUPLICATE, "a", True, TaskFailed("a", "e5", 5, "failed", "oom"), id="failure-after-report"),
    pytest.param(BAD_METADATA, "c", True, report("c", 10, 1.0, 11), id="correct-above-examples"),
    pytest.param(BAD_METADATA, "c", True, report("c", 10, 1.0, -1), id="negative-correct"),
    pytest.param(BAD_METADATA, "c", True, report("c", -10, 1.0, 0), id="negative-examples"),
    pytest.param(BAD_METADATA, "c", True, report("c", 10, -0.5, 1), id="negative-loss"),
    pytest.param(BAD_METADATA, "c", True, report("c", 10, math.nan, 1), id="nan-loss"),
    pytest.param(BAD_METADATA, "c", True, report("c", 10, math.inf, 1), id="inf-loss"),
])
def test_a_refused_evaluation_message_changes_nothing(
        reason: str, sender: str, known: bool, message: EvaluationReport | TaskFailed) -> None:
    evaluation = evaluation_with_a_and_b()
    assert evaluation.offer(sender, known, message) == reason
    assert evaluation.rejected == Counter({reason: 1})
    assert (evaluation.failed, evaluation.all_answered) == (0, False)
    assert evaluation.metrics() == Metrics(0.2, 0.725, 40, 2)


# --- edge_runtime.updates -----------------------------------------------------------------------


def test_difference_is_local_minus_base_in_base_order_as_float32() -> None:
    local = {"w": np.array([1.5, 2.0], np.float64), "b": np.array([0.0], np.float64)}
    base = {"b": np.array([1.0], np.float32), "w": np.array([1.0, 0.5], np.float32)}
    delta = difference(local, base)
    assert list(delta) == ["b", "w"]
    assert all(value.dtype == np.float32 for value in delta.values())
    np.testing.assert_array_equal(delta["b"], [-1.0])
    np.testing.assert_array_equal(delta["w"], [0.5, 1.5])


@pytest.mark.parametrize(("tensors", "norm"), [
    ({"w": np.array([[3.0, 4.0]], np.float32)}, 5.0),
    ({"w": np.array([1.0, 2.0, 2.0], np.float32), "b": np.array([4.0], np.float32)}, 5.0),  # sqrt(1+4+4+16)
    ({"w": np.zeros((2, 3), np.float32)}, 0.0),
    ({}, 0.0),
])
def test_l2_norm_of_all_tensors_together(tensors: Weights, norm: float) -> None:
    assert l2_norm(tensors) == norm


def test_l2_norm_accumulates_in_float64() -> None:
    big = np.float32(1e20)  # its square overflows float32
    assert l2_norm({"w": np.array([big, big], np.float32)}) == pytest.approx(float(big) * math.sqrt(2), rel=1e-12)


def test_clip_scales_a_long_update_down_to_the_bound_and_returns_the_norm_before() -> None:
    clipped, norm = clip({"w": np.array([3.0, 0.0], np.float32), "b": np.array([4.0], np.float32)}, 1.0)
    assert norm == 5.0
    assert all(value.dtype == np.float32 for value in clipped.values())
    np.testing.assert_allclose(clipped["w"], [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped["b"], [0.8], rtol=1e-6)
    assert l2_norm(clipped) == pytest.approx(1.0, rel=1e-6)
    assert l2_norm(clipped) <= FLOAT32.max_norm(1.0, 3)


@pytest.mark.parametrize("bound", [5.0, 10.0])
def test_clip_leaves_an_update_within_the_bound_untouched(bound: float) -> None:
    update = {"w": np.array([3.0, 0.0], np.float32), "b": np.array([4.0], np.float32)}
    clipped, norm = clip(update, bound)
    assert norm == 5.0
    assert_same(clipped, update)


def test_codec_norm_slack_is_rounding_only() -> None:
    assert FLOAT32.max_norm(1.0, 10) == 1.0 + 1e-5
    assert FLOAT16.max_norm(1.0, 100) == pytest.approx(1.0 + 2.0**-11 + 1e-5 + 10 * 2.0**-24)
    assert l2_norm({"w": np.array([1.000005], np.float32)}) <= FLOAT32.max_norm(1.0, 1)
    assert l2_norm({"w": np.array([1.0001], np.float32)}) > FLOAT32.max_norm(1.0, 1)
