"""``edgefl export keras``: a saved Keras model in, an artifact out; a frozen base stays frozen and stays home."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.artifact import Artifact
from edge_runtime.manifest import OptimizerConfig
from edge_runtime.protocol import artifact_id
from edge_runtime.trainer import Trainer
from tests.test_cli import edgefl

keras = pytest.importorskip("keras")

FEATURES, CLASSES, BATCH = 12, 3, 8


def transfer_model(seed: int = 0) -> keras.Model:
    """A two-layer base (to be frozen) under a two-layer head."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(16, activation="relu", name="base_1"),
        keras.layers.Dense(16, activation="tanh", name="base_2"),
        keras.layers.Dense(8, activation="relu", name="head_1"),
        keras.layers.Dense(CLASSES, name="head_2"),
    ], name="transfer")
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def batches(count: int, seed: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(rng.normal(size=(BATCH, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, BATCH).astype(np.int32))
            for _ in range(count)]


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keras") / "transfer.keras"
    transfer_model().save(path)
    return path


@pytest.fixture(scope="module")
def frozen_export(saved: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("frozen") / "artifact"
    result = edgefl("export", "keras", str(saved), "--trainable-from", "head_1", "--batch-size", str(BATCH),
                    "--optimizer", "sgd", "--lr", "0.1", "--momentum", "0.9", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "builtin ops only" in result.stdout and "480 frozen" in result.stdout, result.stdout
    return out


def test_a_frozen_base_is_neither_a_weight_nor_sent(frozen_export: Path) -> None:
    manifest = Artifact.load(frozen_export).manifest
    assert manifest.format_version == 2 and manifest.family == "keras"
    assert manifest.weight_names == ("head_1_kernel", "head_1_bias", "head_2_kernel", "head_2_bias")
    assert manifest.parameter_count == 16 * 8 + 8 + 8 * CLASSES + CLASSES
    assert manifest.exporter["frozen_parameters"] == FEATURES * 16 + 16 + 16 * 16 + 16
    assert manifest.base_sha256 is not None and len(manifest.base_sha256) == 64
    assert manifest.proximal and [s.inputs for s in manifest.signatures if s.key == "train"] == [
        ("x", "y", "mask", "lr", "mu")]


def test_training_with_a_frozen_base_matches_keras_and_leaves_the_base_bit_identical(frozen_export: Path) -> None:
    reference = transfer_model()
    base = [np.array(w) for w in reference.get_layer("base_1").weights + reference.get_layer("base_2").weights]
    for name in ("base_1", "base_2"):
        reference.get_layer(name).trainable = False
    reference.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trainer = Trainer(Artifact.load(frozen_export))
    for x, y in batches(6):
        ours, theirs = trainer.train_step(x, y), float(np.asarray(reference.train_on_batch(x, y)))
        assert ours == pytest.approx(theirs, abs=1e-5)
    trained = trainer.get_weights()
    for variable, name in zip(reference.trainable_weights, trainer.manifest.weight_names, strict=True):
        np.testing.assert_allclose(trained[name], np.asarray(variable), atol=1e-5)
    # The base the artifact computes with is the original one, bit for bit: Keras, with its untouched
    # base and the artifact's trained head, predicts what the artifact predicts.
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(
        base, reference.get_layer("base_1").weights + reference.get_layer("base_2").weights, strict=True))
    x = batches(1, seed=9)[0][0]
    np.testing.assert_allclose(trainer.predict(x), reference.predict(x, verbose=0), atol=1e-5)


def test_another_base_is_another_artifact(saved: Path, frozen_export: Path, tmp_path: Path) -> None:
    """A global model names its artifact by the manifest's sha256, which holds the base's: a device refuses a
    global model trained on another base because its artifact id differs."""
    from model_export.keras_export import KerasExport, export_keras

    other = transfer_model(seed=5)
    export_keras(other, tmp_path / "other", KerasExport(batch_size=BATCH, trainable_from="head_1",
                                                        optimizer=OptimizerConfig("sgd", 0.1, momentum=0.9)))
    mine, theirs = Artifact.load(frozen_export).manifest, Artifact.load(tmp_path / "other").manifest
    assert mine.weight_names == theirs.weight_names
    assert mine.base_sha256 != theirs.base_sha256
    assert (artifact_id((frozen_export / "manifest.json").read_bytes())
            != artifact_id((tmp_path / "other" / "manifest.json").read_bytes()))


def test_bad_keras_inputs_are_refused_with_what_was_expected(saved: Path, tmp_path: Path) -> None:
    missing = edgefl("export", "keras", str(tmp_path / "nope.keras"), "--out", str(tmp_path / "a"))
    assert missing.returncode != 0 and "no such file" in missing.stderr
    h5 = tmp_path / "model.h5"
    h5.write_bytes(b"not really")
    legacy = edgefl("export", "keras", str(h5), "--out", str(tmp_path / "a"))
    assert legacy.returncode != 0 and "re-saved" in legacy.stderr
    wrong = edgefl("export", "keras", str(saved), "--trainable-from", "heed", "--personal", "base_1",
                   "--out", str(tmp_path / "a"))
    assert wrong.returncode != 0
    assert "--trainable-from 'heed': no such layer; layers: base_1, base_2, head_1, head_2" in wrong.stderr
    frozen_personal = edgefl("export", "keras", str(saved), "--trainable-from", "head_1", "--personal", "base_1",
                             "--out", str(tmp_path / "a"))
    assert "--personal 'base_1': the layer has no trainable weights" in frozen_personal.stderr
    assert not (tmp_path / "a").exists()


def test_personal_layers_are_flagged_and_kept_by_a_global_model(saved: Path, tmp_path: Path) -> None:
    out = tmp_path / "personal"
    result = edgefl("export", "keras", str(saved), "--personal", "head_2", "--batch-size", str(BATCH),
                    "--out", str(out))
    assert result.returncode == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(w["name"], w["personal"]) for w in manifest["weights"]][-2:] == [("head_2_kernel", True),
                                                                             ("head_2_bias", True)]
    trainer = Trainer(Artifact.load(out))
    x, y = batches(1)[0]
    trainer.train_step(x, y)
    mine = trainer.get_weights()
    global_model = {w.name: np.zeros(w.shape, np.float32) for w in trainer.manifest.federated}
    trainer.set_weights(global_model)
    after = trainer.get_weights()
    assert all(np.array_equal(after[w.name], mine[w.name]) for w in trainer.manifest.personal)
    assert all(not after[w.name].any() for w in trainer.manifest.federated)


def test_a_uint8_image_input_is_rescaled_in_float(tmp_path: Path) -> None:
    """Only Embedding needs integer ids (it casts them itself); the rest of a model takes float32 x."""
    from model_export.keras_export import KerasExport, export_keras

    keras.utils.set_random_seed(2)
    inputs = keras.Input((4, 4, 1), dtype="uint8")
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(x))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    export_keras(model, tmp_path / "a", KerasExport(batch_size=BATCH))
    pixels = np.random.default_rng(3).integers(0, 256, (5, 4, 4, 1))
    np.testing.assert_allclose(Trainer(Artifact.load(tmp_path / "a")).predict(pixels.astype(np.float32)),
                               model.predict(pixels.astype(np.uint8), verbose=0), atol=1e-5)


def test_a_layer_shared_by_a_nested_model_and_the_outer_one_is_one_weight(tmp_path: Path) -> None:
    from model_export.keras_export import KerasExport, lower_keras

    shared = keras.layers.Dense(FEATURES, activation="tanh", name="shared")
    inner_in = keras.Input((FEATURES,))
    inner = keras.Model(inner_in, shared(inner_in), name="inner")
    inputs = keras.Input((FEATURES,))
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, name="out")(shared(inner(inputs))))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    graph = lower_keras(model, KerasExport(batch_size=BATCH))
    assert [w.name for w in graph.weights] == ["shared_kernel", "shared_bias", "out_kernel", "out_bias"]


def branching_model() -> keras.Model:
    """stem feeds two branches, ``left`` and ``right``, which are added; Keras orders them stem, left, right."""
    inputs = keras.Input((FEATURES,))
    stem = keras.layers.Dense(8, activation="relu", name="stem")(inputs)
    left = keras.layers.Dense(8, name="left")(stem)
    right = keras.layers.Dense(8, name="right")(stem)
    joined = keras.layers.Add(name="join")([left, right])
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, name="head")(joined))
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_trainable_from_freezes_what_the_layer_depends_on_not_what_comes_before_it() -> None:
    from model_export.keras_export import KerasExport, lower_keras

    graph = lower_keras(branching_model(), KerasExport(trainable_from="right"))
    assert {w.name.rsplit("_", 1)[0] for w in graph.weights} == {"left", "right", "head"}  # stem only is frozen
    assert graph.exporter["frozen_parameters"] == FEATURES * 8 + 8


def test_loss_settings_that_change_the_step_and_models_with_nothing_to_send_are_refused(tmp_path: Path) -> None:
    from model_export.errors import ExportError, UnsupportedModelError
    from model_export.keras_export import KerasExport, export_keras, lower_keras

    model = branching_model()
    summed = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="sum")
    with pytest.raises(UnsupportedModelError, match=r"reduction='sum'.*with label_smoothing=0.0, "
                                                    r"reduction='sum_over_batch_size'"):
        lower_keras(model, KerasExport(loss=summed))
    with pytest.raises(ExportError, match="no weight would travel"):
        export_keras(model, tmp_path / "a", KerasExport(trainable_from="head", personal=("head",)))
    assert not (tmp_path / "a").exists()
    inputs = keras.Input((FEATURES,))
    broadcast = keras.layers.Add(name="join")([keras.layers.Dense(4)(inputs), keras.layers.Dense(1)(inputs)])
    broadcasting = keras.Model(inputs, keras.layers.Dense(CLASSES)(broadcast))
    with pytest.raises(UnsupportedModelError, match=r"'join' \(Add\): inputs of shapes \(1,\), \(4,\); supported: "
                                                    "inputs of one shape"):
        lower_keras(broadcasting, KerasExport(loss="sparse_categorical_crossentropy"))
    channels_first = keras.Sequential([keras.Input((2, 3, 3)), keras.layers.Flatten(data_format="channels_first"),
                                       keras.layers.Dense(CLASSES)])
    with pytest.raises(UnsupportedModelError, match=r"\(Flatten\): data_format='channels_first'"):
        lower_keras(channels_first, KerasExport(loss="sparse_categorical_crossentropy"))
