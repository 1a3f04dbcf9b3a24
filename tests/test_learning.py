"""Models learn real data when trained only through the artifact (no TensorFlow in the loop)."""

from __future__ import annotations

from edge_runtime.artifact import Artifact
from edge_runtime.manifest import OptimizerConfig
from edge_runtime.trainer import Trainer
from model_export.demo import DIGITS_SPEC
from model_export.spec import ModelSpec, standardization


def test_breast_cancer_mlp_reaches_95_percent(export, breast_cancer) -> None:
    train, test = breast_cancer
    spec = ModelSpec("mlp", (30,), 2, hidden=(32, 16), batch_size=32,
                     optimizer=OptimizerConfig("sgd", 0.05, momentum=0.9),
                     normalization=standardization(train.x), name="breast-cancer-mlp")
    trainer = Trainer(Artifact.load(export(spec)))
    before = trainer.evaluate(test.x, test.y)
    result = trainer.fit(train.x, train.y, epochs=20, seed=1)
    after = trainer.evaluate(test.x, test.y)
    assert result.examples_seen == 20 * len(train)
    assert after.loss < before.loss
    assert after.accuracy >= 0.95, after


def test_digits_cnn_reaches_93_percent(export, digits) -> None:
    train, test = digits
    trainer = Trainer(Artifact.load(export(DIGITS_SPEC)))
    trainer.fit(train.x, train.y, epochs=10, seed=1)
    after = trainer.evaluate(test.x, test.y)
    assert after.examples == len(test)
    assert after.accuracy >= 0.93, after
