"""The same model as a plain Keras model: the reference for parity tests and benchmarks.

It is written with stock Keras layers, losses and optimizers, independently
of the builtin-only blocks in ``layers.py``, so that agreeing with it checks
the custom gradients, the im2col convolution and the in-graph optimizers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from model_export.spec import ModelSpec, pools_after, weight_specs


class _Standardize(keras.layers.Layer):
    """``(x - mean) / std`` with constants, matching the artifact's normalization."""

    def __init__(self, mean: np.ndarray, std: np.ndarray, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mean, self.std = mean, std

    def call(self, x: Any) -> Any:
        return (x - self.mean) / self.std


def keras_model(spec: ModelSpec, weights: Mapping[str, np.ndarray]) -> keras.Model:
    """A compiled Keras model equivalent to ``spec``, starting from ``weights``."""
    inputs = keras.Input(shape=spec.input_shape, batch_size=None)
    x = inputs
    if spec.normalization is not None:
        shape = (1,) if len(spec.normalization.mean) == 1 else spec.input_shape
        x = _Standardize(np.reshape(np.array(spec.normalization.mean, np.float32), shape),
                         np.reshape(np.array(spec.normalization.std, np.float32), shape))(x)
    if spec.family == "cnn":
        for out in spec.filters:
            x = keras.layers.Conv2D(out, 3, padding="valid", activation="relu")(x)
            if pools_after(x.shape[1], x.shape[2]):
                x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    for units in spec.hidden:
        x = keras.layers.Dense(units, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(spec.num_classes)(x))
    model.set_weights([weights[w.name] for w in weight_specs(spec)])
    model.compile(optimizer=_optimizer(spec),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def keras_weights(spec: ModelSpec, model: keras.Model) -> dict[str, np.ndarray]:
    """The Keras model's weights under the artifact's names."""
    return {w.name: np.asarray(v) for w, v in zip(weight_specs(spec), model.get_weights(), strict=True)}


def _optimizer(spec: ModelSpec) -> keras.optimizers.Optimizer:
    cfg = spec.optimizer
    if cfg.name == "adam":
        return keras.optimizers.Adam(cfg.learning_rate, beta_1=cfg.beta_1, beta_2=cfg.beta_2, epsilon=cfg.epsilon)
    return keras.optimizers.SGD(cfg.learning_rate, momentum=cfg.momentum)
