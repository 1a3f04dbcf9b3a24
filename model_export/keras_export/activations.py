"""Keras activations written so that their gradients are TFLite builtins.

TensorFlow's own gradients of relu, sigmoid and tanh are ``ReluGrad``, ``SigmoidGrad`` and
``TanhGrad``, none of which is a builtin; each activation here carries its gradient as products and
comparisons instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from model_export.layers import relu
from model_export.losses import with_logits

Tensor = Any


def relu6(x: Tensor) -> Tensor:
    """``min(max(x, 0), 6)`` in the form the converter fuses into the op before it, where that is safe.

    The converter fuses a min/max relu6 into the op that produced ``x`` (CONV_2D, DEPTHWISE_CONV_2D, ADD,
    ...: a frozen base's convolution, batch normalization and relu6 become one fast op). Right after a bare
    matrix product it fuses it too, and then drops it (BATCH_MATMUL has no fused activation), silently
    leaving ``x`` unclipped; there a form it cannot fuse is used instead.
    """
    return _relu6_unfused(x) if _bare_matmul(x) else _relu6_fused(x)


def _relu6_with(clip: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """relu6 whose forward value is ``clip(x, inside)`` and whose gradient is ``upstream * inside``."""

    @tf.custom_gradient
    def activation(x: Tensor) -> tuple[Tensor, Any]:
        inside = tf.cast(tf.logical_and(x > 0, x < 6), x.dtype)

        def grad(upstream: Tensor) -> Tensor:
            return upstream * inside

        return clip(x, inside), grad

    return activation


_relu6_fused = _relu6_with(lambda x, inside: tf.minimum(tf.maximum(x, 0.0), 6.0))
_relu6_unfused = _relu6_with(lambda x, inside: x * inside + 6.0 * tf.cast(x >= 6, x.dtype))


_PASS_THROUGH = ("Identity", "IdentityN", "Reshape")
_MATMULS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")


def _bare_matmul(x: Tensor) -> bool:
    """Whether ``x`` is a matrix product, seen through reshapes and identities (custom gradients add those)."""
    op = getattr(x, "op", None)
    while op is not None and op.type in _PASS_THROUGH and op.inputs:
        op = op.inputs[0].op
    return op is not None and op.type in _MATMULS


def leaky_relu(slope: float) -> Callable[[Tensor], Tensor]:
    @tf.custom_gradient
    def activation(x: Tensor) -> tuple[Tensor, Any]:
        factor = tf.where(x > 0, tf.ones_like(x), tf.fill(tf.shape(x), tf.constant(slope, x.dtype)))

        def grad(upstream: Tensor) -> Tensor:
            return upstream * factor

        return x * factor, grad

    return activation


def sigmoid(x: Tensor) -> Tensor:
    """The logistic function, its output marked with ``x`` for a cross-entropy to use (``losses.with_logits``)."""
    return with_logits(_sigmoid(x), x)


@tf.custom_gradient
def _sigmoid(x: Tensor) -> tuple[Tensor, Any]:
    y = tf.sigmoid(x)

    def grad(upstream: Tensor) -> Tensor:
        return upstream * y * (1.0 - y)

    return y, grad


@tf.custom_gradient
def tanh(x: Tensor) -> tuple[Tensor, Any]:
    y = tf.tanh(x)

    def grad(upstream: Tensor) -> Tensor:
        return upstream * (1.0 - y * y)

    return y, grad


def softmax(axis: int = -1) -> Callable[[Tensor], Tensor]:
    """Softmax over ``axis``, its output marked with ``x`` for a cross-entropy to use (``losses.with_logits``)."""

    @tf.custom_gradient
    def probabilities(x: Tensor) -> tuple[Tensor, Any]:
        shifted = tf.exp(x - tf.reduce_max(x, axis=axis, keepdims=True))
        y = shifted / tf.reduce_sum(shifted, axis=axis, keepdims=True)

        def grad(upstream: Tensor) -> Tensor:
            return y * (upstream - tf.reduce_sum(upstream * y, axis=axis, keepdims=True))

        return y, grad

    return lambda x: with_logits(probabilities(x), x)


def hard_swish(x: Tensor) -> Tensor:
    """Keras' ``hard_silu``: ``x * relu6(x + 3) / 6``."""
    return x * relu6(x + 3.0) * (1.0 / 6.0)


def linear(x: Tensor) -> Tensor:
    return x


# Keras' serialized activation name -> its lowering.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": linear, "relu": relu, "relu6": relu6, "leaky_relu": leaky_relu(0.2), "sigmoid": sigmoid,
    "tanh": tanh, "softmax": softmax(), "hard_silu": hard_swish, "hard_swish": hard_swish,
}


def activation_name(function: Any) -> str:
    """Keras' name for an activation function (a custom one gets its Python name)."""
    name = keras.activations.serialize(function)
    return name if isinstance(name, str) else getattr(function, "__name__", repr(function))


def activation_problems(layer: Any) -> list[str]:
    """The layer's ``activation``, if it has one that is not supported."""
    function = getattr(layer, "activation", None)
    if function is None:
        return []
    name = activation_name(function)
    if name in ACTIVATIONS:
        return []
    return [f"activation {name!r}; supported: {', '.join(sorted(ACTIVATIONS))}"]


def activate(layer: Any, x: Tensor) -> Tensor:
    """Apply the layer's own ``activation`` (its checked name) to ``x``."""
    return ACTIVATIONS[activation_name(layer.activation)](x)
