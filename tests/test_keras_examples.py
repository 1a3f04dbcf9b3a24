"""The Keras examples (``model_export.keras_examples``) as a user runs them, kept small: built with a few epochs,
exported by ``edgefl export keras`` with the options they recommend, then trained by a short ``edgefl fleet`` on
Mosquitto, whose final test accuracy must beat the exported model's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_runtime.artifact import Artifact
from edge_runtime.cli import main as edgefl_main
from edge_runtime.data import read_arrays
from edge_runtime.trainer import Trainer
from model_export import keras_examples as examples
from model_export.keras_examples import Example
from tests.federation_tools import SYSTEM_BROKER
from tests.test_fleet import fleet

pytestmark = pytest.mark.broker
pytest.importorskip("keras")


def export(example: Example, out: Path) -> Artifact:
    assert edgefl_main(["export", "keras", str(example.model), *example.export_options, "--out", str(out)]) == 0
    return Artifact.load(out)


def initial_accuracy(artifact: Artifact, test: Path) -> float:
    x, y = read_arrays(test)
    return Trainer(artifact).evaluate(x, y).accuracy


def federate(example: Example, artifact: Artifact, out: Path, federation: str) -> float:
    anytime = out.parent / "anytime.toml"
    anytime.write_text("")  # no eligibility constraints: every device trains when selected
    done = fleet(out, "--artifact", str(artifact.folder), "--dataset", str(example.train), "--test-data",
                 str(example.test), "--devices", "6", "--rounds", "3", "--partition", "iid", "--policy", str(anytime),
                 "--profiles", "pi-5", "--round-interval", "0", "--fraction", "0.5", "--min-clients", "3",
                 "--local-epochs", "3", "--broker", SYSTEM_BROKER, "--federation", federation, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["committed"] >= 2, summary
    return float(summary["final_accuracy"])


def test_the_digits_transfer_fine_tunes_its_head_alone_in_a_fleet(tmp_path: Path, federation: str) -> None:
    example = examples.write_digits(tmp_path / "digits", pretrain_epochs=3)
    assert example.accuracies[0].value > 0.5  # pre-training on 0-4 learned something even in 3 epochs
    artifact = export(example, tmp_path / "artifact")
    manifest = artifact.manifest
    assert manifest.weight_names[0].startswith(examples.DIGITS_HEAD) and manifest.base_sha256 is not None
    assert manifest.parameter_count == 2501 and manifest.exporter["frozen_parameters"] == 11568
    before = initial_accuracy(artifact, example.test)
    after = federate(example, artifact, tmp_path / "run", federation)
    assert after > before + 0.15, (before, after)


def test_the_text_classifier_trains_from_scratch_in_a_fleet(tmp_path: Path, federation: str) -> None:
    example = examples.write_text(tmp_path / "text")
    x, y = read_arrays(example.train)
    assert x.shape[1:] == (examples.LENGTH,) and x.max() < examples.VOCABULARY and set(y) == set(range(4))
    artifact = export(example, tmp_path / "artifact")
    assert artifact.manifest.base_sha256 is None  # nothing frozen
    before = initial_accuracy(artifact, example.test)
    after = federate(example, artifact, tmp_path / "run", federation)
    assert after > before + 0.3, (before, after)
