"""Everything a fleet run needs before it starts: data split and partitioned, devices assigned, the artifact.

The split, the partition and the device table are saved in the run folder and
are reproducible from the seed; the artifact is exported with TensorFlow once
per distinct model and reused from a cache afterwards (TensorFlow is imported
only when an export is really needed).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coordinator.errors import ConfigError
from coordinator.options import key_of
from device_profiles.availability import draw
from device_profiles.datasets import checked, load_dataset, load_device_folder, train_test_split
from device_profiles.fleet_config import DEFAULT_BATCH_SIZE, DEFAULT_FILTERS, DEFAULT_LR, FleetConfig
from device_profiles.mix import assign, parse_mix
from device_profiles.partition import partition, save_partition
from device_profiles.profiles import DeviceProfile
from device_profiles.run_folder import RunFolder, write_json
from edge_runtime.artifact import Artifact
from edge_runtime.cache import cache_home
from edge_runtime.data import Dataset, read_arrays
from edge_runtime.errors import ArtifactError, DataError
from edge_runtime.manifest import FORMAT_VERSION, MANIFEST_FILE, Manifest, OptimizerConfig

if TYPE_CHECKING:
    from model_export.spec import ModelSpec

log = logging.getLogger(__name__)
_OFFSET = 6  # the draw() channel that picks a device's time zone


@dataclass(frozen=True)
class DeviceEntry:
    id: str
    index: int
    profile: str
    utc_offset: float
    examples: int
    attack: str | None = None  # the attack this device runs (device_profiles.attacks), None: an honest one


def device_id(index: int) -> str:
    return f"dev-{index:05d}"


def prepare_data(config: FleetConfig, folder: RunFolder) -> tuple[Dataset, Dataset, list[np.ndarray]]:
    """``split_data``, saved in ``folder``."""
    train, test, parts = split_data(config)
    save_data(config, folder, train, test, parts)
    return train, test, parts


def split_data(config: FleetConfig) -> tuple[Dataset, Dataset, list[np.ndarray]]:
    """Train and test sets and the per-device index arrays into the train set; nothing written yet."""
    if config.device_files:
        if config.partition is not None:
            raise ConfigError("configuration", "partition", "no value for a folder of per-device files (each "
                              "file is one device's data, used as it is)", config.partition)
        train, test, parts = _from_device_files(config, Path(config.dataset))
    else:
        data = load_dataset(config.dataset, config.label_column)
        try:
            train, test = _hold_out(config, data)
            parts = partition(train.y, config.devices, config.partition_spec, config.seed, config.min_examples)
        except ValueError as exc:
            raise DataError(config.dataset, f"cannot split {len(data)} examples as asked: {exc}") from None
    if config.test_data is not None:
        test = _test_set(config.test_data, config.label_column, train, config.dataset)
    return train, test, parts


def _hold_out(config: FleetConfig, data: Dataset) -> tuple[Dataset, Dataset]:
    """The stratified split, or all of ``data`` for training when the test set is a file of its own."""
    if config.test_data is not None:
        return data, Dataset(data.x[:0], data.y[:0])
    return train_test_split(data, config.held_out_fraction, config.seed)


def _test_set(path: Path, label_column: str, train: Dataset, dataset: str) -> Dataset:
    test = checked(*read_arrays(path, label_column), source=path)
    if test.x.shape[1:] != train.x.shape[1:]:
        raise DataError(path, f"examples have shape {test.x.shape[1:]}; expected {train.x.shape[1:]} like the "
                              f"training data ({dataset})")
    return test


def choose_family(config: FleetConfig, train: Dataset) -> str:
    """``--model``, else the family the data's shape calls for: cnn for images, mlp for anything else."""
    images = train.x.ndim == 4
    if config.model is None:
        return "cnn" if images else "mlp"
    if config.model == "cnn" and not images:
        raise DataError(config.dataset, f"examples have shape {train.x.shape[1:]}; --model cnn needs images "
                                        "(height, width, channels); use --model mlp for this data (or leave "
                                        "--model out: the fleet then chooses mlp for it)")
    return config.model


def check_artifact(path: Path, train: Dataset, test: Dataset) -> Artifact:
    """The artifact of ``--artifact``, verified and checked against the data: input shape and classes."""
    artifact = Artifact.load(path)
    manifest = artifact.manifest
    if manifest.input_shape != train.x.shape[1:]:
        raise ArtifactError(path, f"takes input of shape {manifest.input_shape}; the data's examples have shape "
                                  f"{train.x.shape[1:]}; expected an artifact exported for this data")
    classes = class_count(train, test)
    if classes > manifest.num_classes:
        raise ArtifactError(path, f"has {manifest.num_classes} classes; the data has labels up to {classes - 1}; "
                                  f"expected an artifact with at least {classes} classes")
    return artifact


def save_data(config: FleetConfig, folder: RunFolder, train: Dataset, test: Dataset, parts: list[np.ndarray]) -> None:
    for path, data in ((folder.train, train), (folder.test, test)):
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, x=data.x, y=data.y)
    spec = None if config.device_files else config.partition_spec
    save_partition(folder.partition, parts, spec, config.seed)


def _from_device_files(config: FleetConfig, source: Path) -> tuple[Dataset, Dataset, list[np.ndarray]]:
    """One device per file, used as it is; ``held_out_fraction`` of each file is held out for the coordinator
    (none with ``--test-data``)."""
    devices = load_device_folder(source, config.label_column)
    if config.devices != len(devices):
        raise DataError(source, f"holds {len(devices)} device files but --devices is {config.devices}; "
                                f"expected them to match (one device per file)")
    rng, fraction = np.random.default_rng(config.seed), config.held_out_fraction
    train_x, train_y, test_x, test_y, parts, start = [], [], [], [], [], 0
    for data in devices:
        order = rng.permutation(len(data))
        held = int(np.ceil(fraction * len(data))) if len(data) > 1 else 0
        test_x.append(data.x[order[:held]])
        test_y.append(data.y[order[:held]])
        keep = np.sort(order[held:])
        train_x.append(data.x[keep])
        train_y.append(data.y[keep])
        parts.append(np.arange(start, start + keep.size, dtype=np.int64))
        start += keep.size
    if fraction and not sum(len(y) for y in test_y):
        raise DataError(source, "too few examples to hold any out for testing; expected files of 2 or more "
                                "(or a test set of its own: --test-data)")
    return (Dataset(np.concatenate(train_x), np.concatenate(train_y)),
            Dataset(np.concatenate(test_x), np.concatenate(test_y)), parts)


def assign_devices(config: FleetConfig, profiles: dict[str, DeviceProfile],
                   parts: list[np.ndarray]) -> list[DeviceEntry]:
    """Each device's profile (exact proportions of the mix), its time zone and whether it attacks, drawn from
    the seed."""
    chosen = assign(len(parts), parse_mix(config.profiles, profiles), config.seed)
    attack = config.attack_spec
    attackers = attack.attackers(len(parts), config.seed) if attack else frozenset()
    entries = []
    for index, (profile, rows) in enumerate(zip(chosen, parts, strict=True)):
        offsets = profile.availability.utc_offsets
        offset = offsets[int(draw(config.seed, index, 0, _OFFSET) * len(offsets))]
        entries.append(DeviceEntry(device_id(index), index, profile.name, offset, int(rows.size),
                                   attack.kind if attack and index in attackers else None))
    return entries


def save_devices(path: Path, entries: list[DeviceEntry]) -> None:
    write_json(path, [asdict(e) for e in entries])


def load_devices(path: Path) -> list[DeviceEntry]:
    try:
        raw = json.loads(path.read_text())
        return [DeviceEntry(**{f.name: item[f.name] for f in fields(DeviceEntry)}) for item in raw]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(path, f"not a device table written by edgefl fleet ({exc})") from None


def export_artifact(config: FleetConfig, train: Dataset, classes: int, family: str, folder: RunFolder,
                    cache: Path) -> Path:
    """The model's artifact in ``folder.artifact``: ``--artifact``'s files, or exported once per distinct spec
    into ``cache``."""
    source = config.artifact if config.artifact is not None else _exported(config, train, classes, family, cache)
    shutil.rmtree(folder.artifact, ignore_errors=True)
    folder.artifact.mkdir(parents=True)
    manifest = Manifest.read(source)
    for name in (MANIFEST_FILE, manifest.tflite_file, manifest.weights_file):
        shutil.copyfile(source / name, folder.artifact / name)
    return folder.artifact


def model_spec(config: FleetConfig, train: Dataset, classes: int, family: str) -> ModelSpec:
    """The model the options describe, for ``train``'s examples."""
    from model_export.spec import ModelSpec, standardization

    standard = (config.normalize or "standard") == "standard"
    return ModelSpec(family=family, input_shape=tuple(train.x.shape[1:]), num_classes=classes,
                     hidden=config.hidden_sizes(family), filters=config.filters or DEFAULT_FILTERS,
                     batch_size=config.batch_size or DEFAULT_BATCH_SIZE,
                     optimizer=OptimizerConfig("sgd", config.lr or DEFAULT_LR, momentum=config.momentum or 0.0),
                     normalization=standardization(train.x) if standard else None, seed=config.seed,
                     name=f"fleet-{Path(config.dataset).stem}-{family}")


def _exported(config: FleetConfig, train: Dataset, classes: int, family: str, cache: Path) -> Path:
    spec = model_spec(config, train, classes, family)
    # Keyed by the artifact format too: an artifact cached by an older edgefl (format 1, no proximal term) is
    # not reused for a spec that has not changed.
    cached = cache / hashlib.sha256(repr((FORMAT_VERSION, spec)).encode()).hexdigest()[:24]
    if not cached.is_dir():
        log.info("exporting %s (TensorFlow, builtin ops only)", spec.name)
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=cache))
        # In a child process: TensorFlow's memory (about 1 GB) must not stay in the coordinator's process.
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            pool.submit(_export, spec, staging / "artifact", _verbosity()).result()
        with contextlib.suppress(OSError):  # a concurrent run exported the same model first
            os.replace(staging / "artifact", cached)
        shutil.rmtree(staging, ignore_errors=True)
    return cached


def _export(spec: ModelSpec, out: Path, verbosity: int) -> None:
    from model_export.cli import load_exporter

    load_exporter(verbosity)(spec, out)  # TensorFlow's start-up lines hidden unless -v


def _verbosity() -> int:
    """The ``-v`` count the logging was set up with, for the export's child process (which has no logging set up)."""
    level = logging.getLogger().getEffectiveLevel()
    return 2 if level <= logging.DEBUG else 1 if level <= logging.INFO else 0


def default_cache() -> Path:
    return cache_home() / "fleet-artifacts"


def class_count(train: Dataset, test: Dataset) -> int:
    """Classes of the model: labels are 0, 1, ..., and either split may hold the largest."""
    return int(max(train.y.max(), test.y.max())) + 1


def write_config_toml(path: Path, config: FleetConfig) -> None:
    """Every option of the run, as ``edgefl fleet --config`` reads them."""
    lines = ["# the options of this run: edgefl fleet --config fleet.toml repeats it"]
    for f in fields(config):
        value = getattr(config, f.name)
        if value is None:
            continue
        key = key_of(f.name)
        if isinstance(value, (bool, int, float)):
            text = str(value).lower() if isinstance(value, bool) else repr(value)
        elif str(f.type).startswith("tuple[tuple[str, str]"):  # a table, as (key, value) pairs
            text = "{" + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in value) + "}"
        elif isinstance(value, tuple):
            text = "[" + ", ".join(str(v) for v in value) + "]"
        else:
            text = json.dumps(str(value))
        lines.append(f"{key} = {text}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
