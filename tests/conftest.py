"""Shared fixtures: datasets from scikit-learn's bundled data, and artifacts exported once per session."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.data import Dataset
from model_export.spec import ModelSpec

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

Exporter = Callable[[ModelSpec], Path]


@pytest.fixture(scope="session")
def export(tmp_path_factory: pytest.TempPathFactory) -> Exporter:
    """Export a spec to an artifact folder, once per distinct spec per session."""
    from model_export.exporter import export_model

    cache: dict[ModelSpec, Path] = {}

    def _export(spec: ModelSpec) -> Path:
        if spec not in cache:
            out = tmp_path_factory.mktemp(f"artifact-{spec.family}")
            export_model(spec, out)
            cache[spec] = out
        return cache[spec]

    return _export


@pytest.fixture(scope="session")
def digits() -> tuple[Dataset, Dataset]:
    from model_export.demo import digits_split

    return digits_split(seed=0)


@pytest.fixture(scope="session")
def breast_cancer() -> tuple[Dataset, Dataset]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    data = load_breast_cancer()
    x_tr, x_te, y_tr, y_te = train_test_split(
        data.data.astype(np.float32), data.target.astype(np.int32), test_size=0.25, random_state=0,
        stratify=data.target,
    )
    return Dataset(x_tr, y_tr), Dataset(x_te, y_te)



@dataclass(frozen=True)
class FederationFiles:
    artifact: Path
    devices: tuple[Path, ...]
    test: Path


@pytest.fixture(scope="session")
def federation_files(export: Exporter, digits: tuple[Dataset, Dataset],
                     tmp_path_factory: pytest.TempPathFactory) -> FederationFiles:
    """A digits MLP artifact, the training split cut into 6 IID device files, and the test split."""
    from edge_runtime.manifest import Normalization, OptimizerConfig

    spec = ModelSpec("mlp", (64,), 10, hidden=(32,), batch_size=16, optimizer=OptimizerConfig("sgd", 0.05),
                     normalization=Normalization((0.0,), (16.0,)), name="digits-mlp")
    folder = tmp_path_factory.mktemp("federation-data")
    train, test = digits
    flat = train.x.reshape(len(train.x), -1)
    parts = np.array_split(np.random.default_rng(0).permutation(len(train.y)), 6)
    devices = []
    for i, idx in enumerate(parts):
        np.savez(folder / f"device{i}.npz", x=flat[idx], y=train.y[idx])
        devices.append(folder / f"device{i}.npz")
    np.savez(folder / "test.npz", x=test.x.reshape(len(test.x), -1), y=test.y)
    return FederationFiles(export(spec), tuple(devices), folder / "test.npz")


def write_signals(path: Path, **values: object) -> None:
    """Replace a signals file atomically, as ``edge_runtime.signals.FileSignals`` expects."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(values))
    os.replace(tmp, path)


@pytest.fixture
def federation() -> Iterator[str]:
    """A federation name of its own on the system Mosquitto, its retained messages cleared afterwards."""
    from tests.federation_tools import SYSTEM_BROKER, clear_retained

    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    clear_retained(SYSTEM_BROKER, name)


@pytest.fixture
def stop_processes() -> Iterator[None]:
    """Stops every process a test started through ``federation_tools.start``, however the test ends."""
    from tests.federation_tools import stop_launched

    yield
    stop_launched()
