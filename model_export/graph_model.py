"""What every exporter hands to the signature builder: a forward pass, its weights and its loss.

The built-in families (``spec.py``) and a user's Keras model (``keras_export``) both lower to a
``GraphModel``; ``module.py`` turns one into the five signatures, and ``exporter.py`` writes the artifact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_runtime.manifest import OptimizerConfig, WeightSpec

LOSSES = ("sparse_categorical_crossentropy", "binary_crossentropy")
Tensor = Any  # tf.Tensor; TensorFlow ships no usable static types.
# (trainable weights by name, inputs x, training?) -> the model's outputs
Forward = Callable[[Mapping[str, Tensor], Tensor, bool], Tensor]


@dataclass(frozen=True)
class Loss:
    """A per-example loss and a per-example hit (1.0 when the prediction is right), both of ``(outputs, y)``."""

    name: str
    per_example: Callable[[Tensor, Tensor], Tensor]
    hits: Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class GraphModel:
    """A model ready to become an artifact.

    ``weights`` are the trainable tensors in model order, personal ones flagged; ``initial`` holds their
    starting values. Everything else the forward pass needs (a frozen base, normalization constants) is
    inside ``forward`` as constants, and ``base_sha256`` fingerprints those frozen constants.
    """

    name: str
    input_shape: tuple[int, ...]
    num_classes: int
    output_size: int
    batch_size: int
    optimizer: OptimizerConfig
    weights: tuple[WeightSpec, ...]
    initial: Mapping[str, np.ndarray]
    forward: Forward
    loss: Loss
    proximal: bool = True
    base_sha256: str | None = None
    exporter: Mapping[str, Any] = field(default_factory=dict)
