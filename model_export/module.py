"""The TensorFlow module whose signatures become the artifact's signatures.

Signatures (names are part of the artifact format, see docs/ARTIFACT.md):

- ``train(x, y, mask, lr) -> loss``: one optimizer step on a batch of exactly
  ``batch_size`` rows. ``mask`` is 1.0 for real rows and 0.0 for padding, so a
  short last batch trains on exactly its real rows; ``loss`` is their mean.
- ``evaluate(x, y) -> loss_sum, correct``: any number of rows.
- ``infer(x) -> logits``: any number of rows.
- ``get_weights(unused) -> {name: tensor}``: ``unused`` is a float32 scalar that
  is ignored; it exists because Java's ``runSignature`` refuses an empty input map.
- ``set_weights({name: tensor}) -> ok``: also resets the optimizer state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from edge_runtime.manifest import REQUIRED_SIGNATURES
from model_export.layers import cross_entropy, forward
from model_export.optimizers import make_optimizer
from model_export.spec import ModelSpec, weight_specs


class TrainableModule(tf.Module):
    def __init__(self, spec: ModelSpec, initial: Mapping[str, np.ndarray]) -> None:
        super().__init__(name=spec.name.replace(".", "_").replace("-", "_"))
        self.spec = spec
        self.weight_specs = weight_specs(spec)
        self.weights = [tf.Variable(initial[w.name], dtype=tf.float32, name=w.name)
                        for w in self.weight_specs]
        self.optimizer = make_optimizer(spec.optimizer, self.weights)

    def _named(self) -> dict[str, tf.Variable]:
        return {w.name: v for w, v in zip(self.weight_specs, self.weights, strict=True)}

    def signatures(self) -> dict[str, Any]:
        """Concrete functions keyed by signature name, ready for ``tf.saved_model.save``."""
        spec = self.spec
        batch = spec.batch_size
        x_train = tf.TensorSpec([batch, *spec.input_shape], tf.float32, name="x")
        x_any = tf.TensorSpec([None, *spec.input_shape], tf.float32, name="x")

        @tf.function(input_signature=[x_train, tf.TensorSpec([batch], tf.int32, name="y"),
                                      tf.TensorSpec([batch], tf.float32, name="mask"),
                                      tf.TensorSpec([], tf.float32, name="lr")])
        def train(x: Any, y: Any, mask: Any, lr: Any) -> dict[str, Any]:
            with tf.GradientTape() as tape:
                per_example = cross_entropy(forward(spec, self._named(), x), y, spec.num_classes)
                loss = tf.reduce_sum(per_example * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
            grads = tape.gradient(loss, self.weights)
            self.optimizer.apply(self.weights, grads, lr)
            return {"loss": loss}

        @tf.function(input_signature=[x_any, tf.TensorSpec([None], tf.int32, name="y")])
        def evaluate(x: Any, y: Any) -> dict[str, Any]:
            logits = forward(spec, self._named(), x)
            loss_sum = tf.reduce_sum(cross_entropy(logits, y, spec.num_classes))
            hits = tf.cast(tf.equal(tf.cast(tf.argmax(logits, axis=-1), tf.int32), y), tf.float32)
            return {"loss_sum": loss_sum, "correct": tf.reduce_sum(hits)}

        @tf.function(input_signature=[x_any])
        def infer(x: Any) -> dict[str, Any]:
            return {"logits": forward(spec, self._named(), x)}

        # get_weights takes one input it ignores: the Java/Kotlin runSignature refuses an empty input map.
        @tf.function(input_signature=[tf.TensorSpec([], tf.float32, name="unused")])
        def get_weights(unused: Any) -> dict[str, Any]:
            del unused
            return {name: tf.identity(v) for name, v in self._named().items()}

        @tf.function(input_signature=[tf.TensorSpec(w.shape, tf.float32, name=w.name) for w in self.weight_specs])
        def set_weights(*values: Any) -> dict[str, Any]:
            for variable, value in zip(self.weights, values, strict=True):
                variable.assign(value)
            self.optimizer.reset()
            return {"ok": tf.constant(1, tf.int32)}

        functions = {"train": train, "evaluate": evaluate, "infer": infer,
                     "get_weights": get_weights, "set_weights": set_weights}
        return {key: functions[key].get_concrete_function() for key in REQUIRED_SIGNATURES}
