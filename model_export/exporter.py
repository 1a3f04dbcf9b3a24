"""``export_model``: a ModelSpec in, an artifact folder out."""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import tensorflow as tf

from edge_runtime.manifest import MANIFEST_FILE, Manifest, standard_signatures
from edge_runtime.weights import weights_to_bytes
from model_export.convert import convert
from model_export.errors import ExportError
from model_export.graph_model import GraphModel
from model_export.layers import forward
from model_export.losses import sparse_categorical
from model_export.module import TrainableModule
from model_export.spec import ModelSpec, weight_specs

log = logging.getLogger(__name__)


def initial_weights(spec: ModelSpec) -> dict[str, np.ndarray]:
    """Glorot-uniform kernels and zero biases (Keras' defaults), seeded by ``spec.seed``."""
    rng = np.random.default_rng(spec.seed)
    weights: dict[str, np.ndarray] = {}
    for w in weight_specs(spec):
        if w.name.endswith("_bias"):
            weights[w.name] = np.zeros(w.shape, np.float32)
            continue
        receptive = math.prod(w.shape[:-2])
        fan_in, fan_out = w.shape[-2] * receptive, w.shape[-1] * receptive
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        weights[w.name] = rng.uniform(-limit, limit, w.shape).astype(np.float32)
    return weights


def family_graph(spec: ModelSpec) -> GraphModel:
    """A built-in family (mlp, cnn) as a graph model: every weight trainable and travelling, cross-entropy of logits."""
    exporter: dict[str, object] = {"family": spec.family,
                                   "architecture": {"hidden": list(spec.hidden),
                                                    "filters": list(spec.filters) if spec.family == "cnn" else [],
                                                    "seed": spec.seed}}
    if spec.normalization is not None:
        exporter["normalization"] = asdict(spec.normalization)
    return GraphModel(name=spec.name, input_shape=spec.input_shape, num_classes=spec.num_classes,
                      output_size=spec.num_classes, batch_size=spec.batch_size, optimizer=spec.optimizer,
                      weights=weight_specs(spec), initial=initial_weights(spec),
                      forward=lambda weights, x, training: forward(spec, weights, x),
                      loss=sparse_categorical(spec.num_classes, from_logits=True), exporter=exporter)


def export_model(spec: ModelSpec, out_dir: Path | str) -> Manifest:
    """Export a built-in family to an artifact folder; see ``export_graph``."""
    return export_graph(family_graph(spec), out_dir)


def export_graph(graph: GraphModel, out_dir: Path | str) -> Manifest:
    """Convert ``graph`` to an artifact folder and return its manifest.

    The folder is written beside its destination and moved into place when
    complete; an existing artifact there is replaced, anything else is refused.
    """
    out = Path(out_dir)
    _check_destination(out)
    if all(w.personal for w in graph.weights):
        raise ExportError(f"model {graph.name!r}: no weight would travel (every trainable weight is frozen or "
                          "personal); expected at least one trainable layer that is neither")
    module = TrainableModule(graph)
    flatbuffer = convert(module)
    weights_bytes = weights_to_bytes(dict(graph.initial))
    manifest = Manifest(
        model_name=graph.name,
        tflite_sha256=hashlib.sha256(flatbuffer).hexdigest(),
        weights_sha256=hashlib.sha256(weights_bytes).hexdigest(),
        input_shape=graph.input_shape,
        num_classes=graph.num_classes,
        output_size=graph.output_size,
        train_batch_size=graph.batch_size,
        weights=graph.weights,
        optimizer=graph.optimizer,
        signatures=standard_signatures(tuple(w.name for w in graph.weights), graph.proximal),
        tensorflow_version=tf.__version__,
        proximal=graph.proximal,
        base_sha256=graph.base_sha256,
        exporter=dict(graph.exporter),
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        (staging / manifest.tflite_file).write_bytes(flatbuffer)
        (staging / manifest.weights_file).write_bytes(weights_bytes)
        manifest.write(staging)
        staging.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except OSError as exc:
        raise ExportError(f"cannot write the artifact to {out}: {exc}") from exc
    log.info("wrote %s (%d parameters, %d bytes of TFLite)", out, manifest.parameter_count, len(flatbuffer))
    return manifest


def _check_destination(out: Path) -> None:
    if out.is_file():
        raise ExportError(f"{out} is a file; expected a folder for the artifact (new, or an artifact to replace)")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST_FILE).is_file():
        raise ExportError(f"{out} is a non-empty folder that holds no artifact; refusing to write into it")
