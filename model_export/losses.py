"""Per-example losses and hits written with ops whose gradients are TFLite builtins.

Each mirrors what Keras 3 computes for the same loss, so the parity tests can hold the artifact
to Keras's ``train_on_batch``: probabilities are clipped to ``[1e-7, 1 - 1e-7]`` before the log, as
Keras does. And as Keras's TensorFlow backend does, a loss "from probabilities" of an output that a
softmax or sigmoid produced is computed from the logits under it (``with_logits``): the clip would
otherwise leave a confidently wrong prediction (probability below 1e-7) with no gradient at all.
"""

from __future__ import annotations

import contextlib
from typing import Any

import tensorflow as tf

from model_export.graph_model import LOSSES, Loss

Tensor = Any
EPSILON = 1e-7
_LOGITS = "_edgefl_logits"
__all__ = ["LOSSES", "binary", "sparse_categorical", "with_logits"]


def with_logits(probabilities: Tensor, logits: Tensor) -> Tensor:
    """Mark a softmax's or sigmoid's output with its input, for a loss from probabilities to use instead."""
    with contextlib.suppress(AttributeError):  # an eager tensor takes no attributes; exports are traced graphs
        setattr(probabilities, _LOGITS, logits)
    return probabilities


def _logits(outputs: Tensor, from_logits: bool) -> Tensor | None:
    return outputs if from_logits else getattr(outputs, _LOGITS, None)


def sparse_categorical(num_classes: int, from_logits: bool) -> Loss:
    """Cross-entropy of integer labels ``y`` against ``num_classes`` logits (or probabilities)."""

    def per_example(outputs: Tensor, y: Tensor) -> Tensor:
        logits = _logits(outputs, from_logits)
        if logits is not None:
            log_probs = logits - tf.reduce_logsumexp(logits, axis=-1, keepdims=True)
        else:
            probs = outputs / tf.reduce_sum(outputs, axis=-1, keepdims=True)
            log_probs = tf.math.log(tf.clip_by_value(probs, EPSILON, 1.0 - EPSILON))
        return -tf.reduce_sum(tf.one_hot(y, num_classes, dtype=outputs.dtype) * log_probs, axis=-1)

    def hits(outputs: Tensor, y: Tensor) -> Tensor:
        return tf.cast(tf.equal(tf.cast(tf.argmax(outputs, axis=-1), tf.int32), y), tf.float32)

    name = "sparse_categorical_crossentropy" + ("" if from_logits else "_from_probabilities")
    return Loss(name, per_example, hits)


def binary(from_logits: bool) -> Loss:
    """Cross-entropy of 0/1 labels ``y`` against one output unit: a logit, or a probability."""

    def per_example(outputs: Tensor, y: Tensor) -> Tensor:
        logits = _logits(outputs, from_logits)
        target = tf.cast(y, outputs.dtype)
        if logits is not None:
            z = tf.reshape(logits, [-1])
            # max(z, 0) - z*y + log(1 + exp(-|z|)): stable for any z.
            # relu(z) written as z * (z >= 0): a bare max(z, 0) after a bias-free matmul is dropped by the
            # converter (see activations.relu6); >= gives z = 0 (a row whose hidden units are all off) the
            # gradient TensorFlow's sigmoid_cross_entropy_with_logits gives it.
            return z * tf.cast(z >= 0, z.dtype) - z * target + tf.math.log(1.0 + tf.exp(-tf.maximum(z, -z)))
        p = tf.clip_by_value(tf.reshape(outputs, [-1]), EPSILON, 1.0 - EPSILON)
        return -(target * tf.math.log(p) + (1.0 - target) * tf.math.log(1.0 - p))

    def hits(outputs: Tensor, y: Tensor) -> Tensor:
        threshold = 0.0 if from_logits else 0.5
        predicted = tf.cast(tf.reshape(outputs, [-1]) > threshold, tf.int32)
        return tf.cast(tf.equal(predicted, y), tf.float32)

    return Loss("binary_crossentropy" + ("" if from_logits else "_from_probabilities"), per_example, hits)
