"""The ``edgefl`` command as a user runs it: export, then train-local on a CSV file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def edgefl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def _write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["label"])
    rows = [",".join([*(f"{v:.6g}" for v in row), str(label)]) for row, label in zip(x, y, strict=True)]
    path.write_text("\n".join([header, *rows]) + "\n")


def test_export_then_train_local_on_csv(tmp_path, breast_cancer) -> None:
    train, test = breast_cancer
    _write_csv(tmp_path / "train.csv", train.x, train.y)
    _write_csv(tmp_path / "test.csv", test.x, test.y)
    artifact = tmp_path / "artifact"
    exported = edgefl("export", "mlp", "--input-shape", "30", "--classes", "2", "--hidden", "16",
                      "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9",
                      "--normalize-from", str(tmp_path / "train.csv"), "--out", str(artifact))
    assert exported.returncode == 0, exported.stderr
    assert "builtin ops only" in exported.stdout
    manifest = json.loads((artifact / "manifest.json").read_text())
    assert len(manifest["normalization"]["mean"]) == 30

    trained = edgefl("train-local", "--artifact", str(artifact), "--data", str(tmp_path / "train.csv"),
                     "--test-data", str(tmp_path / "test.csv"), "--epochs", "5", "--json",
                     "--save-weights", str(tmp_path / "trained.safetensors"))
    assert trained.returncode == 0, trained.stderr
    epochs = [json.loads(line) for line in trained.stdout.splitlines() if line.startswith("{")]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5]
    assert epochs[-1]["test_accuracy"] >= 0.9
    assert (tmp_path / "trained.safetensors").stat().st_size > 0


def test_train_local_with_data_of_the_wrong_shape_says_what_was_expected(tmp_path, export) -> None:
    from model_export.spec import ModelSpec

    artifact = export(ModelSpec("mlp", (5,), 2, hidden=(4,)))
    np.savez(tmp_path / "wrong.npz", x=np.zeros((8, 7), np.float32), y=np.zeros(8, np.int32))
    result = edgefl("train-local", "--artifact", str(artifact), "--data", str(tmp_path / "wrong.npz"))
    assert result.returncode == 2
    assert "x has shape (8, 7); expected (N, 5)" in result.stderr
    assert "Traceback" not in result.stderr


def test_export_with_a_bad_spec_names_the_field(tmp_path) -> None:
    result = edgefl("export", "cnn", "--input-shape", "4,4,1", "--classes", "3", "--filters", "8,8",
                    "--out", str(tmp_path / "a"))
    assert result.returncode == 2
    assert "model spec field 'filters'" in result.stderr


def test_demo_exports_and_trains_digits(tmp_path) -> None:
    result = edgefl("demo", "--out", str(tmp_path / "demo"), "--epochs", "2")
    assert result.returncode == 0, result.stderr
    assert "test accuracy after 2 epochs" in result.stdout
    assert (tmp_path / "demo" / "artifact" / "model.tflite").is_file()


def test_bad_cli_values_fail_at_parse_time(tmp_path, export) -> None:
    from model_export.spec import ModelSpec

    artifact = str(export(ModelSpec("mlp", (5,), 2, hidden=(4,))))
    np.savez(tmp_path / "ok.npz", x=np.zeros((8, 5), np.float32), y=np.zeros(8, np.int32))
    data = str(tmp_path / "ok.npz")
    for args, message in [
        (["--epochs", "0"], "expected a positive integer, got 0"),
        (["--threads", "0"], "expected a positive integer, got 0"),
        (["--lr", "nan"], "expected a finite number > 0"),
        (["--save-weights", str(tmp_path / "missing" / "w.safetensors")], "does not exist"),
    ]:
        result = edgefl("train-local", "--artifact", artifact, "--data", data, *args)
        assert result.returncode == 2, args
        assert message in result.stderr, (args, result.stderr)


def test_export_refuses_to_overwrite_a_folder_that_is_not_an_artifact(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("keep me")
    result = edgefl("export", "mlp", "--input-shape", "4", "--classes", "2", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "holds no artifact; refusing to write into it" in result.stderr
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_version_names_the_installed_package() -> None:
    import importlib.metadata

    done = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "--version"], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0
    assert done.stdout.strip() == f"edgefl {importlib.metadata.version('edgefl')}"
