"""An artifact folder on disk: manifest, verified ``model.tflite`` and initial weights."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from edge_runtime.errors import ArtifactError
from edge_runtime.manifest import Manifest
from edge_runtime.weights import Weights, check_weights, weights_from_bytes


@dataclass(frozen=True)
class Artifact:
    """A verified artifact folder. Build it with ``Artifact.load``."""

    folder: Path
    manifest: Manifest

    @classmethod
    def load(cls, folder: Path | str) -> Artifact:
        """Read the manifest and refuse the folder if ``model.tflite`` does not match its sha256."""
        root = Path(folder)
        if not root.is_dir():
            raise ArtifactError(root, "not a folder; expected an artifact folder written by `edgefl export`")
        manifest = Manifest.read(root)
        for name in (manifest.tflite_file, manifest.weights_file):
            if not (root / name).is_file():
                raise ArtifactError(root, f"missing {name}, which the manifest names")
        artifact = cls(root, manifest)
        artifact.read_model()
        artifact.initial_weights()
        return artifact

    @property
    def tflite_path(self) -> Path:
        return self.folder / self.manifest.tflite_file

    def read_model(self) -> bytes:
        """The bytes of ``model.tflite``, refused unless their sha256 matches the manifest."""
        return _read_verified(self.tflite_path, self.manifest.tflite_sha256)

    def initial_weights(self) -> Weights:
        """The initial weights, refused unless the file's sha256 matches the manifest."""
        content = _read_verified(self.folder / self.manifest.weights_file, self.manifest.weights_sha256)
        return check_weights(weights_from_bytes(content, self.manifest.weights_file), self.manifest.weights)


def _read_verified(path: Path, expected_sha256: str) -> bytes:
    content = path.read_bytes()
    found = hashlib.sha256(content).hexdigest()
    if found != expected_sha256:
        raise ArtifactError(path, f"sha256 {found} does not match the manifest's {expected_sha256}; "
                                  "the file was modified or corrupted, refusing to load it")
    return content
