"""Shared fixtures: datasets from scikit-learn's bundled data, and artifacts exported once per session."""

from __future__ import annotations

import os
from collections.abc import Callable
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

