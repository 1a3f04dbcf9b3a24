"""Lowerings of BatchNormalization, and of Embedding with GlobalAveragePooling1D (a bag-of-embeddings text model).

BatchNormalization always normalizes with its moving statistics, in ``train`` too, and those
statistics are frozen: they become constants of the graph (fingerprinted by ``base_sha256``), while
gamma and beta train like any other weight. This is a choice, not a limitation of TFLite:

- on a device, batches are small and non-IID (one user's data), so batch statistics are noisy and
  differ from the statistics inference will see; normalizing with them would train one model and
  serve another;
- averaging moving statistics across devices is ill-defined: the mean of per-device variances is not
  the variance of the union, and a device's statistics say something about its private data;
- in transfer learning the base's statistics come from central pre-training on far more data than
  any device holds, and are the part least worth re-estimating on a device.

So the artifact's ``train`` equals a Keras step taken with ``model(x, training=False)`` under a
gradient tape, which ``model.fit`` cannot express (it would normalize with batch statistics and
update the moving ones).

Embedding ids arrive as float32 (an artifact's ``x`` is float32) and are cast to int32 here; ids must
lie in ``[0, input_dim)``, and a float32 holds every integer below 2**24 exactly. The lookup is a
GATHER; the gradient TensorFlow would give it is an ``IndexedSlices`` that the in-graph optimizers
would densify implicitly, so the lowering states the dense gradient itself as an
UNSORTED_SEGMENT_SUM of the upstream rows by id (a builtin). It needs ``input_dim * output_dim``
floats, as the dense optimizer step does anyway; the other builtin route, a one-hot matrix times the
table, would also hold a ``batch * length * input_dim`` one-hot and multiply by it in both passes.
Masking is refused (``mask_zero=True``, and a GlobalAveragePooling1D that is handed a mask): the
lowering does not carry Keras's masks, so a masked average would silently count the padding.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from model_export.keras_export.registry import Params, config_problems, lowers, weight_problems

Tensor = Any


def _batch_norm_problems(layer: Any) -> list[str]:
    found = weight_problems(layer)
    rank = getattr(getattr(layer, "input_spec", None), "ndim", None)
    if layer.axis != -1 and (rank is None or layer.axis != rank - 1):
        found.append(f"axis={layer.axis}; supported: -1 (channels last)")
    return found


@lowers("BatchNormalization", problems=_batch_norm_problems)
def batch_normalization(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    """``x * inv + (beta - mean * inv)`` with ``inv = gamma / sqrt(moving_variance + epsilon)``, as
    ``tf.nn.batch_normalization`` computes it; the moving statistics are always constants."""
    mean = params(layer.moving_mean)
    inv = tf.math.rsqrt(params(layer.moving_variance) + layer.epsilon)
    if layer.scale:
        inv = inv * params(layer.gamma)
    shift = params(layer.beta) - mean * inv if layer.center else -mean * inv
    return x * inv + shift


def _embedding_problems(layer: Any) -> list[str]:
    return config_problems(layer, mask_zero=(False,)) + weight_problems(layer)


@lowers("Embedding", problems=_embedding_problems)
def embedding(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    return _lookup(tf.cast(x, tf.int32), int(layer.input_dim))(params(layer.embeddings))


def _lookup(ids: Tensor, vocabulary: int) -> Any:
    """Rows ``ids`` of a table (GATHER) whose gradient is the UNSORTED_SEGMENT_SUM of the upstream rows by id."""

    @tf.custom_gradient
    def look_up(table: Tensor) -> tuple[Tensor, Any]:
        def grad(upstream: Tensor) -> Tensor:
            rows = tf.reshape(upstream, [-1, table.shape[-1]])
            return tf.math.unsorted_segment_sum(rows, tf.reshape(ids, [-1]), vocabulary)

        return tf.gather(table, ids), grad

    return look_up


def _handed_a_mask(layer: Any) -> bool:
    return any(node.arguments.kwargs.get("mask") is not None
               for node in getattr(layer, "_inbound_nodes", []) if getattr(node, "arguments", None) is not None)


def _global_average_pooling_1d_problems(layer: Any) -> list[str]:
    if _handed_a_mask(layer):
        return ["its input carries a mask (from mask_zero=True or a Masking layer); supported: unmasked "
                "input (the lowering would average over the padding)"]
    return []


@lowers("GlobalAveragePooling1D", problems=_global_average_pooling_1d_problems)
def global_average_pooling_1d(layer: Any, params: Params, x: Tensor, training: bool) -> Tensor:
    steps = 1 if layer.data_format == "channels_last" else 2
    return tf.reduce_mean(x, axis=steps, keepdims=bool(layer.keepdims))
