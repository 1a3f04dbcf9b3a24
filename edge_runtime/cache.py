"""A device's artifact cache: one verified folder per artifact id (the sha256 of its manifest)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from edge_runtime.artifact import Artifact
from edge_runtime.errors import ArtifactError
from edge_runtime.manifest import MANIFEST_FILE
from edge_runtime.protocol import artifact_id


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
