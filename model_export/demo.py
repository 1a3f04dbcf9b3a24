"""``edgefl demo``: export the digits cnn, then train it through the artifact alone; write the README's CSVs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from edge_runtime.artifact import Artifact
from edge_runtime.data import DEFAULT_LABEL_COLUMN, Dataset, check_arrays
from edge_runtime.manifest import Normalization, OptimizerConfig
from edge_runtime.native_logs import native_logs_hidden
from edge_runtime.train_cli import report_epochs
from edge_runtime.trainer import Trainer
from model_export.cli import load_exporter
from model_export.spec import ModelSpec

DIGITS_SPEC = ModelSpec(
    family="cnn", input_shape=(8, 8, 1), num_classes=10, filters=(16, 32), hidden=(), batch_size=32,
    optimizer=OptimizerConfig("sgd", 0.05, momentum=0.9),
    normalization=Normalization((8.0,), (8.0,)), name="digits-cnn",
)


DEMO_DEVICES = 4


def digits_split(seed: int = 0, test_fraction: float = 0.25) -> tuple[Dataset, Dataset]:
    """scikit-learn's bundled 8x8 digits, as raw pixel values 0..16, stratified into train and test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.reshape(-1, 8, 8, 1).astype(np.float32)
    y = digits.target.astype(np.int32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return Dataset(x_tr, y_tr), Dataset(x_te, y_te)


def write_tabular(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """scikit-learn's bundled breast cancer table (30 features, 2 classes) as the README's two CSV files:
    ``train.csv``, a workstation's data to normalize an export from, and ``local.csv``, a device's own data."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x_tr, x_lo, y_tr, y_lo = train_test_split(data.data, data.target, test_size=0.25, random_state=seed,
                                              stratify=data.target)
    header = [str(name).replace(" ", "_") for name in data.feature_names] + [DEFAULT_LABEL_COLUMN]
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / "train.csv", folder / "local.csv"
    for path, x, y in ((paths[0], x_tr, y_tr), (paths[1], x_lo, y_lo)):
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows([*(f"{v:.6g}" for v in row), int(label)] for row, label in zip(x, y, strict=True))
    return paths


def run(out: Path, epochs: int, verbosity: int = 0) -> int:
    out.mkdir(parents=True, exist_ok=True)
    tabular = write_tabular(out / "tabular")  # the README's export and train-local examples use these
    train, test = digits_split()
    np.savez(out / "train.npz", x=train.x, y=train.y)
    np.savez(out / "test.npz", x=test.x, y=test.y)
    for i, rows in enumerate(np.array_split(np.random.default_rng(0).permutation(len(train)), DEMO_DEVICES)):
        np.savez(out / f"device-{i}.npz", x=train.x[rows], y=train.y[rows])  # one shard per emulated device
    print(f"1/2 exporting {DIGITS_SPEC.name} to {out / 'artifact'} (TensorFlow, builtin ops only)")
    load_exporter(verbosity)(DIGITS_SPEC, out / "artifact")
    artifact = Artifact.load(out / "artifact")
    with native_logs_hidden(verbosity == 0):  # LiteRT's note on its CPU delegate
        trainer = Trainer(artifact)
    print(f"2/2 training through {artifact.manifest.tflite_file} with {trainer.backend.name}, no TensorFlow "
          f"({len(train)} train, {len(test)} test examples)")
    train_data = check_arrays(train.x, train.y, artifact.manifest)
    test_data = check_arrays(test.x, test.y, artifact.manifest)
    last = report_epochs(trainer, train_data, test_data, epochs, lr=None, seed=0)
    if last is not None:
        print(f"test accuracy after {epochs} epochs: {last.test_accuracy:.4f}")
    print(f"try it yourself: edgefl train-local --artifact {out / 'artifact'} --data {out / 'train.npz'} "
          f"--test-data {out / 'test.npz'} --epochs 5")
    print(f"or federated: the README's 'Federated training over MQTT' uses {out}/device-0..{DEMO_DEVICES - 1}.npz")
    print(f"and the README's export mlp and train-local examples use {tabular[0]} and {tabular[1]}")
    return 0
