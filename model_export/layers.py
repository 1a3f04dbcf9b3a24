"""Model building blocks whose forward and backward passes convert to TFLite builtins.

TensorFlow's own gradients of several common ops are not TFLite builtins
(``ReluGrad``, ``Conv2DBackpropFilter``, ``SparseSoftmaxCrossEntropyWithLogits``,
``MaxPoolGrad``). Each block here is written so that its forward pass and
its gradient use only ops that do convert: relu carries a custom gradient,
the 3x3 convolution is a patch matrix times the kernel (im2col) with a custom
gradient made of matrix products, pooling is a reshape and a mean, and
cross-entropy is log-softmax times a one-hot. Slices are ``tf.slice``:
Python slicing would give ``StridedSlice``, whose gradient is not a builtin.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from model_export.spec import CONV_KERNEL, POOL, ModelSpec, pools_after

Tensor = Any  # tf.Tensor; TensorFlow ships no usable static types.
FEW_CHANNELS = 4


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
    """3x3 VALID convolution, stride 1, computed as patches times a matrix (im2col).

    ``kernel`` has the Keras layout ``(3, 3, in, out)``. TFLite's CONV_2D and
    TRANSPOSE_CONV take a constant filter to be fast (with a filter read from a
    variable they fall back to slow reference-grade kernels), while matrix
    products with two variable operands run in XNNPACK; so the forward pass and
    both gradients are matrix products over patch matrices.
    """
    return _conv3x3(x, kernel) + bias


@tf.custom_gradient
def _conv3x3(x: Tensor, kernel: Tensor) -> tuple[Tensor, Any]:
    channels, filters = kernel.shape[2], kernel.shape[3]
    out_h, out_w = x.shape[1] - CONV_KERNEL + 1, x.shape[2] - CONV_KERNEL + 1
    patches = _patches(x)
    out = tf.reshape(tf.matmul(patches, tf.reshape(kernel, [-1, filters])), [-1, out_h, out_w, filters])

    def grad(upstream: Tensor) -> tuple[Tensor, Tensor]:
        flat = tf.reshape(upstream, [-1, filters])
        d_kernel = tf.reshape(tf.matmul(patches, flat, transpose_a=True), kernel.shape)
        # The input gradient is a "full" convolution of the upstream gradient
        # with the kernel rotated by 180 degrees and its channel axes swapped.
        pad = CONV_KERNEL - 1
        padded = tf.pad(upstream, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        # Reversing the 9 flattened taps is the 180-degree rotation; a single-axis reverse
        # because tflite-runtime 2.14's REVERSE_V2 mishandles several axes.
        taps = tf.reverse(tf.reshape(kernel, [-1, channels, filters]), axis=[0])
        rotated = tf.reshape(tf.transpose(taps, [0, 2, 1]), [-1, channels])
        d_x = tf.reshape(tf.matmul(_patches(padded), rotated), [-1, x.shape[1], x.shape[2], channels])
        return d_x, d_kernel

    return out, grad


def _patches(x: Tensor) -> Tensor:
    """The 3x3 patches of ``x`` as rows ``(batch * out_h * out_w, 9 * channels)``, ordered (row, column, channel).

    With few channels a depthwise convolution by a constant one-hot filter
    extracts them fastest; with more, nine slices and one concat do.
    """
    channels = x.shape[3]
    taps = CONV_KERNEL * CONV_KERNEL
    out_h, out_w = x.shape[1] - CONV_KERNEL + 1, x.shape[2] - CONV_KERNEL + 1
    if channels < FEW_CHANNELS:
        one_hot = np.zeros((CONV_KERNEL, CONV_KERNEL, channels, taps), np.float32)
        for i in range(CONV_KERNEL):
            for j in range(CONV_KERNEL):
                one_hot[i, j, :, i * CONV_KERNEL + j] = 1.0
        # Depthwise output channels are ordered (channel, tap): reorder to (tap, channel).
        stacked = tf.nn.depthwise_conv2d(x, tf.constant(one_hot), [1, 1, 1, 1], "VALID")
        if channels == 1:
            return tf.reshape(stacked, [-1, taps])
        stacked = tf.reshape(stacked, [-1, channels, taps])
        return tf.reshape(tf.transpose(stacked, [0, 2, 1]), [-1, taps * channels])
    slices = [tf.slice(x, [0, i, j, 0], [-1, out_h, out_w, -1])
              for i in range(CONV_KERNEL) for j in range(CONV_KERNEL)]
    return tf.reshape(tf.concat(slices, axis=-1), [-1, taps * channels])


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


def _norm_shape(spec: ModelSpec) -> list[int]:
    assert spec.normalization is not None
    if len(spec.normalization.mean) == 1:
        return [1]
    return [1, *spec.input_shape]
