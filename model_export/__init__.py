"""Export models to builtin-only TFLite training artifacts. The only package that imports TensorFlow.

``ModelSpec`` and the errors import without TensorFlow; ``export_model`` imports
it on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from model_export.errors import ExportError, SpecError, UnsupportedOpsError
from model_export.spec import ModelSpec, weight_specs

if TYPE_CHECKING:
    from edge_runtime.manifest import Manifest

__all__ = ["ExportError", "ModelSpec", "SpecError", "UnsupportedOpsError", "export_model", "weight_specs"]


def export_model(spec: ModelSpec, out_dir: Any) -> Manifest:
    """Convert ``spec`` to an artifact folder at ``out_dir``; see ``model_export.exporter``."""
    from model_export.exporter import export_model as _export

    return _export(spec, out_dir)
