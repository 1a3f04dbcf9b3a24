"""Keras models lowered layer by layer train in the artifact as they train in Keras.

Each parity test exports a model, takes K steps through the artifact (``Trainer.train_step``) and K
Keras steps on the same batches from the same start, and compares the weights to 1e-5. Layers are
grouped into few models because every export costs seconds.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from edge_runtime.artifact import Artifact
from edge_runtime.manifest import OptimizerConfig
from edge_runtime.trainer import Trainer
from model_export.convert import check_file
from model_export.errors import UnsupportedModelError
from model_export.keras_export import KerasExport, export_keras, lower_keras
from model_export.keras_export.activations import ACTIVATIONS

pytestmark = pytest.mark.tensorflow

STEPS = 4
BATCH = 8
TOLERANCE = 1e-5
OPTIMIZERS = {
    "sgd": OptimizerConfig("sgd", 0.05),
    "sgd-momentum": OptimizerConfig("sgd", 0.05, momentum=0.9),
    "adam": OptimizerConfig("adam", 0.01),
}
KerasStep = Callable[[np.ndarray, np.ndarray], float]


def keras_optimizer(config: OptimizerConfig) -> keras.optimizers.Optimizer:
    if config.name == "adam":
        return keras.optimizers.Adam(config.learning_rate, beta_1=config.beta_1, beta_2=config.beta_2,
                                     epsilon=config.epsilon)
    return keras.optimizers.SGD(config.learning_rate, momentum=config.momentum)


def export(model: keras.Model, folder: Path, optimizer: OptimizerConfig, batch: int = BATCH) -> Trainer:
    export_keras(model, folder, KerasExport(batch_size=batch, optimizer=optimizer))
    return Trainer(Artifact.load(folder))


def artifact_names(model: keras.Model) -> dict[str, Any]:
    """The model's trainable variables under the artifact's weight names (``{layer}_{variable}``)."""
    return {re.sub(r"[^A-Za-z0-9_]", "_", f"{layer.name}_{v.name}"): v
            for layer in model.layers for v in layer.trainable_weights}


def train_on_batch(model: keras.Model) -> KerasStep:
    return lambda x, y: float(np.asarray(model.train_on_batch(x, y)).reshape(-1)[0])


def inference_mode_step(model: keras.Model) -> KerasStep:
    """One Keras step with the model called in inference mode (``training=False``) under a gradient tape.

    This is the reference for BatchNormalization, whose artifact lowering normalizes with the frozen
    moving statistics while gamma and beta train. ``train_on_batch`` cannot take that step: in
    training mode Keras normalizes with the batch statistics and updates the moving ones, and a
    layer set ``trainable = False`` would freeze gamma and beta too.
    """
    return _tape_step(model, training=False)


def dense_gradient_step(model: keras.Model) -> KerasStep:
    """One Keras step whose gradients are made dense before the optimizer sees them.

    The reference for an Embedding under Adam. The gradient of a lookup is an ``IndexedSlices`` with one
    row per id looked up, and Keras's TensorFlow backend squares it row by row before summing the rows:
    an id looked up twice in a batch adds the sum of its rows' squares to Adam's second moment, not the
    square of its gradient (one step on ids [0, 0] with gradient rows 1 and 1 gives v = 0.002 where dense
    Adam gives 0.004). The artifact takes the dense step, Adam as written (and as Keras takes it for a
    dense gradient). SGD, with or without momentum, is linear in the gradient, gives the same step either
    way, and is checked against ``train_on_batch`` itself.
    """
    return _tape_step(model, training=True, densify=True)


def _tape_step(model: keras.Model, training: bool, densify: bool = False) -> KerasStep:
    loss_fn, optimizer = model.loss, model.optimizer

    def step(x: np.ndarray, y: np.ndarray) -> float:
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=training))
        grads = tape.gradient(loss, model.trainable_weights)
        if densify:
            grads = [tf.convert_to_tensor(g) for g in grads]
        optimizer.apply_gradients(zip(grads, model.trainable_weights, strict=True))
        return float(loss)

    return step


def assert_parity(model: keras.Model, trainer: Trainer, keras_step: KerasStep, x: np.ndarray, y: np.ndarray,
                  keras_x: np.ndarray | None = None) -> None:
    """K steps on consecutive batches agree in loss and, at the end, in every weight."""
    keras_x = x if keras_x is None else keras_x
    for k in range(STEPS):
        rows = slice(k * BATCH, (k + 1) * BATCH)
        ours = trainer.train_step(x[rows], y[rows])
        theirs = keras_step(keras_x[rows], y[rows])
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-5), f"loss differs at step {k}"
    expected = artifact_names(model)
    weights = trainer.get_weights()
    assert set(weights) == set(expected)
    for name, value in weights.items():
        np.testing.assert_allclose(value, np.asarray(expected[name]), rtol=0, atol=TOLERANCE, err_msg=name)


def compiled(model: keras.Model, optimizer: OptimizerConfig, loss: Any) -> keras.Model:
    model.compile(optimizer=keras_optimizer(optimizer), loss=loss)
    return model


def core_model() -> keras.Model:
    """Rescaling, adapted Normalization, Dense on a 3-D input, Flatten, every activation (as ``activation=`` and
    as a layer), Concatenate, Add, Reshape; logits out."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4, 6))
    normalization = keras.layers.Normalization()
    normalization.adapt(np.random.default_rng(1).normal(1.0, 2.0, (64, 4, 6)).astype(np.float32))
    x = normalization(keras.layers.Rescaling(0.5, offset=0.25)(inputs))
    x = keras.layers.Flatten()(keras.layers.Dense(3, activation="tanh")(x))
    # Each activation after a biased and a bias-free matmul: the converter once dropped a min/max relu6 that
    # directly followed a matmul.
    x = keras.layers.Concatenate()([
        keras.layers.Dense(2, activation=name, use_bias=bias, name=f"dense_{name}_{bias}")(x)
        for name in sorted(ACTIVATIONS) for bias in (True, False)])
    x = keras.layers.Dense(6)(x)
    wide = keras.layers.Rescaling(4.0)(x)  # so that ReLU(max_value=6) sees inputs on both sides of 6
    x = keras.layers.Add()([
        keras.layers.ReLU()(x), keras.layers.ReLU(max_value=6)(wide), keras.layers.ReLU(negative_slope=0.1)(x),
        keras.layers.LeakyReLU(0.3)(x), keras.layers.Softmax()(x), keras.layers.Activation("sigmoid")(x),
        keras.layers.Activation("hard_silu")(x),
    ])
    x = keras.layers.Flatten()(keras.layers.Dense(2)(keras.layers.Reshape((3, -1))(x)))
    return keras.Model(inputs, keras.layers.Dense(3)(x), name="core")


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_core_layers_and_activations_match_keras(optimizer: str, tmp_path: Path) -> None:
    config = OPTIMIZERS[optimizer]
    model = compiled(core_model(), config, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer = export(model, tmp_path, config)
    rng = np.random.default_rng(2)
    x = rng.normal(1.0, 2.0, (STEPS * BATCH, 4, 6)).astype(np.float32)
    y = rng.integers(0, 3, STEPS * BATCH)
    assert_parity(model, trainer, train_on_batch(model), x, y)


def text_model() -> keras.Model:
    """A bag-of-embeddings classifier: int ids, Embedding, GlobalAveragePooling1D, one logit."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((7,), dtype="int32")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(30, 8)(inputs))
    x = keras.layers.Dense(8, activation="relu")(x)
    return keras.Model(inputs, keras.layers.Dense(1, use_bias=False)(x), name="text")  # a bare logit into the loss


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_embedding_text_classifier_matches_keras(optimizer: str, tmp_path: Path) -> None:
    config = OPTIMIZERS[optimizer]
    model = compiled(text_model(), config, keras.losses.BinaryCrossentropy(from_logits=True))
    trainer = export(model, tmp_path, config)
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 30, (STEPS * BATCH, 7)).astype(np.int32)
    y = rng.integers(0, 2, STEPS * BATCH)
    keras_step = dense_gradient_step(model) if config.name == "adam" else train_on_batch(model)
    # The artifact takes float32 ids (its x is float32); Keras takes the int ids its Input declares.
    assert_parity(model, trainer, keras_step, ids.astype(np.float32), y, keras_x=ids)
    ops = check_file(tmp_path / "model.tflite")
    assert {"GATHER", "UNSORTED_SEGMENT_SUM"} <= ops and "ONE_HOT" not in ops  # the lookup's gradient


def batch_norm_model() -> keras.Model:
    """BatchNormalization on 2-D and 4-D inputs with non-trivial moving statistics, one layer frozen; softmax out."""
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8)(inputs)
    first = keras.layers.BatchNormalization()
    x = keras.layers.ReLU()(first(x))
    x = keras.layers.Reshape((2, 2, 2))(x)
    second = keras.layers.BatchNormalization(center=False, epsilon=0.01)
    frozen = keras.layers.BatchNormalization(scale=False, name="frozen_bn")
    x = keras.layers.Flatten()(frozen(second(x)))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x), name="batch-norm")
    for layer in (first, second, frozen):
        channels = layer.moving_mean.shape[0]
        layer.moving_mean.assign(rng.normal(0.0, 1.0, channels).astype(np.float32))
        layer.moving_variance.assign(rng.uniform(0.5, 3.0, channels).astype(np.float32))
    frozen.trainable = False
    return model


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_batch_norm_trains_gamma_and_beta_on_frozen_statistics(optimizer: str, tmp_path: Path) -> None:
    config = OPTIMIZERS[optimizer]
    model = compiled(batch_norm_model(), config, keras.losses.SparseCategoricalCrossentropy())
    statistics = [np.asarray(v).copy() for v in model.non_trainable_weights]
    trainer = export(model, tmp_path, config)
    assert trainer.manifest.base_sha256 is not None  # the moving statistics and the frozen layer's beta
    assert not any(name.startswith("frozen_bn") for name in trainer.manifest.weight_names)
    rng = np.random.default_rng(6)
    x = rng.normal(0.0, 2.0, (STEPS * BATCH, 6)).astype(np.float32)
    y = rng.integers(0, 3, STEPS * BATCH)
    assert_parity(model, trainer, inference_mode_step(model), x, y)
    for before, after in zip(statistics, model.non_trainable_weights, strict=True):
        np.testing.assert_array_equal(before, np.asarray(after))
    np.testing.assert_allclose(trainer.predict(x), model.predict(x, verbose=0), rtol=0, atol=1e-5)


def probability_model(loss: str) -> keras.Model:
    """A softmax or sigmoid output whose last kernel is scaled up, so that some predictions are confidently wrong."""
    keras.utils.set_random_seed(7)
    inputs = keras.Input((5,))
    x = keras.layers.Dense(6, activation="relu")(inputs)
    last = keras.layers.Dense(1 if loss == "binary_crossentropy" else 4)
    if loss == "binary_crossentropy":
        model = keras.Model(inputs, keras.layers.Activation("sigmoid")(last(x)))
    else:
        model = keras.Model(inputs, keras.layers.Softmax()(last(x)))
    last.kernel.assign(last.kernel * 25.0)
    return model


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", "binary_crossentropy"])
def test_losses_from_probabilities_match_keras(loss: str, tmp_path: Path) -> None:
    """Keras's TensorFlow backend takes a cross-entropy of a softmax or sigmoid output from the logits under it,
    so a confidently wrong prediction (a probability below the 1e-7 clip) still has a gradient: so must the
    artifact's."""
    config = OPTIMIZERS["sgd-momentum"]
    model = compiled(probability_model(loss), config, loss)
    trainer = export(model, tmp_path, config)
    assert trainer.manifest.exporter["loss"] == f"{loss}_from_probabilities"
    rng = np.random.default_rng(8)
    x = rng.normal(0.0, 1.0, (STEPS * BATCH, 5)).astype(np.float32)
    y = rng.integers(0, 2 if loss == "binary_crossentropy" else 4, STEPS * BATCH)
    probabilities = model.predict(x[:BATCH], verbose=0)
    if loss == "binary_crossentropy":
        probabilities = np.concatenate([1.0 - probabilities, probabilities], axis=1)
    assert probabilities[np.arange(BATCH), y[:BATCH]].min() < 1e-7  # the clip would cut the gradient
    assert_parity(model, trainer, train_on_batch(model), x, y)


FEATURES = 256
RATE = 0.3


def test_dropout_drops_at_its_rate_in_train_and_is_the_identity_elsewhere(tmp_path: Path) -> None:
    """A linear model from zero weights: after one SGD step (lr 1) on one row of ones, kernel row i is
    ``-s_i * (softmax(0) - onehot(0)) = s_i * (0.5, -0.5)``, where ``s_i`` is dropout's factor for input i:
    0 when dropped, ``1 / (1 - rate)`` when kept."""
    keras.utils.set_random_seed(9)
    inputs = keras.Input((FEATURES,))
    linear = keras.layers.Dense(2, kernel_initializer="zeros", name="linear")
    model = keras.Model(inputs, linear(keras.layers.Dropout(RATE)(inputs)))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer = export(model, tmp_path, OptimizerConfig("sgd", 1.0), batch=4)
    start = trainer.get_weights()
    factors = []
    for _ in range(4):
        trainer.set_weights(start)
        trainer.train_step(np.ones((1, FEATURES), np.float32), np.array([0]))
        rows = trainer.get_weights()["linear_kernel"]
        np.testing.assert_allclose(rows[:, 1], -rows[:, 0], rtol=0, atol=1e-7)
        factors.append(rows[:, 1] / -0.5)
    factors_seen = np.concatenate(factors)
    kept = factors_seen != 0
    np.testing.assert_allclose(factors_seen[kept], 1.0 / (1.0 - RATE), rtol=1e-6)
    assert abs(1.0 - kept.mean() - RATE) < 0.06, f"dropped {1.0 - kept.mean():.3f}, rate {RATE}"  # > 4 sigma
    assert not all(np.array_equal(factors[0], f) for f in factors[1:]), "every step dropped the same inputs"
    # A global seed was set at export (set_random_seed above), yet two interpreters, like two devices,
    # draw different masks: the exported RANDOM_UNIFORM seeds itself per interpreter.
    other = Trainer(Artifact.load(tmp_path))
    other.set_weights(start)
    other.train_step(np.ones((1, FEATURES), np.float32), np.array([0]))
    assert not np.array_equal(other.get_weights()["linear_kernel"][:, 1] / -0.5, factors[0])

    rng = np.random.default_rng(9)
    weights = {"linear_kernel": rng.normal(size=(FEATURES, 2)).astype(np.float32),
               "linear_bias": rng.normal(size=2).astype(np.float32)}
    trainer.set_weights(weights)
    model.set_weights([weights["linear_kernel"], weights["linear_bias"]])
    x = rng.normal(size=(20, FEATURES)).astype(np.float32)
    y = rng.integers(0, 2, 20)
    np.testing.assert_allclose(trainer.predict(x), model.predict(x, verbose=0), rtol=1e-6, atol=1e-5)
    assert trainer.evaluate(x, y).loss == pytest.approx(float(model.evaluate(x, y, verbose=0)), rel=1e-5)


class Doubling(keras.Model):
    def call(self, x: Any) -> Any:
        return x * 2.0


@pytest.mark.filterwarnings("ignore:.*does not support masking")
def test_every_problem_of_a_model_is_refused_in_one_message() -> None:
    inputs = keras.Input((6,))
    ids = keras.layers.Embedding(20, 4, mask_zero=True, name="masked_ids")(inputs)
    pooled = keras.layers.GlobalAveragePooling1D(name="masked_pool")(ids)
    recurrent = keras.layers.LSTM(4, name="recurrent")(ids)
    across = keras.layers.BatchNormalization(axis=1, name="across")(ids)
    x = keras.layers.Concatenate()([pooled, recurrent, keras.layers.Flatten()(across)])
    x = keras.layers.Dense(8, activation="gelu", kernel_regularizer="l2", name="fancy")(x)
    x = Doubling(name="doubling")(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x), name="problems")
    model.compile(loss="categorical_crossentropy")

    with pytest.raises(UnsupportedModelError) as raised:
        lower_keras(model, KerasExport())
    problems = raised.value.problems
    expected = {
        r"layer 'masked_ids' \(Embedding\): mask_zero=True": "mask_zero",
        r"layer 'not_equal(_\d+)?' \(NotEqual\): a keras.ops call": "the op computing mask_zero's mask",
        r"layer 'masked_pool' \(GlobalAveragePooling1D\): its input carries a mask": "masked average",
        r"layer 'recurrent' \(LSTM\): not supported": "unsupported layer",
        r"layer 'across' \(BatchNormalization\): axis=1; supported: -1": "BN axis",
        r"layer 'fancy' \(Dense\): activation 'gelu'": "activation",
        r"layer 'fancy' \(Dense\): kernel_regularizer=": "regularizer",
        r"layer 'doubling' \(Doubling\): a subclassed model": "nested subclassed model",
        r"loss categorical_crossentropy": "loss",
    }
    for pattern, what in expected.items():
        assert any(re.match(pattern, p) for p in problems), f"{what} not refused: {problems}"
    assert len(problems) == len(expected), problems
    assert str(raised.value).count("\n  - ") == len(expected)


def test_a_subclassed_model_is_refused_by_name() -> None:
    model = Doubling(name="doubling")
    model(np.zeros((1, 3), np.float32))
    with pytest.raises(UnsupportedModelError, match=r"a subclassed model \(Doubling\)"):
        lower_keras(model, KerasExport(loss="sparse_categorical_crossentropy"))


def test_mse_is_refused() -> None:
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(UnsupportedModelError, match="loss mean_squared_error"):
        lower_keras(model, KerasExport(loss=keras.losses.MeanSquaredError()))
