"""A Keras artifact trains identically under ai-edge-litert and under tflite-runtime 2.14.

Two models exercise every op pattern the Keras lowering emits (core.py, activations.py, norm.py; conv.py):
their forward passes and their hand-written gradients. Dropout's RANDOM_UNIFORM cannot be compared
across runtimes (the draws differ), so a rate of 0 keeps that model deterministic, and a second test
checks that a dropout artifact runs and drops at its rate under tflite-runtime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.artifact import Artifact
from edge_runtime.manifest import OptimizerConfig
from edge_runtime.weights import load_weights
from tests.test_backends import ROOT, _legacy_python, _train

pytestmark = [pytest.mark.legacy, pytest.mark.tensorflow]

VOCABULARY, LENGTH = 40, 6


def every_pattern_model() -> object:
    """Embedding, BatchNormalization, Dense (on 3-D input too), GlobalAveragePooling1D, Rescaling, Normalization,
    every activation as ``activation=`` and as a layer, Concatenate, Add, Dropout, Reshape, Flatten."""
    import keras

    from model_export.keras_export.activations import ACTIVATIONS

    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(11)
    inputs = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(VOCABULARY, 6)(inputs)
    batch_norm = keras.layers.BatchNormalization()
    x = keras.layers.Dense(6, activation="tanh")(batch_norm(x))
    x = keras.layers.Rescaling(2.0, offset=0.1)(keras.layers.GlobalAveragePooling1D()(x))
    normalization = keras.layers.Normalization()
    normalization.adapt(rng.normal(0.0, 2.0, (64, 6)).astype(np.float32))
    x = normalization(x)
    x = keras.layers.Concatenate()([keras.layers.Dense(2, activation=name)(x) for name in sorted(ACTIVATIONS)])
    x = keras.layers.Dense(6)(x)
    x = keras.layers.Add()([
        keras.layers.ReLU()(x), keras.layers.ReLU(max_value=6)(keras.layers.Rescaling(4.0)(x)),
        keras.layers.LeakyReLU(0.3)(x), keras.layers.Softmax()(x), keras.layers.Activation("sigmoid")(x),
    ])
    x = keras.layers.Flatten()(keras.layers.Reshape((2, 3))(keras.layers.Dropout(0.0)(x)))
    model = keras.Model(inputs, keras.layers.Dense(3)(x), name="every-pattern")
    batch_norm.moving_mean.assign(rng.normal(0.0, 0.1, 6).astype(np.float32))
    batch_norm.moving_variance.assign(rng.uniform(0.5, 2.0, 6).astype(np.float32))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_a_keras_artifact_trains_the_same_under_both_runtimes(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    x = rng.integers(0, VOCABULARY, (60, LENGTH)).astype(np.float32)
    patterns = {"GATHER", "UNSORTED_SEGMENT_SUM", "MEAN", "CONCATENATION", "SPLIT_V", "SELECT_V2", "LOGISTIC", "TANH",
                "SOFTMAX", "FULLY_CONNECTED", "BATCH_MATMUL"}
    assert_same_under_both_runtimes(every_pattern_model(), x, rng.integers(0, 3, 60), patterns, tmp_path)


def conv_model() -> object:
    """Every conv.py pattern: both patch paths (fewer and more than 4 channels), strides, same/valid, depthwise and
    separable, max and average pooling with their gradients, zero padding, global pooling, and frozen convolutions
    between trainable layers (CONV_2D with a TRANSPOSE_CONV input gradient; DEPTHWISE_CONV_2D)."""
    import keras

    keras.utils.set_random_seed(13)
    inputs = keras.Input((9, 9, 2))
    x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(inputs)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same")(x)
    x = keras.layers.SeparableConv2D(6, 3, padding="same", activation="relu6")(x)
    x = keras.layers.MaxPooling2D(2, strides=1, padding="same")(x)
    x = keras.layers.AveragePooling2D(2, padding="same")(keras.layers.ZeroPadding2D(1)(x))
    frozen_conv = keras.layers.Conv2D(5, 2, padding="valid", name="frozen_conv")
    frozen_depthwise = keras.layers.DepthwiseConv2D(2, padding="same", name="frozen_depthwise")
    x = frozen_depthwise(frozen_conv(x))
    frozen_conv.trainable = frozen_depthwise.trainable = False
    x = keras.layers.Conv2D(6, 1, activation="tanh")(x)
    pooled = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(x),
                                         keras.layers.GlobalMaxPooling2D()(x)])
    model = keras.Model(inputs, keras.layers.Dense(3)(pooled), name="conv-patterns")
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_a_conv_artifact_trains_the_same_under_both_runtimes(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    patterns = {"DEPTHWISE_CONV_2D", "CONV_2D", "TRANSPOSE_CONV", "MAX_POOL_2D", "AVERAGE_POOL_2D", "PAD",
                "BATCH_MATMUL", "SLICE", "CONCATENATION"}
    assert_same_under_both_runtimes(conv_model(), rng.normal(size=(40, 9, 9, 2)).astype(np.float32),
                                    rng.integers(0, 3, 40), patterns, tmp_path)


def assert_same_under_both_runtimes(model: object, x: np.ndarray, y: np.ndarray, patterns: set[str],
                                    tmp_path: Path) -> None:
    """Export ``model`` (it must emit ``patterns``), train it 3 epochs on (x, y) under each runtime in its own
    process, and compare the weights."""
    from model_export.convert import check_file
    from model_export.keras_export import KerasExport, export_keras

    artifact = tmp_path / "artifact"
    export_keras(model, artifact, KerasExport(batch_size=8, optimizer=OptimizerConfig("sgd", 0.02, momentum=0.9)))
    ops = check_file(artifact / "model.tflite")
    assert patterns <= ops, f"the model no longer emits {sorted(patterns - ops)}"
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=y)

    litert = _train(Path(sys.executable), "ai_edge_litert", artifact, data, tmp_path / "litert.safetensors")
    legacy = _train(_legacy_python(), "tflite_runtime", artifact, data, tmp_path / "legacy.safetensors")

    assert litert["backend"] == "ai_edge_litert" and legacy["backend"] == "tflite_runtime"
    for report in (litert, legacy):
        assert float(report["after"]) < float(report["before"]), report
    ours, theirs = load_weights(tmp_path / "litert.safetensors"), load_weights(tmp_path / "legacy.safetensors")
    assert set(ours) == set(Artifact.load(artifact).manifest.weight_names)
    for name in ours:
        np.testing.assert_allclose(theirs[name], ours[name], atol=1e-5, err_msg=name)


RATE = 0.5
FEATURES = 256
DROPOUT_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from edge_runtime import Artifact, Trainer
    trainer = Trainer(Artifact.load(sys.argv[1]))
    start = trainer.get_weights()
    factors = []
    for _ in range(3):
        trainer.set_weights(start)
        trainer.train_step(np.ones((1, int(sys.argv[2])), np.float32), np.array([0]))
        kernel = trainer.get_weights()["linear_kernel"]
        factors.append((kernel[:, 1] / -0.5).tolist())
    print(json.dumps({"backend": trainer.backend.name, "factors": factors}))
""")


def test_dropout_runs_under_tflite_runtime(tmp_path: Path) -> None:
    """From zero weights, one SGD step (lr 1) on a row of ones sets kernel row i to ``s_i * (0.5, -0.5)``,
    where ``s_i`` is 0 for a dropped input and ``1 / (1 - rate)`` for a kept one."""
    import keras

    from model_export.keras_export import KerasExport, export_keras

    inputs = keras.Input((FEATURES,))
    linear = keras.layers.Dense(2, kernel_initializer="zeros", name="linear")
    model = keras.Model(inputs, linear(keras.layers.Dropout(RATE)(inputs)))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    export_keras(model, tmp_path, KerasExport(batch_size=4, optimizer=OptimizerConfig("sgd", 1.0)))

    env = {"PYTHONPATH": str(ROOT), "EDGEFL_TFLITE_BACKEND": "tflite_runtime", "PATH": os.environ.get("PATH", "")}
    done = subprocess.run([str(_legacy_python()), "-c", DROPOUT_SCRIPT, str(tmp_path), str(FEATURES)],
                          capture_output=True, text=True, timeout=300, env=env, check=False)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["backend"] == "tflite_runtime"
    factors = np.array(report["factors"])
    kept = factors != 0
    np.testing.assert_allclose(factors[kept], 1.0 / (1.0 - RATE), rtol=1e-6)
    assert abs(1.0 - kept.mean() - RATE) < 0.1, f"dropped {1.0 - kept.mean():.3f} at rate {RATE}"  # > 4 sigma
    assert not np.array_equal(factors[0], factors[1]), "two steps dropped the same inputs"
