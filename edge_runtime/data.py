"""Local training data: ``.npz`` (arrays ``x`` and ``y``) or ``.csv`` (a label column).

Whatever the source, arrays are checked against the manifest and returned as
``x: float32 (N, *input_shape)`` and ``y: int32 (N,)``; anything that does not
fit gets a ``DataError`` saying what was found and what was expected.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.npyio import NpzFile

from edge_runtime.errors import DataError
from edge_runtime.manifest import Manifest

DEFAULT_LABEL_COLUMN = "label"


@dataclass(frozen=True)
class Dataset:
    """Examples ready for the trainer."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


def load_data(path: Path | str, manifest: Manifest, label_column: str = DEFAULT_LABEL_COLUMN) -> Dataset:
    """Load ``path`` and check it against ``manifest``."""
    x, y = read_arrays(path, label_column)
    return check_arrays(x, y, manifest, path)


def read_arrays(path: Path | str, label_column: str = DEFAULT_LABEL_COLUMN) -> tuple[np.ndarray, np.ndarray]:
    """The raw ``x`` and ``y`` arrays of a data file, not yet checked against any manifest."""
    source = Path(path)
    if source.is_dir():
        raise DataError(source, "is a folder; expected a .npz (arrays x, y) or a .csv with a label column")
    if not source.is_file():
        raise DataError(source, "no such file; expected a .npz (arrays x, y) or a .csv with a label column")
    suffix = source.suffix.lower()
    if suffix == ".npz":
        return _read_npz(source)
    if suffix == ".csv":
        return _read_csv(source, label_column)
    raise DataError(source, f"unsupported file type {suffix!r}; expected .npz or .csv")


def check_arrays(x: object, y: object, manifest: Manifest, source: object = "arrays") -> Dataset:
    """Validate and convert ``x``/``y``; flat rows are reshaped to the manifest's input shape."""
    xs, ys = np.asarray(x), np.asarray(y)
    expected_x = f"(N, {', '.join(map(str, manifest.input_shape))})"
    if xs.ndim == 0 or xs.shape[0] == 0:
        raise DataError(source, f"x holds no examples; expected shape {expected_x}")
    if not (np.issubdtype(xs.dtype, np.floating) or np.issubdtype(xs.dtype, np.integer)):
        raise DataError(source, f"x has dtype {xs.dtype}; expected numbers (converted to float32)")
    if xs.shape[1:] != manifest.input_shape:
        flat = xs.reshape(xs.shape[0], -1).shape[1]
        if xs.ndim != 2 or flat != manifest.feature_count:
            raise DataError(source, f"x has shape {xs.shape}; expected {expected_x} "
                                    f"or (N, {manifest.feature_count}) flat rows")
        xs = xs.reshape((xs.shape[0], *manifest.input_shape))
    if ys.shape != (xs.shape[0],):
        raise DataError(source, f"y has shape {ys.shape}; expected ({xs.shape[0]},), one label per row of x")
    whole_floats = np.issubdtype(ys.dtype, np.floating) and bool(np.all(np.mod(ys, 1) == 0))
    if not (np.issubdtype(ys.dtype, np.integer) or whole_floats):
        raise DataError(source, f"y has dtype {ys.dtype}; expected integer class labels")
    bad = (ys < 0) | (ys >= manifest.num_classes)
    if np.any(bad):
        raise DataError(source, f"label {ys[bad][0].item()!r} out of range; expected 0..{manifest.num_classes - 1}")
    xs = xs.astype(np.float32, copy=False)
    if not np.all(np.isfinite(xs)):
        raise DataError(source, "x contains NaN or Inf")
    return Dataset(np.ascontiguousarray(xs), ys.astype(np.int32))


def _read_npz(source: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        loaded = np.load(source, allow_pickle=False)
        if not isinstance(loaded, NpzFile):
            raise DataError(source, "holds a single array, not an .npz archive; expected arrays named x and y")
        with loaded as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(source, f"missing arrays {missing}; found {archive.files}, expected 'x' and 'y'")
            return archive["x"], archive["y"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(source, f"not a readable .npz archive: {exc}") from exc


def _read_csv(source: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(source, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(source, f"not a readable UTF-8 CSV file: {exc}") from exc
    if header is None:
        raise DataError(source, "empty file; expected a header row and one example per row")
    header = [h.strip() for h in header]
    if label_column not in header:
        raise DataError(source, f"no label column {label_column!r} in header {header}")
    label_at = header.index(label_column)
    features, labels = [], []
    for line, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(source, f"line {line} has {len(row)} fields; expected {len(header)} like the header")
        try:
            labels.append(int(row[label_at]))
            features.append([float(v) for i, v in enumerate(row) if i != label_at])
        except ValueError as exc:
            raise DataError(source, f"line {line}: {exc}; expected numbers and an integer label") from exc
    return np.asarray(features, dtype=np.float32), np.asarray(labels)
