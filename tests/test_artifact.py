"""Artifact verification and local data loading: refusals carry what was found and what was expected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.artifact import Artifact
from edge_runtime.data import load_data
from edge_runtime.errors import ArtifactError, DataError
from edge_runtime.manifest import Manifest, ManifestError, OptimizerConfig
from model_export.spec import ModelSpec

SPEC = ModelSpec("cnn", (8, 8, 1), 4, filters=(4,), hidden=(), batch_size=8)


@pytest.fixture
def artifact_copy(export, tmp_path) -> Path:
    return Path(shutil.copytree(export(SPEC), tmp_path / "artifact"))


def test_exported_artifact_loads_and_describes_itself(artifact_copy) -> None:
    manifest = Artifact.load(artifact_copy).manifest
    assert manifest.input_shape == (8, 8, 1)
    assert manifest.num_classes == 4
    assert manifest.train_batch_size == 8
    assert manifest.weight_names == ("conv_0_kernel", "conv_0_bias", "dense_0_kernel", "dense_0_bias")
    assert [w.shape for w in manifest.weights] == [(3, 3, 1, 4), (4,), (144, 4), (4,)]
    assert manifest.optimizer == SPEC.optimizer
    assert manifest.tensorflow_version.startswith("2.")
    assert {s.key for s in manifest.signatures} == {"train", "evaluate", "infer", "get_weights", "set_weights"}


def test_tampered_tflite_is_refused(artifact_copy) -> None:
    model = artifact_copy / "model.tflite"
    content = bytearray(model.read_bytes())
    content[len(content) // 2] ^= 0xFF
    model.write_bytes(bytes(content))
    with pytest.raises(ArtifactError, match="does not match the manifest's"):
        Artifact.load(artifact_copy)


def test_tflite_swapped_after_load_is_refused_by_the_trainer(artifact_copy, export) -> None:
    from edge_runtime.trainer import Trainer

    artifact = Artifact.load(artifact_copy)
    other = export(ModelSpec("mlp", (3,), 2, hidden=(4,)))
    shutil.copy(other / "model.tflite", artifact_copy / "model.tflite")
    with pytest.raises(ArtifactError, match="refusing to load it"):
        Trainer(artifact)


def test_missing_files_and_bad_manifests_are_named(artifact_copy, tmp_path) -> None:
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        Artifact.load(tmp_path)
    manifest_path = artifact_copy / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["optimizer"]["name"] = "rmsprop"
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"'optimizer.name': expected one of \('sgd', 'adam'\), found 'rmsprop'"):
        Artifact.load(artifact_copy)
    data["optimizer"]["name"] = "sgd"
    data["colour"] = "blue"
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"\['colour'\]"):
        Artifact.load(artifact_copy)
    (artifact_copy / "weights.safetensors").unlink()
    del data["colour"]
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"missing weights\.safetensors"):
        Artifact.load(artifact_copy)


def test_manifest_round_trips_through_json(artifact_copy) -> None:
    manifest = Manifest.read(artifact_copy)
    assert Manifest.from_dict(json.loads(manifest.to_json())) == manifest
    with pytest.raises(ManifestError, match="learning_rate"):
        OptimizerConfig("sgd", -1.0)


def _manifest(artifact_copy: Path) -> Manifest:
    return Artifact.load(artifact_copy).manifest


def test_npz_of_the_wrong_shape_gets_a_clear_error(artifact_copy, tmp_path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((10, 7, 7, 1), np.float32), y=np.zeros(10, np.int32))
    with pytest.raises(DataError, match=r"x has shape \(10, 7, 7, 1\); expected \(N, 8, 8, 1\) or \(N, 64\)"):
        load_data(path, _manifest(artifact_copy))


@pytest.mark.parametrize(("x", "y", "message"), [
    (np.zeros((4, 64)), np.zeros(3, int), r"y has shape \(3,\); expected \(4,\)"),
    (np.zeros((4, 64)), np.array([0, 1, 2, 4]), "label 4 out of range; expected 0..3"),
    (np.zeros((4, 64)), np.array([0.5, 1, 2, 3]), "expected integer class labels"),
    (np.array([["a"] * 64] * 4), np.zeros(4, int), "x has dtype <U1; expected numbers"),
    (np.full((4, 64), np.nan), np.zeros(4, int), "NaN or Inf"),
])
def test_bad_arrays_are_refused(artifact_copy, tmp_path, x, y, message) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=x, y=y)
    with pytest.raises(DataError, match=message):
        load_data(path, _manifest(artifact_copy))


def test_npz_without_y_names_the_missing_array(artifact_copy, tmp_path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((2, 64)), labels=np.zeros(2))
    with pytest.raises(DataError, match=r"missing arrays \['y'\]"):
        load_data(path, _manifest(artifact_copy))


def test_csv_with_a_label_column_loads_flat_rows(artifact_copy, tmp_path) -> None:
    path = tmp_path / "data.csv"
    header = ",".join([f"p{i}" for i in range(64)] + ["label"])
    rows = [",".join(["1.5"] * 64 + [str(i % 4)]) for i in range(6)]
    path.write_text("\n".join([header, *rows]) + "\n")
    data = load_data(path, _manifest(artifact_copy))
    assert data.x.shape == (6, 8, 8, 1) and data.x.dtype == np.float32
    assert data.y.tolist() == [0, 1, 2, 3, 0, 1]


def test_csv_errors_name_the_line_or_column(artifact_copy, tmp_path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("a,b,label\n1,2,0\n")
    with pytest.raises(DataError, match=r"x has shape \(1, 2\); expected"):
        load_data(path, _manifest(artifact_copy))
    with pytest.raises(DataError, match="no label column 'target'"):
        load_data(path, _manifest(artifact_copy), label_column="target")
    path.write_text("a,b,label\n1,2\n")
    with pytest.raises(DataError, match="line 2 has 2 fields; expected 3"):
        load_data(path, _manifest(artifact_copy))
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        load_data(path.with_suffix(".txt").touch() or path.with_suffix(".txt"), _manifest(artifact_copy))


def test_tampered_initial_weights_are_refused(artifact_copy) -> None:
    from edge_runtime.weights import load_weights, save_weights

    weights = load_weights(artifact_copy / "weights.safetensors")
    weights["dense_0_bias"] = weights["dense_0_bias"] + 1.0
    save_weights(artifact_copy / "weights.safetensors", weights)
    with pytest.raises(ArtifactError, match=r"weights\.safetensors: sha256 .* does not match"):
        Artifact.load(artifact_copy)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("output_size", 10, r"infer output 'logits' has shape \(-1, 4\), expected \(-1, 10\)"),
    ("train_batch_size", 16, r"train input 'x' has shape \(8, 8, 8, 1\), expected \(16, 8, 8, 1\)"),
])
def test_a_manifest_that_disagrees_with_the_model_is_refused(artifact_copy, field, value, message) -> None:
    from edge_runtime.trainer import Trainer

    _edit_manifest(artifact_copy, field, value)
    with pytest.raises(ArtifactError, match=message):
        Trainer(Artifact.load(artifact_copy))


@pytest.mark.parametrize(("field", "value", "message"), [
    ("tflite_file", "../model.tflite", "a plain file name inside the artifact folder"),
    ("train_batch_size", True, r"'train_batch_size': expected an int >= 1"),
    ("tflite_sha256", "Z" * 64, "64 lowercase hex digits"),
    ("input_shape", [], "a non-empty list of positive ints"),
    ("signatures", [{"key": "train", "inputs": "xyz", "outputs": ["loss"]}], "a list of non-empty strings"),
    ("format_version", 3, r"one of \(1, 2\) \(this runtime's formats; a newer artifact needs a newer edgefl\)"),
    ("exporter", [1], "a JSON object"),
])
def test_bad_manifest_values_are_named(artifact_copy, field, value, message) -> None:
    _edit_manifest(artifact_copy, field, value)
    with pytest.raises(ManifestError, match=message):
        Artifact.load(artifact_copy)


@pytest.mark.parametrize(("content", "message"), [
    (b"PK\x03\x04 truncated", "not a readable .npz archive"),
    (None, "holds a single array, not an .npz archive"),
])
def test_corrupt_npz_files_get_a_clear_error(artifact_copy, tmp_path, content, message) -> None:
    path = tmp_path / "data.npz"
    if content is None:
        with open(path, "wb") as handle:
            np.save(handle, np.zeros(3))
    else:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_data(path, _manifest(artifact_copy))


def test_binary_csv_and_folders_get_a_clear_error(artifact_copy, tmp_path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="not a readable UTF-8 CSV file"):
        load_data(path, _manifest(artifact_copy))
    with pytest.raises(DataError, match="is a folder"):
        load_data(tmp_path, _manifest(artifact_copy))


def _edit_manifest(folder: Path, field: str, value: object) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    data[field] = value
    path.write_text(json.dumps(data))


def test_a_format_1_artifact_still_loads_and_trains() -> None:
    """tests/data/artifact-format-1 was exported by edgefl before format 2 (commit ac28ff1), unchanged since."""
    from edge_runtime.trainer import Trainer

    folder = Path(__file__).parent / "data" / "artifact-format-1"
    assert json.loads((folder / "manifest.json").read_text())["format_version"] == 1
    artifact = Artifact.load(folder)
    manifest = artifact.manifest
    assert (manifest.format_version, manifest.family, manifest.proximal) == (1, "mlp", False)
    assert manifest.exporter["architecture"] == {"hidden": [5], "filters": [], "seed": 0}
    assert manifest.output_size == 3 and manifest.personal == ()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype(np.float32), rng.integers(0, 3, 32)
    trainer = Trainer(artifact)
    before = trainer.evaluate(x, y).loss
    trainer.fit(x, y, epochs=20)
    assert trainer.evaluate(x, y).loss < before
    with pytest.raises(Exception, match="exported without one"):
        trainer.fit(x, y, epochs=1, mu=0.1)


def test_a_format_1_manifest_with_format_2_fields_is_refused_and_a_read_one_is_written_as_format_2(
        tmp_path: Path) -> None:
    source = Path(__file__).parent / "data" / "artifact-format-1"
    folder = Path(shutil.copytree(source, tmp_path / "v1"))
    data = json.loads((folder / "manifest.json").read_text())
    for field, value in (("proximal", True), ("exporter", {})):
        (folder / "manifest.json").write_text(json.dumps({**data, field: value}))
        with pytest.raises(ManifestError, match=rf"only format 1's fields.*\['{field}'\]"):
            Manifest.read(folder)
    personal = {**data, "weights": [{**data["weights"][0], "personal": True}, *data["weights"][1:]]}
    (folder / "manifest.json").write_text(json.dumps(personal))
    with pytest.raises(ManifestError, match="absent in format 1"):
        Manifest.read(folder)
    manifest = Manifest.read(source)
    rewritten = json.loads(manifest.to_json())
    assert rewritten["format_version"] == 2 and "family" not in rewritten
    assert Manifest.from_dict(rewritten) == manifest.__class__(**{**vars(manifest), "format_version": 2})
