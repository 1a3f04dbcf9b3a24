"""Keras convolutions, pooling and zero padding, exported builtin-only, train through the artifact as in Keras.

Each parity test runs K steps through the artifact (``Trainer.train_step``) and ``model.train_on_batch`` on the
same batches and compares every weight within 1e-5. One model holds many layer configurations side by side
(each branch alone between the input and the head), so a few exports cover them all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf

from edge_runtime import Artifact, Trainer
from edge_runtime.manifest import OptimizerConfig
from model_export.convert import check_file
from model_export.errors import UnsupportedModelError
from model_export.keras_export import KerasExport, export_keras, lower_keras

L = keras.layers
STEPS = 4
BATCH = 6
TOLERANCE = 1e-5
OPTIMIZERS: dict[str, tuple[OptimizerConfig, Callable[[], Any]]] = {
    "sgd": (OptimizerConfig("sgd", 0.05), lambda: keras.optimizers.SGD(0.05)),
    "sgd-momentum": (OptimizerConfig("sgd", 0.05, momentum=0.9), lambda: keras.optimizers.SGD(0.05, momentum=0.9)),
    "adam": (OptimizerConfig("adam", 0.01), lambda: keras.optimizers.Adam(0.01)),
}


def _compiled(model: keras.Model, optimizer: str) -> keras.Model:
    model.compile(optimizer=OPTIMIZERS[optimizer][1](),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def _batches(shape: tuple[int, ...], classes: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(BATCH, *shape)).astype(np.float32), rng.integers(0, classes, BATCH).astype(np.int32))
            for _ in range(STEPS)]


def _export(model: keras.Model, folder: Path, optimizer: str) -> Trainer:
    export_keras(model, folder, KerasExport(batch_size=BATCH, optimizer=OPTIMIZERS[optimizer][0]))
    return Trainer(Artifact.load(folder))


def _train_both(model: keras.Model, trainer: Trainer, batches: list[tuple[np.ndarray, np.ndarray]]) -> None:
    """K steps on each side, then every trainable weight compared (the manifest lists them in graph order)."""
    for step, (x, y) in enumerate(batches):
        ours = trainer.train_step(x, y)
        theirs = float(np.asarray(model.train_on_batch(x, y)))
        assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6), f"loss differs at step {step}"
    variables = [v for layer in model.layers for v in layer.trainable_weights]
    names = trainer.manifest.weight_names
    assert len(names) == len(variables)
    weights = trainer.get_weights()
    for name, variable in zip(names, variables, strict=True):
        np.testing.assert_allclose(weights[name], np.asarray(variable), rtol=0, atol=TOLERANCE, err_msg=name)


def _combination(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((11, 10, 3)),
        L.Conv2D(6, 3, strides=2, padding="same", activation="relu"),
        L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="tanh"),
        L.SeparableConv2D(5, (2, 3)),
        L.MaxPooling2D(2, strides=1, padding="same"),
        L.AveragePooling2D(3, strides=2, padding="same"),
        L.ZeroPadding2D(((1, 0), (2, 1))),
        L.GlobalAveragePooling2D(),
        L.Dense(4),
    ], name="combination")


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_combination_trains_like_keras(optimizer: str, tmp_path: Path) -> None:
    model = _compiled(_combination(1), optimizer)
    trainer = _export(model, tmp_path / "combination", optimizer)
    _train_both(model, trainer, _batches((11, 10, 3), 4, seed=2))


def _branches() -> keras.Model:
    """One configuration per branch: each layer alone after the input, or after a trainable conv."""
    keras.utils.set_random_seed(3)
    inp = keras.Input((9, 8, 3))
    conv = L.Conv2D(6, 1, activation="relu")(inp)  # many channels: the slice path of the patches
    narrow = L.Conv2D(2, 3, padding="same", activation="tanh")(inp)  # few channels: the one-hot path
    branches = [
        L.Conv2D(4, (2, 3), strides=(1, 2), use_bias=False)(inp),
        L.Conv2D(3, 5, strides=3, padding="same", activation="relu6")(conv),
        L.Conv2D(2, 4, strides=2, padding="same")(narrow),
        L.DepthwiseConv2D(3, strides=2, padding="same", activation="sigmoid")(conv),
        L.DepthwiseConv2D((2, 2), depth_multiplier=3, use_bias=False)(narrow),
        L.SeparableConv2D(4, 3, strides=2, padding="same", depth_multiplier=2, activation="relu")(conv),
        L.MaxPooling2D(3, strides=2, padding="same")(conv),
        L.MaxPooling2D()(narrow),
        L.AveragePooling2D(3, strides=2, padding="same")(conv),
        L.AveragePooling2D((2, 3), strides=(1, 2))(narrow),
        L.GlobalAveragePooling2D()(conv),
        L.GlobalMaxPooling2D(keepdims=True)(conv),
        L.Conv2D(3, 3)(L.ZeroPadding2D(((1, 2), (0, 3)))(conv)),
    ]
    flat = L.Concatenate()([L.Flatten()(b) if len(b.shape) > 2 else b for b in branches])
    return keras.Model(inp, L.Dense(3)(flat), name="branches")


def test_each_layer_configuration_trains_like_keras(tmp_path: Path) -> None:
    model = _compiled(_branches(), "sgd-momentum")
    trainer = _export(model, tmp_path / "branches", "sgd-momentum")
    ops = check_file(tmp_path / "branches" / "model.tflite")  # raises on any Flex or custom op
    assert not ops & {"CONV_2D", "TRANSPOSE_CONV"}, "trainable kernels must be matrix products"
    x = _batches((9, 8, 3), 3, seed=4)[0][0]
    np.testing.assert_allclose(trainer.predict(x), model.predict(x, verbose=0), rtol=0, atol=1e-5)
    _train_both(model, trainer, _batches((9, 8, 3), 3, seed=5))
    x, y = _batches((9, 8, 3), 3, seed=6)[0]
    logits = model.predict(x, verbose=0)
    np.testing.assert_allclose(trainer.predict(x), logits, rtol=0, atol=1e-5)
    result = trainer.evaluate(x, y)
    assert result.loss == pytest.approx(float(model.evaluate(x, y, verbose=0)), rel=1e-5)
    assert result.accuracy == pytest.approx(float(np.mean(logits.argmax(axis=1) == y)))


def test_frozen_convolutions_between_trainable_layers(tmp_path: Path) -> None:
    """Frozen kernels are constants (CONV_2D, DEPTHWISE_CONV_2D); the gradient crosses them to the first conv."""
    keras.utils.set_random_seed(5)
    frozen = [L.Conv2D(6, 3, strides=2, padding="same", name="frozen_conv"),
              L.DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="tanh", name="frozen_depthwise"),
              L.SeparableConv2D(4, 2, name="frozen_separable")]
    model = keras.Sequential([keras.Input((10, 9, 3)), L.Conv2D(5, 3, padding="same", activation="relu"),
                              *frozen, L.MaxPooling2D(), L.Flatten(), L.Dense(3)])
    for layer in frozen:
        layer.trainable = False
    before = {v.path: np.array(v) for layer in frozen for v in layer.weights}
    model = _compiled(model, "adam")
    trainer = _export(model, tmp_path / "frozen", "adam")
    ops = check_file(tmp_path / "frozen" / "model.tflite")
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV"} <= ops
    assert not any(name.startswith("frozen") for name in trainer.manifest.weight_names)
    assert trainer.manifest.base_sha256 is not None
    _train_both(model, trainer, _batches((10, 9, 3), 3, seed=7))
    for layer in frozen:
        for v in layer.weights:
            assert np.array_equal(np.array(v), before[v.path]), v.path


def _lowered(*layers: Any, shape: tuple[int, ...]) -> Callable[[tf.Tensor], tf.Tensor]:
    """The lowered forward pass of a weightless model (no export): ``x -> outputs``."""
    model = keras.Sequential([keras.Input(shape), *layers, L.Flatten()])
    model.compile(loss="binary_crossentropy" if model.outputs[0].shape[-1] == 1 else "sparse_categorical_crossentropy")
    graph = lower_keras(model, KerasExport())
    return lambda x: graph.forward({}, x, True)


def _output_and_input_grad(forward: Callable[[tf.Tensor], tf.Tensor], image: np.ndarray) -> tuple[Any, Any]:
    x = tf.constant(image.reshape(1, *image.shape, 1).astype(np.float32))
    with tf.GradientTape() as tape:
        tape.watch(x)
        out = forward(x)
        total = tf.reduce_sum(out)
    return out.numpy(), tape.gradient(total, x).numpy()[0, :, :, 0]


def test_same_average_pooling_divides_by_the_pixels_inside_the_image() -> None:
    forward = _lowered(L.AveragePooling2D(2, padding="same"), shape=(5, 5, 1))
    out, grad = _output_and_input_grad(forward, np.arange(1, 26).reshape(5, 5))
    # Windows rows {0, 1}, {2, 3}, {4} (the padding is at the bottom and right), likewise columns.
    np.testing.assert_array_equal(out, [[4, 6, 7.5, 14, 16, 17.5, 21.5, 23.5, 25]])
    quarter, half = 0.25, 0.5
    expected = np.full((5, 5), quarter)
    expected[4, :], expected[:, 4], expected[4, 4] = half, half, 1.0
    np.testing.assert_array_equal(grad, expected)


def test_max_pooling_routes_the_gradient_to_the_first_maximum() -> None:
    forward = _lowered(L.MaxPooling2D(2, strides=1), shape=(3, 3, 1))
    image = np.array([[1, 1, 0], [1, 1, 2], [3, 0, 2]])
    out, grad = _output_and_input_grad(forward, image)
    np.testing.assert_array_equal(out, [[1, 2, 3, 2]])
    # Ties go to the first maximum in row-major order, as TensorFlow's MaxPoolGrad does.
    np.testing.assert_array_equal(grad, [[1, 0, 0], [0, 0, 2], [1, 0, 0]])


def test_global_max_pooling_shares_the_gradient_between_ties() -> None:
    forward = _lowered(L.GlobalMaxPooling2D(), L.Reshape((1, 1, 1)), shape=(2, 2, 1))
    out, grad = _output_and_input_grad(forward, np.array([[2, 0], [2, 1]]))
    np.testing.assert_array_equal(out, [[2]])
    np.testing.assert_array_equal(grad, [[0.5, 0], [0.5, 0]])


REFUSED = {
    "dilated": "dilation_rate=(2, 2); supported: (1, 1)",
    "grouped": "groups=2; supported: 1",
    "nchw": "data_format='channels_first'; supported: 'channels_last'",
    "gelu": "activation 'gelu'; supported:",
    "regularized": "depthwise_regularizer=",
    "uneven": "strides=(1, 2); supported: the same stride both ways",
    "constrained": "kernel_constraint=",
    "max_nchw": "data_format='channels_first'; supported: 'channels_last'",
    "avg_nchw": "data_format='channels_first'; supported: 'channels_last'",
    "gap_nchw": "data_format='channels_first'; supported: 'channels_last'",
    "gmp_nchw": "data_format='channels_first'; supported: 'channels_last'",
    "pad_nchw": "data_format='channels_first'; supported: 'channels_last'",
}


def test_unsupported_configurations_are_refused_by_layer() -> None:
    inp = keras.Input((8, 8, 4))
    first = "channels_first"
    outs = [
        L.Conv2D(4, 3, dilation_rate=2, name="dilated")(inp),
        L.Conv2D(4, 3, groups=2, name="grouped")(inp),
        L.Conv2D(4, 3, data_format=first, name="nchw")(inp),
        L.DepthwiseConv2D(3, activation="gelu", name="gelu")(inp),
        L.SeparableConv2D(4, 3, depthwise_regularizer="l2", name="regularized")(inp),
        L.SeparableConv2D(4, 3, strides=(1, 2), name="uneven")(inp),
        L.Conv2D(4, 3, kernel_constraint="non_neg", name="constrained")(inp),
        L.MaxPooling2D(data_format=first, name="max_nchw")(inp),
        L.AveragePooling2D(2, data_format=first, name="avg_nchw")(inp),
        L.GlobalAveragePooling2D(data_format=first, name="gap_nchw")(inp),
        L.GlobalMaxPooling2D(data_format=first, name="gmp_nchw")(inp),
        L.ZeroPadding2D(1, data_format=first, name="pad_nchw")(inp),
    ]
    model = keras.Model(inp, L.Dense(2)(L.Concatenate()([L.Flatten()(t) for t in outs])))
    model.compile(loss="sparse_categorical_crossentropy")
    with pytest.raises(UnsupportedModelError) as refused:
        lower_keras(model, KerasExport())
    problems = refused.value.problems
    assert len(problems) == len(REFUSED)
    for name, reason in REFUSED.items():
        assert any(p.startswith(f"layer {name!r} (") and reason in p for p in problems), (name, problems)
