"""Bring your own Keras model: a supported layer set lowered to builtin ops (docs/ARTIFACT.md, section 11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_runtime.manifest import Manifest
from model_export.keras_export.walk import KerasExport, leaf_layers, lower_keras

__all__ = ["KerasExport", "export_keras", "leaf_layers", "lower_keras"]


def export_keras(model: Any, out_dir: Path | str, options: KerasExport | None = None) -> Manifest:
    """Export a Sequential or functional ``keras.Model`` to an artifact folder; refused with every problem listed."""
    from model_export.exporter import export_graph

    return export_graph(lower_keras(model, options or KerasExport()), out_dir)
