"""Datasets for fleet emulation: scikit-learn's bundled sets by name, or ``.npz``/``.csv`` files.

Files are read with ``edge_runtime.data.read_arrays`` (the device's own reader),
then checked without a manifest: ``x`` becomes float32 ``(N, ...)``, ``y``
int32 ``(N,)`` with labels >= 0. scikit-learn is imported only for a bundled set.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from device_profiles.partition import apportion
from edge_runtime.data import DEFAULT_LABEL_COLUMN, Dataset, read_arrays
from edge_runtime.errors import DataError

DATA_SUFFIXES = (".npz", ".csv")


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.reshape(-1, 8, 8, 1), digits.target  # raw pixels 0..16, as model_export.demo uses them


def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return data.data, data.target


def _wine() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_wine

    data = load_wine()
    return data.data, data.target


BUNDLED: dict[str, Callable[[], tuple[np.ndarray, np.ndarray]]] = {
    "breast_cancer": _breast_cancer, "digits": _digits, "wine": _wine,
}
KNOWN_NAMES = ", ".join(sorted(BUNDLED))


def load_dataset(name_or_path: str, label_column: str = DEFAULT_LABEL_COLUMN) -> Dataset:
    """A bundled set (``digits``, ``breast_cancer``, ``wine``) or a ``.npz`` (x, y) / ``.csv`` (label column) file."""
    if name_or_path in BUNDLED:
        try:
            x, y = BUNDLED[name_or_path]()
        except ImportError as exc:
            raise DataError(name_or_path, "bundled datasets need scikit-learn; expected it installed "
                                          "(pip install scikit-learn, or the 'dev' extra)") from exc
        return checked(x, y, name_or_path)
    source = Path(name_or_path)
    if source.is_dir():
        raise DataError(source, "is a folder; expected a .npz or .csv file (a folder of per-device files is "
                                "read with load_device_folder)")
    if not source.exists() and source.suffix.lower() not in DATA_SUFFIXES:
        raise DataError(name_or_path, f"unknown dataset; expected one of {KNOWN_NAMES}, "
                                      "or a path to a .npz (arrays x, y) or .csv (label column) file")
    x, y = read_arrays(source, label_column)
    return checked(x, y, source)


def load_device_folder(path: Path | str, label_column: str = DEFAULT_LABEL_COLUMN) -> list[Dataset]:
    """Every ``.npz``/``.csv`` file in ``path``, in sorted name order, as one device's data each."""
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(folder, "not a folder; expected a folder of per-device .npz or .csv files")
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in DATA_SUFFIXES)
    if not files:
        raise DataError(folder, "holds no .npz or .csv files; expected one data file per device")
    devices = [checked(*read_arrays(f, label_column), source=f) for f in files]
    for f, data in zip(files, devices, strict=True):
        if data.x.shape[1:] != devices[0].x.shape[1:]:
            raise DataError(f, f"examples have shape {data.x.shape[1:]}; expected {devices[0].x.shape[1:]} "
                               f"like {files[0].name}")
    return devices


def checked(x: object, y: object, source: object) -> Dataset:
    """``x`` as float32 ``(N, ...)`` with finite values, ``y`` as int32 ``(N,)`` labels >= 0."""
    xs, ys = np.asarray(x), np.asarray(y)
    if xs.ndim < 2 or xs.shape[0] == 0:
        raise DataError(source, f"x has shape {xs.shape}; expected (N, features...) with N >= 1")
    if not (np.issubdtype(xs.dtype, np.floating) or np.issubdtype(xs.dtype, np.integer)):
        raise DataError(source, f"x has dtype {xs.dtype}; expected numbers (converted to float32)")
    xs = xs.astype(np.float32)
    if not np.all(np.isfinite(xs)):
        raise DataError(source, "x contains NaN or Inf; expected finite numbers")
    if ys.shape != (xs.shape[0],):
        raise DataError(source, f"y has shape {ys.shape}; expected ({xs.shape[0]},), one label per row of x")
    whole_floats = np.issubdtype(ys.dtype, np.floating) and bool(np.all(np.mod(ys, 1) == 0))
    if not (np.issubdtype(ys.dtype, np.integer) or whole_floats):
        raise DataError(source, f"y has dtype {ys.dtype}; expected integer class labels")
    if np.any(ys < 0):
        raise DataError(source, f"label {ys[ys < 0][0].item()!r} is negative; expected class labels 0, 1, ...")
    return Dataset(np.ascontiguousarray(xs), ys.astype(np.int32))


def train_test_split(data: Dataset, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Stratified split: each label's share of the test set matches its share of ``data``; same seed, same split.

    The test set holds ``ceil(test_fraction * N)`` examples; both sets keep ``data``'s order.
    """
    n = len(data)
    n_test = int(np.ceil(test_fraction * n)) if 0 < test_fraction < 1 else 0
    if not 0 < n_test < n:
        raise ValueError(f"test_fraction: expected a fraction in (0, 1) leaving both sets non-empty, "
                         f"got {test_fraction!r} of {n} examples")
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(data.y, return_counts=True)
    takes = apportion(n_test, counts.astype(np.float64))
    test = np.concatenate([rng.permutation(np.flatnonzero(data.y == label))[:take]
                           for label, take in zip(classes, takes, strict=True)])
    is_test = np.zeros(n, dtype=bool)
    is_test[test] = True
    return Dataset(data.x[~is_test], data.y[~is_test]), Dataset(data.x[is_test], data.y[is_test])
