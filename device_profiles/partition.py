"""Split a dataset's examples across emulated devices, exactly and reproducibly.

``partition`` returns one sorted ``int64`` index array per device: every example
lands on exactly one device, the same seed gives the same split, and every
device holds at least ``min_size`` examples. A split is saved as a plain
``.npz`` (no pickle) so a run can be repeated or inspected later.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict, get_args

import numpy as np

from edge_runtime.errors import DataError

PartitionKind = Literal["iid", "dirichlet", "shards", "quantity"]
KINDS: dict[str, PartitionKind] = {kind: kind for kind in get_args(PartitionKind)}
ACCEPTED_FORMS = ("iid, dirichlet:ALPHA (ALPHA > 0, e.g. dirichlet:0.5), shards:K (whole K >= 1, e.g. shards:2), "
                  "quantity:SIGMA (SIGMA > 0, e.g. quantity:1.0)")
FILE_FORMAT = "edgefl-partition"
DEVICE_FILES = "device-files"  # a saved partition's spec when every device's data came as a file of its own


@dataclass(frozen=True)
class PartitionSpec:
    """How to split: ``value`` is Dirichlet alpha, shards per device or the log-normal sigma of device sizes."""

    kind: PartitionKind
    value: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "iid":
            if self.value is not None:
                raise ValueError(f"value: iid takes no value, got {self.value!r}")
            return
        value, whole = self.value, self.kind == "shards"
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0 or (whole and value % 1):
            expected = "a whole number >= 1" if whole else "a finite number > 0"
            raise ValueError(f"value: {self.kind} needs {expected}, got {value!r}")

    def __str__(self) -> str:
        if self.value is None:
            return self.kind
        return f"{self.kind}:{int(self.value) if self.kind == 'shards' else float(self.value)!r}"


def parse_partition(text: str) -> PartitionSpec:
    """``iid``, ``dirichlet:ALPHA``, ``shards:K`` or ``quantity:SIGMA``; the inverse of ``str(spec)``."""
    name, sep, raw = text.strip().partition(":")
    kind = KINDS.get(name)
    if kind is None:
        raise ValueError(f"partition {text!r}: unknown kind {name!r}; accepted forms: {ACCEPTED_FORMS}")
    if kind != "iid" and not sep:
        raise ValueError(f"partition {text!r}: {kind} needs a value after ':'; accepted forms: {ACCEPTED_FORMS}")
    try:
        value = float(raw) if sep else None
        return PartitionSpec(kind, value)
    except ValueError as exc:
        raise ValueError(f"partition {text!r}: {exc}; accepted forms: {ACCEPTED_FORMS}") from exc


def apportion(total: int, weights: np.ndarray) -> np.ndarray:
    """Split ``total`` into whole counts proportional to ``weights`` (largest remainder, ties to the lower index)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights: expected a non-empty 1-D array of finite numbers >= 0 with a positive sum, got {w}")
    quota = total * w / w.sum()
    counts: np.ndarray = np.floor(quota).astype(np.int64)
    short = total - int(counts.sum())
    counts[np.argsort(-(quota - counts), kind="stable")[:short]] += 1
    return counts


def partition(labels: np.ndarray, devices: int, spec: PartitionSpec, seed: int, min_size: int = 1) -> list[np.ndarray]:
    """One sorted ``int64`` index array per device, covering ``range(len(labels))`` exactly once."""
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels: expected a 1-D integer array, got dtype {y.dtype} and shape {y.shape}")
    if devices < 1 or min_size < 0:
        raise ValueError(f"devices must be >= 1 and min_size >= 0, got devices={devices}, min_size={min_size}")
    if devices * min_size > y.size:
        raise ValueError(f"cannot give {devices} devices at least {min_size} example(s) each from {y.size} examples")
    rng = np.random.default_rng(seed)
    if spec.kind == "iid":
        parts = np.array_split(rng.permutation(y.size), devices)
    elif spec.kind == "quantity":
        sizes = min_size + apportion(y.size - devices * min_size, rng.lognormal(0.0, float(spec.value or 0), devices))
        parts = np.split(rng.permutation(y.size), np.cumsum(sizes)[:-1])
    elif spec.kind == "shards":
        parts = _shards(y, devices, int(spec.value or 0), rng)
    else:
        parts = _dirichlet(y, devices, float(spec.value or 0), rng)
    return [np.sort(p).astype(np.int64) for p in _fill_small(list(parts), min_size)]


def _shards(y: np.ndarray, devices: int, per_device: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Sort by label (ties in random order), cut into ``devices * per_device`` shards, deal them out at random."""
    if devices * per_device > y.size:
        raise ValueError(f"shards:{per_device} for {devices} devices needs at least {devices * per_device} examples, "
                         f"got {y.size}")
    shuffled = rng.permutation(y.size)
    shards = np.array_split(shuffled[np.argsort(y[shuffled], kind="stable")], devices * per_device)
    dealt = rng.permutation(devices * per_device).reshape(devices, per_device)
    return [np.concatenate([shards[s] for s in row]) for row in dealt]


def _dirichlet(y: np.ndarray, devices: int, alpha: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Each class is split across devices by proportions drawn from Dir(alpha)."""
    chunks: list[list[np.ndarray]] = [[] for _ in range(devices)]
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        proportions = rng.dirichlet(np.full(devices, alpha))
        if not np.all(np.isfinite(proportions)) or proportions.sum() <= 0:  # alpha so small the draw underflowed
            proportions = np.eye(devices)[rng.integers(devices)]
        for device, piece in enumerate(np.split(members, np.cumsum(apportion(members.size, proportions))[:-1])):
            chunks[device].append(piece)
    return [np.concatenate(c) if c else np.empty(0, np.int64) for c in chunks]


def _fill_small(parts: list[np.ndarray], min_size: int) -> list[np.ndarray]:
    """Top up devices below ``min_size`` (lowest index first) from the tail of the largest device."""
    while True:
        sizes = np.array([p.size for p in parts])
        short = np.flatnonzero(sizes < min_size)
        if short.size == 0:
            return parts
        small, donor = int(short[0]), int(np.argmax(sizes))  # the caller checked the total, so donor has spare
        give = min(min_size - int(sizes[small]), int(sizes[donor]) - min_size)
        parts[small] = np.concatenate([parts[small], parts[donor][-give:]])
        parts[donor] = parts[donor][:-give]


def save_partition(path: Path | str, parts: list[np.ndarray], spec: PartitionSpec | None, seed: int) -> None:
    """Write ``device-00000``... index arrays plus a JSON ``metadata`` string to an ``.npz`` (no pickle).

    ``spec`` None: the devices' data came as they are, one file each (recorded as ``DEVICE_FILES``)."""
    meta = {"format": FILE_FORMAT, "version": 1, "spec": DEVICE_FILES if spec is None else str(spec),
            "seed": int(seed), "devices": len(parts),
            "examples": int(sum(np.asarray(p).size for p in parts))}
    arrays: dict[str, Any] = {f"device-{i:05d}": np.asarray(p, dtype=np.int64) for i, p in enumerate(parts)}
    with open(path, "wb") as handle:
        np.savez(handle, metadata=np.array([json.dumps(meta)]), **arrays)


def load_partition(path: Path | str) -> tuple[list[np.ndarray], PartitionSpec | None, int]:
    """Read what ``save_partition`` wrote, checking it still covers every example exactly once."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            meta = json.loads(str(archive["metadata"][0]))
            if not isinstance(meta, dict) or meta.get("format") != FILE_FORMAT:
                raise DataError(path, f"metadata is not an {FILE_FORMAT} header; expected a file from save_partition")
            parts = [archive[f"device-{i:05d}"] for i in range(int(meta["devices"]))]
            spec = None if meta["spec"] == DEVICE_FILES else parse_partition(str(meta["spec"]))
            seed, examples = int(meta["seed"]), int(meta["examples"])
    except (OSError, KeyError, IndexError, TypeError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(path, f"not a readable partition file ({exc}); expected a .npz written by save_partition") \
            from exc
    if any(p.ndim != 1 or not np.issubdtype(p.dtype, np.integer) for p in parts):
        raise DataError(path, "a device array is not a 1-D integer array of example indices")
    together = np.sort(np.concatenate(parts)) if parts else np.empty(0, np.int64)
    if not np.array_equal(together, np.arange(examples)):
        raise DataError(path, f"device arrays do not cover indices 0..{examples - 1} exactly once")
    return [p.astype(np.int64) for p in parts], spec, seed


class PartitionSummary(TypedDict):
    """Per-device sizes and label counts; ``label_counts[d][j]`` counts ``labels[j]`` on device ``d``."""

    devices: int
    examples: int
    sizes: list[int]
    labels: list[int]
    label_counts: list[list[int]]


def summary(parts: list[np.ndarray], labels: np.ndarray) -> PartitionSummary:
    """What a run's report shows about its split (JSON-ready)."""
    y = np.asarray(labels)
    classes = np.unique(y)
    counts = [[int(c) for c in (y[p][:, None] == classes[None, :]).sum(axis=0)] for p in parts]
    return PartitionSummary(devices=len(parts), examples=int(sum(p.size for p in parts)),
                            sizes=[int(p.size) for p in parts], labels=[int(c) for c in classes], label_counts=counts)
