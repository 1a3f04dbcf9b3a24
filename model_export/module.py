"""The TensorFlow module whose signatures become the artifact's signatures.

Signatures (names are part of the artifact format, see docs/ARTIFACT.md):

- ``train(x, y, mask, lr[, mu]) -> loss``: one optimizer step on a batch of exactly
  ``batch_size`` rows. ``mask`` is 1.0 for real rows and 0.0 for padding, so a
  short last batch trains on exactly its real rows; ``loss`` is their mean.
  A proximal artifact also takes ``mu``, FedProx's coefficient: the step adds
  ``mu * (w - anchor)`` to each travelling weight's gradient, where the anchor
  is the value ``set_weights`` last gave it (``mu = 0`` is plain training).
- ``evaluate(x, y) -> loss_sum, correct``: any number of rows.
- ``infer(x) -> logits``: any number of rows (the model's outputs).
- ``get_weights(unused) -> {name: tensor}``: ``unused`` is a float32 scalar that
  is ignored; it exists because Java's ``runSignature`` refuses an empty input map.
- ``set_weights({name: tensor}) -> ok``: also resets the optimizer state and the anchors.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from edge_runtime.manifest import REQUIRED_SIGNATURES
from model_export.graph_model import GraphModel
from model_export.optimizers import make_optimizer


class TrainableModule(tf.Module):
    def __init__(self, graph: GraphModel) -> None:
        super().__init__(name=graph.name.replace(".", "_").replace("-", "_"))
        self.graph = graph
        self.weight_specs = graph.weights
        self.weights = [tf.Variable(graph.initial[w.name], dtype=tf.float32, name=w.name)
                        for w in self.weight_specs]
        self.anchored = [i for i, w in enumerate(self.weight_specs) if not w.personal] if graph.proximal else []
        self.anchors = [tf.Variable(graph.initial[self.weight_specs[i].name], dtype=tf.float32,
                                    name=f"anchor_{self.weight_specs[i].name}") for i in self.anchored]
        self.optimizer = make_optimizer(graph.optimizer, self.weights)

    def _named(self) -> dict[str, tf.Variable]:
        return {w.name: v for w, v in zip(self.weight_specs, self.weights, strict=True)}

    def signatures(self) -> dict[str, Any]:
        """Concrete functions keyed by signature name, ready for ``tf.saved_model.save``.

        AutoGraph is off: every branch and loop of a model is decided in Python at trace time, and
        transpiling each Keras lowering on every trace was most of an export's time.
        """
        graph = self.graph
        batch = graph.batch_size
        x_train = tf.TensorSpec([batch, *graph.input_shape], tf.float32, name="x")
        x_any = tf.TensorSpec([None, *graph.input_shape], tf.float32, name="x")
        train_inputs = [x_train, tf.TensorSpec([batch], tf.int32, name="y"),
                        tf.TensorSpec([batch], tf.float32, name="mask"), tf.TensorSpec([], tf.float32, name="lr")]
        if graph.proximal:
            train_inputs.append(tf.TensorSpec([], tf.float32, name="mu"))

        @tf.function(input_signature=train_inputs, autograph=False)
        def train(x: Any, y: Any, mask: Any, lr: Any, mu: Any = None) -> dict[str, Any]:
            with tf.GradientTape() as tape:
                per_example = graph.loss.per_example(graph.forward(self._named(), x, True), y)
                loss = tf.reduce_sum(per_example * mask) / tf.maximum(tf.reduce_sum(mask), 1.0)
            grads = tape.gradient(loss, self.weights)
            for i, anchor in zip(self.anchored, self.anchors, strict=True):
                grads[i] = grads[i] + mu * (self.weights[i] - anchor)
            self.optimizer.apply(self.weights, grads, lr)
            return {"loss": loss}

        @tf.function(input_signature=[x_any, tf.TensorSpec([None], tf.int32, name="y")], autograph=False)
        def evaluate(x: Any, y: Any) -> dict[str, Any]:
            outputs = graph.forward(self._named(), x, False)
            loss_sum = tf.reduce_sum(graph.loss.per_example(outputs, y))
            return {"loss_sum": loss_sum, "correct": tf.reduce_sum(graph.loss.hits(outputs, y))}

        @tf.function(input_signature=[x_any], autograph=False)
        def infer(x: Any) -> dict[str, Any]:
            return {"logits": graph.forward(self._named(), x, False)}

        # get_weights takes one input it ignores: the Java/Kotlin runSignature refuses an empty input map.
        @tf.function(input_signature=[tf.TensorSpec([], tf.float32, name="unused")], autograph=False)
        def get_weights(unused: Any) -> dict[str, Any]:
            del unused
            return {name: tf.identity(v) for name, v in self._named().items()}

        @tf.function(input_signature=[tf.TensorSpec(w.shape, tf.float32, name=w.name) for w in self.weight_specs],
                     autograph=False)
        def set_weights(*values: Any) -> dict[str, Any]:
            for variable, value in zip(self.weights, values, strict=True):
                variable.assign(value)
            for i, anchor in zip(self.anchored, self.anchors, strict=True):
                anchor.assign(values[i])
            self.optimizer.reset()
            return {"ok": tf.constant(1, tf.int32)}

        functions = {"train": train, "evaluate": evaluate, "infer": infer,
                     "get_weights": get_weights, "set_weights": set_weights}
        return {key: functions[key].get_concrete_function() for key in REQUIRED_SIGNATURES}
