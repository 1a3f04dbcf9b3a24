"""The coordinator's state folder: the global model and the federation's state, written atomically.

``state.json`` names the weights file of the last committed version and its
sha256. A commit writes the new weights file first, then replaces
``state.json`` in one rename, then removes the previous weights file, so a
crash at any moment leaves a complete checkpoint of the last commit.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from coordinator.errors import CheckpointError
from edge_runtime.errors import WeightsError
from edge_runtime.manifest import WeightSpec
from edge_runtime.weights import Weights, check_weights, weights_from_bytes, weights_to_bytes

STATE_FILE = "state.json"
ROUNDS_FILE = "rounds.jsonl"
FORMAT = 1


@dataclass(frozen=True)
class FederationState:
    artifact_id: str
    next_round: int
    model_version: int
    committed_rounds: int


def has_checkpoint(folder: Path) -> bool:
    return (Path(folder) / STATE_FILE).is_file()


def save_checkpoint(folder: Path, state: FederationState, weights: Mapping[str, np.ndarray]) -> None:
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    previous = _read_state_file(root)["weights_file"] if has_checkpoint(root) else None
    content = weights_to_bytes(weights, {"version": str(state.model_version)})
    weights_file = f"global-v{state.model_version}.safetensors"
    _atomic_write(root / weights_file, content)
    body = {"format": FORMAT, **asdict(state), "weights_file": weights_file,
            "weights_sha256": hashlib.sha256(content).hexdigest()}
    _atomic_write(root / STATE_FILE, json.dumps(body, indent=2).encode())
    if previous and previous != weights_file:
        (root / previous).unlink(missing_ok=True)


def load_checkpoint(folder: Path, specs: tuple[WeightSpec, ...]) -> tuple[FederationState, Weights]:
    root = Path(folder)
    body = _read_state_file(root)
    try:
        state = FederationState(str(body["artifact_id"]), int(body["next_round"]), int(body["model_version"]),
                                int(body["committed_rounds"]))
        content = (root / str(body["weights_file"])).read_bytes()
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise CheckpointError(f"{root / STATE_FILE}: unusable checkpoint: {exc!r}") from exc
    if hashlib.sha256(content).hexdigest() != body.get("weights_sha256"):
        raise CheckpointError(f"{root / body['weights_file']}: sha256 does not match {STATE_FILE}; refusing it")
    try:
        weights = check_weights(weights_from_bytes(content, body["weights_file"]), specs)
    except WeightsError as exc:
        raise CheckpointError(f"{root / body['weights_file']}: does not fit the artifact: {exc}") from exc
    return state, weights


def _read_state_file(root: Path) -> dict[str, Any]:
    try:
        body = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{root / STATE_FILE}: cannot read: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise CheckpointError(f"{root / STATE_FILE}: not a format-{FORMAT} coordinator checkpoint")
    return body


def _atomic_write(path: Path, content: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
