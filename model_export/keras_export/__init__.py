"""Bring your own Keras model: a supported layer set lowered to builtin ops (docs/ARTIFACT.md, section 11)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from edge_runtime.manifest import Manifest
from model_export.errors import ExportError
from model_export.keras_export.walk import KerasExport, leaf_layers, lower_keras

__all__ = ["KerasExport", "export_keras", "leaf_layers", "load_keras_model", "lower_keras"]


def load_keras_model(path: Path | str) -> Any:
    """A model saved with ``model.save("….keras")``, loaded in Keras's safe mode (no arbitrary code runs)."""
    import keras

    source = Path(path)
    if source.suffix != ".keras":
        raise ExportError(f"{source}: expected a .keras file written by model.save('model.keras')"
                          + (" (a legacy .h5 can be re-saved: keras.models.load_model(h5).save('model.keras'))"
                             if source.suffix in (".h5", ".hdf5") else ""))
    if not source.is_file():
        raise ExportError(f"{source}: no such file; expected a .keras file written by model.save('model.keras')")
    try:
        with warnings.catch_warnings():  # the optimizer's saved state is not exported; Keras warns it is skipped
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            return keras.saving.load_model(source, compile=True, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, TypeError, zipfile and h5py errors alike
        raise ExportError(f"{source}: Keras cannot load it: {exc}") from exc


def export_keras(model: Any, out_dir: Path | str, options: KerasExport | None = None) -> Manifest:
    """Export a Sequential or functional ``keras.Model`` to an artifact folder; refused with every problem listed."""
    from model_export.exporter import export_graph

    return export_graph(lower_keras(model, options or KerasExport()), out_dir)
