"""Every artifact the exporter writes uses TFLite builtin ops only, and the check catches a Flex op."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from edge_runtime.manifest import OptimizerConfig
from model_export.convert import check_file, operator_names
from model_export.demo import DIGITS_SPEC
from model_export.errors import UnsupportedOpsError
from model_export.spec import ModelSpec

SPECS = [
    DIGITS_SPEC,
    ModelSpec("mlp", (30,), 2, hidden=(64, 32), optimizer=OptimizerConfig("adam", 0.001)),
    ModelSpec("cnn", (28, 28, 1), 10, filters=(16, 32), hidden=(128,), optimizer=OptimizerConfig("sgd", 0.05, 0.9)),
    ModelSpec("cnn", (12, 10, 3), 5, filters=(6,), hidden=(), batch_size=4),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.family}-{'x'.join(map(str, s.input_shape))}")
def test_exported_artifacts_use_only_builtins(spec, export) -> None:
    ops = check_file(export(spec) / "model.tflite")
    assert "CUSTOM" not in ops
    assert {"ASSIGN_VARIABLE", "READ_VARIABLE", "FULLY_CONNECTED"} <= ops


def _flex_model() -> bytes:
    """A model that needs a Flex op: a determinant has no TFLite builtin."""

    @tf.function(input_signature=[tf.TensorSpec([2, 2], tf.float32)])
    def determinant(x):
        return tf.linalg.det(x)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([determinant.get_concrete_function()], determinant)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    return bytes(converter.convert())


def test_flex_op_is_reported_by_name() -> None:
    with pytest.raises(UnsupportedOpsError, match=r"FlexMatrixDeterminant \(Flex\)"):
        operator_names(_flex_model())


def test_builtin_only_model_passes_the_check() -> None:
    @tf.function(input_signature=[tf.TensorSpec([2], tf.float32)])
    def double(x):
        return x * np.float32(2)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([double.get_concrete_function()], double)
    assert operator_names(bytes(converter.convert())) == {"MUL"}
