"""The ``edgefl`` command as a user runs it: export, then train-local on a CSV file."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_deploy_docs import code_lines, edgefl_argv

ROOT = Path(__file__).resolve().parents[1]


def edgefl(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", *args], cwd=cwd, capture_output=True,
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
    assert len(manifest["exporter"]["normalization"]["mean"]) == 30

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


@pytest.mark.tensorflow
def test_demo_exports_and_trains_digits_and_the_readme_examples_run_on_what_it_writes(tmp_path) -> None:
    """In a fresh folder: ``edgefl demo``, then the README's export mlp, train-local and Python examples of
    "Using it", each exactly as written."""
    readme = (ROOT / "README.md").read_text()
    using = readme[readme.index("## Using it"):readme.index("## Federated training over MQTT")]
    examples = [argv for line in code_lines(using) if (argv := edgefl_argv(line))
                and any(arg.startswith("runs/demo/tabular/") for arg in argv)]
    assert [argv[0] for argv in examples] == ["export", "train-local"]
    demo = edgefl("demo", "--epochs", "1", cwd=tmp_path)  # runs/demo, as the README says
    assert demo.returncode == 0, demo.stderr
    assert "test accuracy after 1 epochs" in demo.stdout
    assert (tmp_path / "runs" / "demo" / "artifact" / "model.tflite").is_file()
    for argv in examples:
        done = edgefl(*argv, cwd=tmp_path)
        assert done.returncode == 0, f"edgefl {shlex.join(argv)}: {done.stderr}"
    assert "epoch   5  loss" in done.stdout  # train-local's last epoch
    python = subprocess.run([sys.executable, "-c", "\n".join(code_lines(using, ("python",)))], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert python.returncode == 0, python.stderr
    loss, accuracy = map(float, python.stdout.split())
    assert loss > 0 and accuracy >= 0.9


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


def test_demo_prints_no_start_up_lines_of_tensorflow_or_litert(tmp_path) -> None:
    """absl's preamble, oneDNN, CUDA, cuInit and XNNPACK lines are hidden without -v, whatever TF_CPP_MIN_LOG_LEVEL."""
    env = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "edge_runtime.cli", "demo", "--out", str(tmp_path / "demo"),
                           "--epochs", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_a_round_on_a_terminal_is_one_short_line() -> None:
    from coordinator.report import human_line

    line = {"round": 3, "status": "committed", "closed_by": "goal", "reported": 4, "selected": 5, "late": 1,
            "rejected": {"norm_exceeded": 2}, "bytes_in": 1_234_567, "bytes_out": 345_000, "duration_s": 2.06,
            "test": {"accuracy": 0.81234, "loss": 0.5, "examples": 450},
            "federated_eval": {"accuracy": 0.79, "loss": 0.6, "examples": 300}}
    assert human_line(line, 10) == ("round 3/10  committed  4/5 reported  acc 0.8123 (devices 0.7900)  2 refused  "
                                     "in 1.2 MB  out 345.0 kB  2.1 s")
    abandoned = {**line, "status": "abandoned", "closed_by": "deadline", "reported": 1, "rejected": {},
                 "bytes_in": 900, "test": None, "federated_eval": None}
    assert human_line(abandoned) == "round 3  abandoned (deadline)  1/5 reported  acc -  in 900 B  out 345.0 kB  2.1 s"


def test_the_coordinator_prints_json_lines_when_asked_and_short_lines_otherwise(capsys) -> None:
    from coordinator.cli import print_line

    line = {"round": 1, "status": "committed", "closed_by": "goal", "reported": 2, "selected": 2, "late": 0,
            "rejected": {}, "bytes_in": 10, "bytes_out": 20, "duration_s": 1.0, "test": None, "federated_eval": None}
    print_line(line, as_json=True, rounds=3)
    print_line(line, as_json=False, rounds=3)
    first, second = capsys.readouterr().out.splitlines()
    assert json.loads(first) == line
    assert second.startswith("round 1/3  committed  2/2 reported")
