"""Conversion to TFLite with builtin ops only, and the check that proves it."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema

from edge_runtime.manifest import REQUIRED_SIGNATURES
from model_export.errors import ExportError, UnsupportedOpsError
from model_export.module import TrainableModule

log = logging.getLogger(__name__)

_BUILTIN_NAMES = {
    value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")
}


def convert(module: TrainableModule) -> bytes:
    """Convert ``module``'s signatures to a TFLite flatbuffer using builtins only."""
    signatures = module.signatures()
    with tempfile.TemporaryDirectory(prefix="edgefl-export-") as tmp:
        tf.saved_model.save(module, tmp, signatures=signatures)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=list(REQUIRED_SIGNATURES))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        converter.allow_custom_ops = False
        try:
            flatbuffer = converter.convert()
        except Exception as exc:  # the converter raises bare ConverterError subclasses
            raise ExportError(f"TFLite conversion with builtin ops only failed: {exc}") from exc
    ops = operator_names(bytes(flatbuffer))
    log.info("converted model uses %d builtin ops: %s", len(ops), ", ".join(sorted(ops)))
    return bytes(flatbuffer)


def operator_names(flatbuffer: bytes) -> set[str]:
    """Names of every operator code in a TFLite flatbuffer.

    Raises ``UnsupportedOpsError`` listing each custom or Flex op found.
    """
    model = schema.Model.GetRootAs(flatbuffer, 0)
    builtins: set[str] = set()
    foreign: list[str] = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema.BuiltinOperator.CUSTOM:
            custom = (code.CustomCode() or b"").decode("utf-8", "replace")
            kind = "Flex" if custom.startswith("Flex") else "custom"
            foreign.append(f"{custom} ({kind})")
        else:
            builtins.add(_BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}"))
    if foreign:
        raise UnsupportedOpsError(sorted(foreign))
    return builtins


def check_file(path: Path) -> set[str]:
    """``operator_names`` of a ``.tflite`` file on disk."""
    return operator_names(Path(path).read_bytes())
