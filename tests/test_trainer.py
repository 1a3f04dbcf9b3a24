"""Trainer semantics: masked short batches, optimizer reset, seeded shuffling, weight checks."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.artifact import Artifact
from edge_runtime.errors import DataError, EdgeRuntimeError, WeightsError
from edge_runtime.manifest import OptimizerConfig
from edge_runtime.trainer import Trainer
from model_export.exporter import initial_weights
from model_export.reference import keras_model, keras_weights
from model_export.spec import ModelSpec

SPEC = ModelSpec("mlp", (6,), 3, hidden=(8,), batch_size=16, optimizer=OptimizerConfig("sgd", 0.1, momentum=0.9))


@pytest.fixture(scope="module")
def artifact(export) -> Artifact:
    return Artifact.load(export(SPEC))


def _data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 6)).astype(np.float32), rng.integers(0, 3, n).astype(np.int32)


def test_short_batch_is_exactly_a_step_on_its_rows(artifact) -> None:
    """5 rows in a batch of 16: padding must not change the gradient (compare Keras on the 5 rows alone)."""
    x, y = _data(5)
    trainer = Trainer(artifact)
    reference = keras_model(SPEC, initial_weights(SPEC))
    for _ in range(3):
        ours = trainer.train_step(x, y)
        theirs = float(np.asarray(reference.train_on_batch(x, y))[0])
        assert ours == pytest.approx(theirs, rel=1e-5)
    expected = keras_weights(SPEC, reference)
    for name, value in trainer.get_weights().items():
        np.testing.assert_allclose(value, expected[name], atol=1e-6, err_msg=name)


def test_fewer_examples_than_batch_are_trained_on(artifact) -> None:
    x, y = _data(3)
    trainer = Trainer(artifact)
    before = trainer.get_weights()
    result = trainer.fit(x, y, epochs=4)
    assert (result.examples_seen, result.steps) == (12, 4)
    assert any(not np.array_equal(before[k], v) for k, v in trainer.get_weights().items())


def test_epochs_count_every_example_once(artifact) -> None:
    x, y = _data(37)
    result = Trainer(artifact).fit(x, y, epochs=2)
    assert result.examples_seen == 74
    assert result.steps == 6  # 16 + 16 + 5, twice


def test_an_example_cap_trains_each_epoch_on_a_fresh_sample_of_that_size(artifact) -> None:
    x, y = _data(100)
    trainer = Trainer(artifact)
    seen: list[np.ndarray] = []
    real_step = trainer._step
    trainer._step = lambda bx, by, lr, mu: (seen.append(bx.copy()), real_step(bx, by, lr, mu))[1]  # type: ignore[method-assign]
    result = trainer.fit(x, y, epochs=3, max_examples=20, seed=4)
    assert (result.examples_seen, result.steps) == (60, 6)  # 16 + 4 per epoch
    epochs = [np.concatenate(seen[i:i + 2]) for i in (0, 2, 4)]
    rows = [{x.tolist().index(row.tolist()) for row in epoch} for epoch in epochs]
    assert all(len(r) == 20 for r in rows)  # each epoch: 20 different examples
    assert rows[0] != rows[1] != rows[2]  # drawn afresh
    assert Trainer(artifact).fit(x, y, epochs=1, max_examples=500).examples_seen == 100  # a cap above the data
    with pytest.raises(EdgeRuntimeError, match="max_examples must be >= 1"):
        Trainer(artifact).fit(x, y, epochs=1, max_examples=0)


def test_steps_mode_runs_exactly_that_many_steps(artifact) -> None:
    x, y = _data(40)
    result = Trainer(artifact).fit(x, y, steps=5)
    assert result.steps == 5
    assert result.examples_seen == 16 + 16 + 8 + 16 + 16


def test_same_seed_same_weights_other_seed_other_weights(artifact) -> None:
    x, y = _data(64)
    runs = []
    for seed in (7, 7, 8):
        trainer = Trainer(artifact)
        trainer.fit(x, y, epochs=1, seed=seed)
        runs.append(trainer.get_weights())
    assert all(np.array_equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not np.array_equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_set_weights_resets_momentum(artifact) -> None:
    x, y = _data(16)
    fresh = Trainer(artifact)
    fresh.train_step(x, y)
    reused = Trainer(artifact)
    for _ in range(5):
        reused.train_step(*_data(16, seed=9))
    reused.set_weights(artifact.initial_weights())
    reused.train_step(x, y)
    for name, value in fresh.get_weights().items():
        np.testing.assert_array_equal(reused.get_weights()[name], value, err_msg=name)


def test_weights_round_trip_by_name(artifact) -> None:
    trainer = Trainer(artifact)
    target = {k: np.full_like(v, 0.25) for k, v in trainer.get_weights().items()}
    trainer.set_weights(target)
    assert all(np.array_equal(trainer.get_weights()[k], v) for k, v in target.items())


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda w: w.pop("dense_0_bias"), "dense_0_bias"),
    (lambda w: w.update(extra=np.zeros(2, np.float32)), "unexpected tensors ['extra']"),
    (lambda w: w.update(dense_0_kernel=np.zeros((6, 9), np.float32)), "shape (6, 9), expected (6, 8)"),
    (lambda w: w.update(dense_0_bias=np.zeros(8, np.float64)), "dtype float64, expected float32"),
    (lambda w: w.update(dense_1_bias=np.array([0, np.nan, 0], np.float32)), "NaN or Inf"),
])
def test_bad_weights_are_refused_and_change_nothing(artifact, mutate, message) -> None:
    trainer = Trainer(artifact)
    before = trainer.get_weights()
    bad = dict(before)
    mutate(bad)
    with pytest.raises(WeightsError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        trainer.set_weights(bad)
    assert all(np.array_equal(trainer.get_weights()[k], v) for k, v in before.items())


def test_bad_arguments_get_clear_errors(artifact) -> None:
    trainer = Trainer(artifact)
    x, y = _data(20)
    with pytest.raises(EdgeRuntimeError, match="exactly one of epochs or steps"):
        trainer.fit(x, y)
    with pytest.raises(EdgeRuntimeError, match="at most 16"):
        trainer.train_step(x, y)
    with pytest.raises(DataError, match=r"x has shape \(20, 5\); expected \(N, 6\)"):
        trainer.fit(x[:, :5], y, epochs=1)


def test_predict_and_evaluate_agree(artifact) -> None:
    x, y = _data(50)
    trainer = Trainer(artifact)
    logits = trainer.predict(x)
    assert logits.shape == (50, 3)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y))
    assert trainer.evaluate(x, y).accuracy == pytest.approx(accuracy)


@pytest.mark.parametrize("lr", [0.0, -0.1, float("nan"), float("inf")])
def test_bad_learning_rates_are_refused_before_any_step(artifact, lr) -> None:
    trainer = Trainer(artifact)
    before = trainer.get_weights()
    x, y = _data(16)
    with pytest.raises(EdgeRuntimeError, match="expected a finite number > 0"):
        trainer.fit(x, y, epochs=1, lr=lr)
    with pytest.raises(EdgeRuntimeError, match="expected a finite number > 0"):
        trainer.train_step(x, y, lr=lr)
    assert all(np.array_equal(trainer.get_weights()[k], v) for k, v in before.items())


def test_divergence_is_reported_not_saved(artifact) -> None:
    trainer = Trainer(artifact)
    x, y = _data(32)
    with pytest.raises(EdgeRuntimeError, match="diverged"):
        trainer.fit(x * 1e6, y, epochs=3, lr=1e6)
