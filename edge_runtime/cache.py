"""A device's cache: one verified folder per artifact id (the sha256 of its manifest), and the device's own
personal weights and error-feedback residual per artifact."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edge_runtime.artifact import Artifact
from edge_runtime.errors import ArtifactError, WeightsError
from edge_runtime.manifest import MANIFEST_FILE, Manifest
from edge_runtime.protocol import artifact_id
from edge_runtime.weights import Weights, check_weights, load_weights, save_weights, select

log = logging.getLogger(__name__)


def cache_home() -> Path:
    """edgefl's folder under the user's cache (``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edgefl"


def default_cache_dir(device_id: str) -> Path:
    return cache_home() / "device" / device_id


class ArtifactCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "artifacts"

    def get(self, key: str) -> Artifact | None:
        """The cached artifact ``key``, verified again; None if it is absent or no longer verifies."""
        folder = self.root / key
        if not folder.is_dir():
            return None
        try:
            if artifact_id((folder / MANIFEST_FILE).read_bytes()) != key:
                raise ArtifactError(folder, "manifest does not hash to the folder's id")
            return Artifact.load(folder)
        except (OSError, ArtifactError):
            shutil.rmtree(folder, ignore_errors=True)
            return None

    def put(self, key: str, files: Mapping[str, bytes]) -> Artifact:
        """Write the files of artifact ``key`` atomically and load them (which verifies every sha256)."""
        if MANIFEST_FILE not in files or artifact_id(files[MANIFEST_FILE]) != key:
            raise ArtifactError(None, f"artifact bundle {key} has no {MANIFEST_FILE} hashing to its id")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".partial", dir=self.root))  # one per writer
        for name, content in files.items():
            (staging / name).write_bytes(content)
        try:
            staged = Artifact.load(staging)  # verifies every sha256 before the folder becomes visible
        except ArtifactError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        target = self.root / key
        existing = self.get(key)  # another writer (an emulated device sharing this cache) may have been first
        if existing is not None:
            shutil.rmtree(staging, ignore_errors=True)
            return existing
        try:
            os.replace(staging, target)
        except OSError:  # a writer won the race between the check and the rename
            shutil.rmtree(staging, ignore_errors=True)
            if (existing := self.get(key)) is None:
                raise
            return existing
        return Artifact(target, staged.manifest)


class _DeviceFiles:
    """One safetensors file per artifact under ``<cache>/<kind>/<device id>/<artifact id>.safetensors``, replaced
    atomically. The device id is in the path because emulated devices share a cache folder."""

    def __init__(self, root: Path, kind: str, device_id: str) -> None:
        self.device_id = device_id
        self.folder = Path(root) / kind / device_id

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def read(self, key: str) -> Weights | None:
        path = self.path(key)
        return load_weights(path) if path.is_file() else None

    def write(self, key: str, weights: Weights) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        save_weights(self.path(key), weights, {"artifact_id": key})


class PersonalStore(_DeviceFiles):
    """One device's personal weights (trained on it, never sent), kept across rounds and restarts; a new artifact
    starts from its own initial personal weights."""

    def __init__(self, root: Path, device_id: str) -> None:
        super().__init__(root, "personal", device_id)

    def load(self, key: str, manifest: Manifest) -> Weights | None:
        """The personal weights saved for artifact ``key``, None if there are none; ``WeightsError`` naming the
        file if they do not fit ``manifest`` (names, shapes, float32, finite)."""
        try:
            saved = self.read(key)
            return None if saved is None else check_weights(saved, manifest.personal)
        except WeightsError as exc:
            raise WeightsError(f"personal weights in {self.path(key)} do not fit artifact {key[:12]}: {exc}") from exc

    def restore(self, key: str, artifact: Artifact) -> Weights:
        """The personal weights to train and evaluate with: the ones saved for artifact ``key``, else (none saved,
        or a file that does not fit, said in the log) the artifact's initial ones; empty if it has none."""
        specs = artifact.manifest.personal
        if not specs:
            return {}
        try:
            saved = self.load(key, artifact.manifest)
        except WeightsError as exc:
            log.warning("%s: %s; starting from the artifact's initial personal weights (the file is replaced after "
                        "the next training)", self.device_id, exc)
            saved = None
        if saved is not None:
            log.info("%s: personal weights restored from %s", self.device_id, self.path(key))
            return saved
        return select(artifact.initial_weights(), specs)

    def save(self, key: str, weights: Weights) -> None:
        self.write(key, weights)


class ResidualStore(_DeviceFiles):
    """One device's error-feedback residual (``edge_runtime.feedback``), float64, for the artifact it trains now:
    it survives a restart, and is deleted when the device moves to another artifact (a residual of one model means
    nothing to another)."""

    def __init__(self, root: Path, device_id: str) -> None:
        super().__init__(root, "feedback", device_id)

    def restore(self, key: str, manifest: Manifest) -> Weights | None:
        """The residual kept for artifact ``key`` (None: start from zero); any other artifact's is deleted. A file
        that does not fit the manifest is dropped, said in the log."""
        if self.folder.is_dir():
            for path in self.folder.glob("*.safetensors"):
                if path.name != self.path(key).name:
                    path.unlink(missing_ok=True)
        try:
            saved = self.read(key)
            if saved is not None:
                _check_residual(saved, manifest)
        except (WeightsError, OSError) as exc:
            log.warning("%s: dropping the error-feedback residual in %s: %s", self.device_id, self.path(key), exc)
            return None
        return saved

    def save(self, key: str, residual: Weights) -> None:
        self.write(key, residual)


def _check_residual(saved: Weights, manifest: Manifest) -> None:
    expected = {spec.name: spec.shape for spec in manifest.federated}
    found = {name: value.shape for name, value in saved.items()}
    if found != expected:
        raise WeightsError(f"holds {found}; expected float64 tensors {expected}")
    if any(value.dtype != np.float64 or not np.all(np.isfinite(value)) for value in saved.values()):
        raise WeightsError("expected finite float64 tensors")
