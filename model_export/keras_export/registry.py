"""The supported Keras layers: for each class, how to lower it and which configurations it refuses.

A rule's ``lower(layer, params, inputs, training)`` returns the layer's output written with ops whose
forward pass and gradient are TFLite builtins; ``params(variable)`` is the tensor standing for one of
the layer's Keras variables (a trainable weight, or a constant when the variable is frozen).
``problems(layer)`` lists what about this layer's configuration cannot be lowered, each as
"what it is; what is supported", so that the refusal can name every offending layer at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Tensor = Any
Params = Callable[[Any], Tensor]
Lower = Callable[[Any, Params, Any, bool], Tensor]
Problems = Callable[[Any], list[str]]


@dataclass(frozen=True)
class Rule:
    lower: Lower
    problems: Problems


RULES: dict[str, Rule] = {}


def no_problems(layer: Any) -> list[str]:
    del layer
    return []


def lowers(*class_names: str, problems: Problems = no_problems) -> Callable[[Lower], Lower]:
    """Register the decorated function as the lowering of Keras layers ``class_names``."""

    def register(lower: Lower) -> Lower:
        for name in class_names:
            RULES[name] = Rule(lower, problems)
        return lower

    return register


def weight_problems(layer: Any) -> list[str]:
    """What about a layer's weights the artifact cannot reproduce: regularizers and constraints (they change
    Keras's step in ways the artifact's data loss does not include), LoRA and quantized variants (their
    weights are computed from several variables; only the plain layer is lowered)."""
    config = layer.get_config()
    found = [f"{key}={config[key]!r}; supported: None (the artifact trains on the data loss alone)"
             for key in sorted(config) if key.endswith(("_regularizer", "_constraint")) and config[key] is not None]
    if getattr(layer, "lora_enabled", False):
        found.append("LoRA enabled; supported: a plain layer (merge the LoRA weights first)")
    if getattr(layer, "quantization_mode", None):
        found.append(f"quantized ({layer.quantization_mode}); supported: float32 weights")
    return found


def config_problems(layer: Any, **supported: tuple[Any, ...]) -> list[str]:
    """A problem for each ``layer.get_config()[key]`` that is not among its supported values."""
    config = layer.get_config()
    found = []
    for key, values in supported.items():
        value = config.get(key)
        value = tuple(value) if isinstance(value, list) else value
        if value not in values:
            shown = " or ".join(repr(v) for v in values)
            found.append(f"{key}={value!r}; supported: {shown}")
    return found
