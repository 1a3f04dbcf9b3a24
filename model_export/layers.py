"""Model building blocks whose forward and backward passes convert to TFLite builtins.

TensorFlow's own gradients of several common ops are not TFLite builtins
(``ReluGrad``, ``Conv2DBackpropFilter``, ``SparseSoftmaxCrossEntropyWithLogits``,
``MaxPoolGrad``). Each block here is written so that its forward pass and
its gradient use only ops that do convert: relu carries a custom gradient,
the 3x3 convolution is nine ``tf.slice`` calls (whose gradient is a pad;
Python slicing would give ``StridedSliceGrad``), a concat and one matmul (im2col), pooling
is a reshape and a mean, and cross-entropy is log-softmax times a one-hot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from model_export.spec import CONV_KERNEL, POOL, ModelSpec, pools_after

Tensor = Any  # tf.Tensor; TensorFlow ships no usable static types.


@tf.custom_gradient
def relu(x: Tensor) -> tuple[Tensor, Any]:
    """Rectifier whose gradient is ``upstream * (x > 0)``, avoiding ``ReluGrad``."""
    positive = tf.cast(x > 0, x.dtype)

    def grad(upstream: Tensor) -> Tensor:
        return upstream * positive

    return x * positive, grad


def dense(x: Tensor, kernel: Tensor, bias: Tensor) -> Tensor:
    return tf.matmul(x, kernel) + bias


def conv3x3(x: Tensor, kernel: Tensor, bias: Tensor) -> Tensor:
    """3x3 VALID convolution, stride 1, as im2col: nine slices, a concat, a matmul.

    ``kernel`` has the Keras layout ``(3, 3, in, out)``; reshaping it to
    ``(9 * in, out)`` orders rows by (row, column, channel), which is the order
    the slices are concatenated in.
    """
    height, width, channels = x.shape[1], x.shape[2], x.shape[3]
    out_h, out_w = height - CONV_KERNEL + 1, width - CONV_KERNEL + 1
    patches = tf.concat(
        [tf.slice(x, [0, i, j, 0], [-1, out_h, out_w, -1]) for i in range(CONV_KERNEL) for j in range(CONV_KERNEL)],
        axis=-1,
    )
    filters = kernel.shape[-1]
    flat = tf.reshape(patches, [-1, CONV_KERNEL * CONV_KERNEL * channels])
    out = tf.matmul(flat, tf.reshape(kernel, [-1, filters])) + bias
    return tf.reshape(out, [-1, out_h, out_w, filters])


def avg_pool2(x: Tensor) -> Tensor:
    """2x2 average pool, stride 2, VALID (an odd last row or column is dropped)."""
    height, width, channels = x.shape[1] // POOL, x.shape[2] // POOL, x.shape[3]
    x = tf.slice(x, [0, 0, 0, 0], [-1, height * POOL, width * POOL, -1])
    x = tf.reshape(x, [-1, height, POOL, width, POOL, channels])
    return tf.reduce_mean(x, axis=[2, 4])


def forward(spec: ModelSpec, weights: Mapping[str, Tensor], x: Tensor) -> Tensor:
    """Logits of ``spec``'s model for a batch ``x`` of raw (un-normalized) inputs."""
    if spec.normalization is not None:
        mean = tf.reshape(tf.constant(spec.normalization.mean, tf.float32), _norm_shape(spec))
        std = tf.reshape(tf.constant(spec.normalization.std, tf.float32), _norm_shape(spec))
        x = (x - mean) / std
    if spec.family == "cnn":
        for block, _ in enumerate(spec.filters):
            x = relu(conv3x3(x, weights[f"conv_{block}_kernel"], weights[f"conv_{block}_bias"]))
            if pools_after(x.shape[1], x.shape[2]):
                x = avg_pool2(x)
    x = tf.reshape(x, [-1, x.shape[1:].num_elements()])
    last = len(spec.hidden)
    for layer in range(last + 1):
        x = dense(x, weights[f"dense_{layer}_kernel"], weights[f"dense_{layer}_bias"])
        if layer < last:
            x = relu(x)
    return x


def cross_entropy(logits: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-example cross-entropy as ``-sum(one_hot * log_softmax)``."""
    log_probs = logits - tf.reduce_logsumexp(logits, axis=-1, keepdims=True)
    return -tf.reduce_sum(tf.one_hot(labels, num_classes, dtype=logits.dtype) * log_probs, axis=-1)


def _norm_shape(spec: ModelSpec) -> list[int]:
    assert spec.normalization is not None
    if len(spec.normalization.mean) == 1:
        return [1]
    return [1, *spec.input_shape]
