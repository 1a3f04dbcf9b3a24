"""A Keras model lowered to a ``GraphModel``: its layers checked, its variables sorted, its graph replayed.

Every variable becomes one of three things. A trainable variable of a layer at or after
``trainable_from`` becomes a weight of the artifact (personal if its layer is named in ``personal``).
Every other variable (a layer with ``trainable = False``, a layer before ``trainable_from``, and the
statistics of Normalization and BatchNormalization) becomes a constant in the graph: it runs forward
only, needs no gradient, and is fingerprinted by ``base_sha256``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from edge_runtime.manifest import OptimizerConfig, WeightSpec
from model_export.errors import UnsupportedModelError
from model_export.graph_model import GraphModel, Loss
from model_export.keras_export import conv, core, norm  # noqa: F401  (register their rules)
from model_export.keras_export.registry import RULES
from model_export.losses import LOSSES, binary, sparse_categorical

Tensor = Any
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_]")
# Loss settings the artifact's mean over the batch's real rows reproduces; any other value changes Keras's step.
_LOSS_DEFAULTS: dict[str, Any] = {"label_smoothing": 0.0, "reduction": "sum_over_batch_size", "axis": -1,
                                  "ignore_class": None}


@dataclass(frozen=True)
class KerasExport:
    """How to export a Keras model; the optimizer and batch size are the artifact's, as for the built-in families."""

    batch_size: int = 32
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: Any = None
    trainable_from: str | None = None
    personal: tuple[str, ...] = ()
    proximal: bool = True
    name: str = ""


def lower_keras(model: keras.Model, options: KerasExport) -> GraphModel:
    """Check ``model`` against the supported set and lower it; every problem found is refused at once."""
    graph = _functional(model)
    layers = list(leaf_layers(graph))
    problems = _io_problems(graph) + _layer_problems(graph, layers)
    loss, loss_problems = _loss(model, options.loss, graph)
    names = [layer.name for layer in layers]
    base = upstream_of(graph, options.trainable_from) if options.trainable_from in names else set()
    option_problems = _option_problems(layers, base, options)
    roles = None if option_problems else _roles(model, layers, base, options)
    problems += loss_problems + option_problems
    if problems:
        raise UnsupportedModelError(model.name, problems)
    assert loss is not None and roles is not None
    specs = tuple(WeightSpec(name, tuple(int(d) for d in v.shape), personal=personal)
                  for v, name, personal in roles.trainable)
    initial = {name: np.asarray(v.numpy(), np.float32) for v, name, _ in roles.trainable}
    frozen = {id(v): np.asarray(v.numpy(), np.float32) for v in roles.frozen}
    names = {id(v): name for v, name, _ in roles.trainable}

    def forward(weights: Mapping[str, Tensor], x: Tensor, training: bool) -> Tensor:
        constants: dict[int, Tensor] = {}

        def params(variable: Any) -> Tensor:
            key = id(variable)
            if key in names:
                return weights[names[key]]
            if key not in constants:
                constants[key] = tf.constant(frozen[key])
            return constants[key]

        def lowered(operation: Any) -> Any:
            if isinstance(operation, keras.Model):
                inner = _functional(operation)
                return lambda *args, **kwargs: inner._run_through_graph(args[0], operation_fn=lowered)
            rule = RULES[type(operation).__name__]
            return lambda *args, **kwargs: rule.lower(operation, params, args[0], training)

        return graph._run_through_graph(x, operation_fn=lowered)  # float32 even for an int input: Embedding casts

    output_size = int(graph.outputs[0].shape[-1])
    return GraphModel(
        name=options.name or _NOT_A_NAME.sub("-", model.name), input_shape=_input_shape(graph),
        num_classes=max(output_size, 2), output_size=output_size, batch_size=options.batch_size,
        optimizer=options.optimizer, weights=specs, initial=initial, forward=forward, loss=loss,
        proximal=options.proximal, base_sha256=_fingerprint(roles.frozen) if roles.frozen else None,
        exporter={"family": "keras", "keras_version": keras.__version__, "loss": loss.name,
                  "layers": [{"name": layer.name, "class": type(layer).__name__} for layer in layers],
                  "trainable_from": options.trainable_from, "personal": list(options.personal),
                  "frozen_parameters": int(sum(np.prod(v.shape) for v in roles.frozen))})


def leaf_layers(model: Any) -> Iterable[Any]:
    """The model's operations in graph order, nested models opened up."""
    for operation in _functional(model).operations:
        if isinstance(operation, keras.layers.InputLayer):
            continue
        inner = _graph_of(operation) if isinstance(operation, keras.Model) else None
        if inner is not None:
            yield from leaf_layers(inner)
        else:
            yield operation  # a nested subclassed model stays a leaf, for _layer_problems to name


@dataclass(frozen=True)
class _Roles:
    trainable: list[tuple[Any, str, bool]]  # (variable, weight name, personal)
    frozen: list[Any]


def _roles(model: keras.Model, layers: Sequence[Any], base: set[int], options: KerasExport) -> _Roles:
    """Each variable once (a layer may appear in the graph more than once), trainable or frozen (``base``: the
    ids of the layers ``--trainable-from`` freezes)."""
    trainable_ids = {id(v) for v in model.trainable_weights}
    trainable: list[tuple[Any, str, bool]] = []
    frozen: list[Any] = []
    taken: set[str] = set()
    seen: set[int] = set()
    for layer in layers:
        for variable in getattr(layer, "weights", ()):  # a keras.ops call among the layers has none
            if id(variable) in seen:
                continue
            seen.add(id(variable))
            if id(variable) in trainable_ids and id(layer) not in base:
                name = _weight_name(layer, variable, taken)
                trainable.append((variable, name, layer.name in options.personal))
            else:
                frozen.append(variable)
    return _Roles(trainable, frozen)


def upstream_of(graph: Any, layer_name: str) -> set[int]:
    """The ids of every layer that ``layer_name`` depends on (its ancestors in the data flow, through nested
    models): what ``--trainable-from`` freezes. A parallel branch that merges in later is not among them."""
    for operation in graph.operations:
        if operation.name == layer_name:
            return _ancestors(operation)
        inner = _graph_of(operation) if isinstance(operation, keras.Model) else None
        if inner is not None and any(layer.name == layer_name for layer in leaf_layers(inner)):
            return _ancestors(operation) | upstream_of(inner, layer_name)
    return set()


def _ancestors(operation: Any) -> set[int]:
    found: set[int] = set()
    visited: set[int] = set()
    pending = [t for node in operation._inbound_nodes for t in node.input_tensors]
    while pending:
        parent, node_index, _ = pending.pop()._keras_history
        if id(parent) in visited or isinstance(parent, keras.layers.InputLayer):
            continue
        visited.add(id(parent))
        inner = _graph_of(parent) if isinstance(parent, keras.Model) else None
        found |= {id(layer) for layer in leaf_layers(inner)} if inner is not None else {id(parent)}
        pending += parent._inbound_nodes[node_index].input_tensors
    return found


def _weight_name(layer: Any, variable: Any, taken: set[str]) -> str:
    """``{layer}_{variable}`` made a valid signature argument name (not the variable's path, which names the
    enclosing model and so changes when a model is saved and loaded)."""
    base = _NOT_A_NAME.sub("_", f"{layer.name}_{variable.name}")
    base = base if base[:1].isalpha() else f"w_{base}"
    name, n = base, 1
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def _fingerprint(frozen: Sequence[Any]) -> str:
    """SHA-256 over every frozen variable's path, shape and float32 bytes, in graph order."""
    digest = hashlib.sha256()
    for variable in frozen:
        value = np.ascontiguousarray(np.asarray(variable.numpy(), np.float32))
        digest.update(f"{variable.name}:{value.shape}\n".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _functional(model: Any) -> Any:
    inner = _graph_of(model)
    if inner is None:
        raise UnsupportedModelError(model.name, [_not_a_graph(model)])
    return inner


def _graph_of(model: Any) -> Any:
    """The model's functional graph, or None for a subclassed model or a Sequential of unknown input shape."""
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    return model if hasattr(model, "_run_through_graph") else None


def _not_a_graph(model: Any) -> str:
    if isinstance(model, keras.Sequential):
        return "a Sequential model without a known input shape; supported: start it with keras.Input(shape=...)"
    return (f"a subclassed model ({type(model).__name__}); supported: a Sequential or functional model built "
            "from keras.Input")


def _input_shape(graph: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in graph.inputs[0].shape[1:])


def _io_problems(graph: Any) -> list[str]:
    found = []
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        found.append(f"model: {len(graph.inputs)} inputs and {len(graph.outputs)} outputs; supported: one each")
        return found
    shape = graph.inputs[0].shape[1:]
    if any(d is None for d in shape):
        found.append(f"model input shape {tuple(shape)}; supported: every dimension but the batch fixed")
    if len(graph.outputs[0].shape) != 2:
        found.append(f"model output shape {tuple(graph.outputs[0].shape)}; supported: (batch, outputs)")
    return found


def _layer_problems(graph: Any, layers: Sequence[Any]) -> list[str]:
    found = []
    supported = ", ".join(sorted(RULES))
    for layer in layers:
        kind = type(layer).__name__
        where = f"layer {layer.name!r} ({kind})"
        if isinstance(layer, keras.Model):
            found.append(f"{where}: {_not_a_graph(layer)}")
            continue
        if kind not in RULES or not isinstance(layer, keras.layers.Layer):
            what = "a keras.ops call" if not isinstance(layer, keras.layers.Layer) else "not supported"
            found.append(f"{where}: {what}; supported layers: {supported}")
            continue
        if getattr(layer, "dtype_policy", None) is not None and layer.dtype_policy.compute_dtype != "float32":
            found.append(f"{where}: computes in {layer.dtype_policy.compute_dtype}; supported: float32")
        found += [f"{where}: {problem}" for problem in RULES[kind].problems(layer)]
    return found


def _option_problems(layers: Sequence[Any], base: set[int], options: KerasExport) -> list[str]:
    names = [layer.name for layer in layers]
    found = []
    if options.trainable_from is not None and options.trainable_from not in names:
        found.append(f"--trainable-from {options.trainable_from!r}: no such layer; layers: {', '.join(names)}")
    for name in options.personal:
        if name not in names:
            found.append(f"--personal {name!r}: no such layer; layers: {', '.join(names)}")
            continue
        layer = layers[names.index(name)]
        if not layer.trainable_weights or id(layer) in base:
            found.append(f"--personal {name!r}: the layer has no trainable weights; personal layers must train")
    return found


def _loss(model: keras.Model, given: Any, graph: Any) -> tuple[Loss | None, list[str]]:
    """The artifact's loss from ``given`` (a name or a Keras loss) or else the model's compiled loss."""
    chosen = given if given is not None else getattr(model, "loss", None)
    supported = f"supported: {', '.join(LOSSES)} (from logits or probabilities), with integer labels"
    if chosen is None:
        return None, [f"no loss: the model is not compiled and none was given; {supported}"]
    if isinstance(chosen, str):
        name, from_logits = chosen, False
    elif isinstance(chosen, keras.losses.Loss):
        config = chosen.get_config()
        name, from_logits = keras.losses.serialize(chosen)["class_name"], bool(config.get("from_logits", False))
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
        odd = {key: config[key] for key, usual in _LOSS_DEFAULTS.items() if key in config and config[key] != usual}
        if name in LOSSES and odd:
            shown = ", ".join(f"{key}={value!r}" for key, value in odd.items())
            usual = ", ".join(f"{key}={value!r}" for key, value in _LOSS_DEFAULTS.items())
            return None, [f"loss {name} with {shown}; {supported}, with {usual}"]
    else:
        return None, [f"loss {chosen!r}; {supported}"]
    outputs = int(graph.outputs[0].shape[-1])
    if name == "sparse_categorical_crossentropy":
        if outputs < 2:
            return None, [f"loss {name} on {outputs} output; supported: 2 or more outputs, one per class"]
        return sparse_categorical(outputs, from_logits), []
    if name == "binary_crossentropy":
        if outputs != 1:
            return None, [f"loss {name} on {outputs} outputs; supported: 1 output (labels 0 and 1)"]
        return binary(from_logits), []
    return None, [f"loss {name}; {supported}"]
