"""Lowerings of Keras' core layers: dense, activations, shape changes, dropout, merges, preprocessing."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tensorflow as tf

from model_export.keras_export.activations import (
    activate,
    activation_problems,
    leaky_relu,
    relu6,
    softmax,
)
from model_export.keras_export.registry import Params, config_problems, lowers, weight_problems
from model_export.layers import relu

Tensor = Any


def _dense_problems(layer: Any) -> list[str]:
    return activation_problems(layer) + weight_problems(layer)


@lowers("Dense", problems=_dense_problems)
def dense(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    kernel = params(layer.kernel)
    flat = tf.reshape(x, [-1, kernel.shape[0]]) if len(x.shape) > 2 else x
    y = tf.matmul(flat, kernel)
    if layer.use_bias:
        y = y + params(layer.bias)
    if len(x.shape) > 2:
        y = tf.reshape(y, [-1, *x.shape[1:-1], kernel.shape[1]])
    return activate(layer, y)


@lowers("Activation", problems=activation_problems)
def activation(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    return activate(layer, x)


def _relu_problems(layer: Any) -> list[str]:
    config = layer.get_config()
    if config.get("threshold", 0.0) != 0.0:
        return [f"threshold={config['threshold']}; supported: 0"]
    if config.get("max_value") not in (None, 6.0):
        return [f"max_value={config['max_value']}; supported: None or 6"]
    if config.get("max_value") == 6.0 and config.get("negative_slope", 0.0) != 0.0:
        return ["max_value=6 with a negative_slope; supported: one or the other"]
    return []


@lowers("ReLU", problems=_relu_problems)
def relu_layer(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    config = layer.get_config()
    if config.get("max_value") == 6.0:
        return relu6(x)
    slope = config.get("negative_slope", 0.0)
    return leaky_relu(slope)(x) if slope else relu(x)


@lowers("LeakyReLU")
def leaky_relu_layer(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    return leaky_relu(float(layer.get_config()["negative_slope"]))(x)


@lowers("Softmax", problems=lambda layer: config_problems(layer, axis=(-1,)))
def softmax_layer(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    return softmax(-1)(x)


@lowers("Flatten", problems=lambda layer: config_problems(layer, data_format=("channels_last",)))
def flatten(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    return tf.reshape(x, [-1, math.prod(x.shape[1:])])


@lowers("Reshape")
def reshape(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    target = [int(d) for d in layer.target_shape]
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = math.prod(x.shape[1:]) // known
    return tf.reshape(x, [-1, *target])


@lowers("Dropout", problems=lambda layer: config_problems(layer, noise_shape=(None,)))
def dropout(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    """Inverted dropout in ``train`` (RANDOM_UNIFORM is a builtin); the identity in ``evaluate`` and ``infer``."""
    if not training or layer.rate == 0:
        return x
    # Seeds 0 and 0 make TFLite's RANDOM_UNIFORM seed itself afresh in every interpreter, so devices draw
    # different masks; tf.random.uniform would bake in seeds derived from a global seed set at export time.
    noise = tf.raw_ops.RandomUniform(shape=tf.shape(x), dtype=x.dtype, seed=0, seed2=0)
    keep = tf.cast(noise >= layer.rate, x.dtype)
    return x * keep * (1.0 / (1.0 - layer.rate))


def _add_problems(layer: Any) -> list[str]:
    shapes = sorted({tuple(t.shape[1:]) for t in layer.input}) if isinstance(layer.input, list) else []
    if len(shapes) > 1:
        return [f"inputs of shapes {', '.join(map(str, shapes))}; supported: inputs of one shape (no broadcasting)"]
    return []


@lowers("Add", problems=_add_problems)
def add(layer: Any, params: Params, inputs: list[Tensor], training: bool) -> Tensor:
    return tf.add_n(list(inputs))


@lowers("Concatenate")
def concatenate(layer: Any, params: Params, inputs: list[Tensor], training: bool) -> Tensor:
    rank = len(inputs[0].shape)
    axis = layer.axis % rank
    return _concat(axis, [int(t.shape[axis]) for t in inputs])(*inputs)


def _concat(axis: int, sizes: list[int]) -> Any:
    """Concatenation whose gradient is a SPLIT_V (TensorFlow's uses ConcatOffset, which is not a builtin)."""

    @tf.custom_gradient
    def join(*parts: Tensor) -> tuple[Tensor, Any]:
        def grad(upstream: Tensor) -> list[Tensor]:
            return list(tf.split(upstream, sizes, axis=axis))

        return tf.concat(list(parts), axis=axis), grad

    return join


@lowers("Rescaling")
def rescaling(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    scale = np.asarray(layer.scale, np.float32)
    offset = np.asarray(layer.offset, np.float32)
    return x * tf.constant(scale) + tf.constant(offset)


def _normalization_problems(layer: Any) -> list[str]:
    found = config_problems(layer, invert=(False,))
    if not layer.built or getattr(layer, "mean", None) is None:
        found.append("not adapted (no mean and variance yet); supported: a Normalization layer after adapt() "
                     "or built with mean= and variance=")
    return found


@lowers("Normalization", problems=_normalization_problems)
def normalization(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    """``(x - mean) / max(sqrt(variance), 1e-7)``, with the adapted statistics as constants."""
    mean = np.asarray(layer.mean, np.float32)
    std = np.maximum(np.sqrt(np.asarray(layer.variance, np.float32)), np.float32(1e-7))
    return (x - tf.constant(mean)) / tf.constant(std)

