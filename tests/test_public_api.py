"""The curated public API of each package stays what it is on purpose."""

from __future__ import annotations

import edge_runtime
import model_export


def test_edge_runtime_exports() -> None:
    assert sorted(edge_runtime.__all__) == [
        "Artifact", "ArtifactError", "Backend", "BackendUnavailableError", "DataError", "Dataset",
        "EdgeRuntimeError", "EdgeflError", "EvalResult", "Manifest", "Normalization", "OptimizerConfig",
        "TrainResult", "Trainer", "WeightSpec", "WeightsError", "check_arrays", "check_weights", "load_data",
        "load_weights", "save_weights", "select_backend",
    ]
    assert all(hasattr(edge_runtime, name) for name in edge_runtime.__all__)


def test_model_export_exports() -> None:
    assert sorted(model_export.__all__) == [
        "ExportError", "ModelSpec", "SpecError", "UnsupportedOpsError", "export_model", "weight_specs",
    ]
    assert all(hasattr(model_export, name) for name in model_export.__all__)
