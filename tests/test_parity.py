"""K steps through the TFLite artifact equal K steps of the same model in Keras."""

from __future__ import annotations

import numpy as np
import pytest

from edge_runtime.artifact import Artifact
from edge_runtime.manifest import Normalization, OptimizerConfig
from edge_runtime.trainer import Trainer
from model_export.exporter import initial_weights
from model_export.reference import keras_model, keras_weights
from model_export.spec import ModelSpec, standardization

STEPS = 6
TOLERANCE = 1e-5
OPTIMIZERS = {
    "sgd": OptimizerConfig("sgd", 0.05),
    "sgd-momentum": OptimizerConfig("sgd", 0.05, momentum=0.9),
    "adam": OptimizerConfig("adam", 0.005),
}


def _assert_parity(spec: ModelSpec, artifact_dir, x: np.ndarray, y: np.ndarray) -> None:
    trainer = Trainer(Artifact.load(artifact_dir))
    reference = keras_model(spec, initial_weights(spec))
    batch = spec.batch_size
    for k in range(STEPS):
        bx, by = x[k * batch:(k + 1) * batch], y[k * batch:(k + 1) * batch]
        ours = trainer.train_step(bx, by, lr=spec.optimizer.learning_rate)
        theirs = float(np.asarray(reference.train_on_batch(bx, by))[0])
        assert ours == pytest.approx(theirs, rel=1e-4, abs=1e-5), f"loss differs at step {k}"
    expected = keras_weights(spec, reference)
    for name, value in trainer.get_weights().items():
        np.testing.assert_allclose(value, expected[name], rtol=0, atol=TOLERANCE, err_msg=name)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_mlp_matches_keras(optimizer, export, breast_cancer) -> None:
    train, _ = breast_cancer
    spec = ModelSpec("mlp", (30,), 2, hidden=(32, 16), batch_size=16, optimizer=OPTIMIZERS[optimizer],
                     normalization=standardization(train.x))
    _assert_parity(spec, export(spec), train.x, train.y)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_cnn_matches_keras(optimizer, export, digits) -> None:
    train, _ = digits
    spec = ModelSpec("cnn", (8, 8, 1), 10, filters=(8, 16), hidden=(32,), batch_size=16,
                     optimizer=OPTIMIZERS[optimizer], normalization=Normalization((8.0,), (8.0,)))
    _assert_parity(spec, export(spec), train.x, train.y)


def test_pooled_cnn_matches_keras(export) -> None:
    """28x28 inputs exercise the average-pool blocks and an odd feature map (11 -> 5)."""
    rng = np.random.default_rng(3)
    spec = ModelSpec("cnn", (28, 28, 1), 10, filters=(4, 8), hidden=(16,), batch_size=8,
                     optimizer=OPTIMIZERS["sgd-momentum"])
    x = rng.uniform(0, 1, (STEPS * 8, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, STEPS * 8).astype(np.int32)
    _assert_parity(spec, export(spec), x, y)


def test_rgb_cnn_with_narrow_blocks_matches_keras(export) -> None:
    """3 input channels and a 2-filter block take the depthwise patch path on both convolutions."""
    rng = np.random.default_rng(4)
    spec = ModelSpec("cnn", (8, 8, 3), 4, filters=(2, 5), hidden=(), batch_size=8, optimizer=OPTIMIZERS["adam"])
    x = rng.uniform(-1, 1, (STEPS * 8, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 4, STEPS * 8).astype(np.int32)
    _assert_parity(spec, export(spec), x, y)
