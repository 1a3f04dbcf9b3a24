"""edgefl's device runtime: train builtin-only TFLite artifacts with a stock interpreter.

Never imports TensorFlow. The public API is what ``__all__`` lists; a test
keeps it so.
"""

from edge_runtime.artifact import Artifact
from edge_runtime.backend import Backend, select_backend
from edge_runtime.data import Dataset, check_arrays, load_data
from edge_runtime.errors import (
    ArtifactError,
    BackendUnavailableError,
    DataError,
    EdgeflError,
    EdgeRuntimeError,
    WeightsError,
)
from edge_runtime.manifest import Manifest, Normalization, OptimizerConfig, WeightSpec
from edge_runtime.trainer import EvalResult, Trainer, TrainResult
from edge_runtime.weights import check_weights, load_weights, save_weights

__all__ = [
    "Artifact",
    "ArtifactError",
    "Backend",
    "BackendUnavailableError",
    "DataError",
    "Dataset",
    "EdgeRuntimeError",
    "EdgeflError",
    "EvalResult",
    "Manifest",
    "Normalization",
    "OptimizerConfig",
    "TrainResult",
    "Trainer",
    "WeightSpec",
    "WeightsError",
    "check_arrays",
    "check_weights",
    "load_data",
    "load_weights",
    "save_weights",
    "select_backend",
]
