"""Optimizers compiled into the ``train`` signature.

Each keeps its state in resource variables next to the weights, applies
exactly the update Keras 3 applies for the same hyperparameters (so the
parity tests can compare against Keras), and can reset its state to zero,
which ``set_weights`` does whenever new global weights arrive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from edge_runtime.manifest import OptimizerConfig

Tensor = Any


class InGraphOptimizer(tf.Module):
    """Shared slot bookkeeping; subclasses implement ``apply``."""

    def __init__(self, config: OptimizerConfig, weights: Sequence[tf.Variable]) -> None:
        super().__init__(name=f"{config.name}_optimizer")
        self.config = config
        self.slot_names = self.slots_for(config)
        self.slots = {
            slot: [tf.Variable(tf.zeros(w.shape, w.dtype), name=f"{slot}_{i}") for i, w in enumerate(weights)]
            for slot in self.slot_names
        }
        self.step = tf.Variable(0.0, dtype=tf.float32, name="step")

    @staticmethod
    def slots_for(config: OptimizerConfig) -> tuple[str, ...]:
        return ()

    def reset(self) -> None:
        self.step.assign(0.0)
        for variables in self.slots.values():
            for v in variables:
                v.assign(tf.zeros(v.shape, v.dtype))

    def apply(self, weights: Sequence[tf.Variable], grads: Sequence[Tensor], lr: Tensor) -> None:
        raise NotImplementedError


class Sgd(InGraphOptimizer):
    """Plain SGD, or heavy-ball momentum ``m = mu * m - lr * g; w += m`` (Keras' form)."""

    @staticmethod
    def slots_for(config: OptimizerConfig) -> tuple[str, ...]:
        return ("momentum",) if config.momentum > 0 else ()

    def apply(self, weights: Sequence[tf.Variable], grads: Sequence[Tensor], lr: Tensor) -> None:
        self.step.assign_add(1.0)
        if not self.slot_names:
            for w, g in zip(weights, grads, strict=True):
                w.assign_sub(lr * g)
            return
        mu = tf.constant(self.config.momentum, tf.float32)
        for w, g, m in zip(weights, grads, self.slots["momentum"], strict=True):
            m.assign(mu * m - lr * g)
            w.assign_add(m)


class Adam(InGraphOptimizer):
    """Adam with Keras 3's bias correction folded into the step size."""

    @staticmethod
    def slots_for(config: OptimizerConfig) -> tuple[str, ...]:
        return ("m", "v")

    def apply(self, weights: Sequence[tf.Variable], grads: Sequence[Tensor], lr: Tensor) -> None:
        cfg = self.config
        self.step.assign_add(1.0)
        beta_1 = tf.constant(cfg.beta_1, tf.float32)
        beta_2 = tf.constant(cfg.beta_2, tf.float32)
        alpha = lr * tf.sqrt(1.0 - tf.pow(beta_2, self.step)) / (1.0 - tf.pow(beta_1, self.step))
        # 1 - beta is computed in float64 then rounded once, as Keras does.
        one_minus_b1 = tf.constant(1.0 - cfg.beta_1, tf.float32)
        one_minus_b2 = tf.constant(1.0 - cfg.beta_2, tf.float32)
        for w, g, m, v in zip(weights, grads, self.slots["m"], self.slots["v"], strict=True):
            m.assign_add((g - m) * one_minus_b1)
            v.assign_add((tf.square(g) - v) * one_minus_b2)
            w.assign_sub(m * alpha / (tf.sqrt(v) + cfg.epsilon))


def make_optimizer(config: OptimizerConfig, weights: Sequence[tf.Variable]) -> InGraphOptimizer:
    if config.name == "adam":
        return Adam(config, weights)
    return Sgd(config, weights)
