"""The coordinator's state folder: the whole ``ServerState``, written atomically.

``state.json`` holds the counters, the strategy's name, the ledger and the
name and sha256 of one safetensors file with every array: the global weights
as ``weights/<name>`` and the strategy's arrays as ``strategy/<name>``. A
commit writes the new arrays file first, then replaces ``state.json`` in one
rename, then removes every other arrays file, so a crash at any moment leaves
a complete checkpoint of the last commit. Arrays files are named by version and
content hash: a save never rewrites the file the current ``state.json`` names. Format 1 (weights only, FedAvg)
is still read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from coordinator.errors import CheckpointError
from coordinator.server_state import ServerState
from edge_runtime.errors import WeightsError
from edge_runtime.manifest import WeightSpec
from edge_runtime.weights import Weights, check_weights, weights_from_bytes, weights_to_bytes

STATE_FILE = "state.json"
ROUNDS_FILE = "rounds.jsonl"
FORMAT = 2
_WEIGHTS, _STRATEGY = "weights/", "strategy/"


def has_checkpoint(folder: Path) -> bool:
    return (Path(folder) / STATE_FILE).is_file()


def save_checkpoint(folder: Path, state: ServerState) -> None:
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {**{_WEIGHTS + k: v for k, v in state.weights.items()},
              **{_STRATEGY + k: v for k, v in state.strategy_state.items()}}
    content = weights_to_bytes(arrays, {"version": str(state.model_version)})
    digest = hashlib.sha256(content).hexdigest()
    # Named by content: a save never overwrites the file the current state.json names with other bytes.
    arrays_file = f"server-v{state.model_version}-{digest[:16]}.safetensors"
    _atomic_write(root / arrays_file, content)
    body = {"format": FORMAT, "artifact_id": state.artifact_id, "strategy": state.strategy,
            "next_round": state.next_round, "model_version": state.model_version,
            "committed_rounds": state.committed_rounds, "ledger": dict(state.ledger),
            "arrays_file": arrays_file, "arrays_sha256": digest}
    _atomic_write(root / STATE_FILE, json.dumps(body, indent=2, allow_nan=False).encode())
    for stale in (*root.glob("server-v*.safetensors"), *root.glob("global-v*.safetensors")):
        if stale.name != arrays_file:  # the previous commit's, or one a crash left before its state.json
            stale.unlink(missing_ok=True)


def load_checkpoint(folder: Path, specs: tuple[WeightSpec, ...]) -> ServerState:
    """The saved state, its weights checked against the artifact's ``specs`` (its strategy arrays are the
    strategy's to check: ``Coordinator`` compares them with what the strategy's ``init`` makes)."""
    root = Path(folder)
    body = _read_state_file(root)
    if body["format"] == 1:  # weights only, aggregated with FedAvg
        body = {**body, "strategy": "fedavg", "ledger": {}, "arrays_file": body.get("weights_file"),
                "arrays_sha256": body.get("weights_sha256")}
    try:
        name = str(body["arrays_file"])
        content = (root / name).read_bytes()
        counters = {key: int(body[key]) for key in ("next_round", "model_version", "committed_rounds")}
        artifact, strategy, ledger = str(body["artifact_id"]), str(body["strategy"]), dict(body["ledger"])
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise CheckpointError(f"{root / STATE_FILE}: unusable checkpoint: {exc!r}") from exc
    if hashlib.sha256(content).hexdigest() != body.get("arrays_sha256"):
        raise CheckpointError(f"{root / name}: sha256 does not match {STATE_FILE}; refusing it")
    arrays = weights_from_bytes(content, name)
    if body["format"] == 1:
        arrays = {_WEIGHTS + k: v for k, v in arrays.items()}
    weights = _split(arrays, _WEIGHTS)
    try:
        weights = check_weights(weights, specs)
    except WeightsError as exc:
        raise CheckpointError(f"{root / name}: does not fit the artifact: {exc}") from exc
    return ServerState(artifact, strategy, weights, _split(arrays, _STRATEGY), ledger=ledger, **counters)


def _split(arrays: Weights, prefix: str) -> Weights:
    return {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}


def _read_state_file(root: Path) -> dict[str, Any]:
    try:
        body = json.loads((root / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{root / STATE_FILE}: cannot read: {exc}") from exc
    if not isinstance(body, dict) or body.get("format") not in (1, FORMAT):
        raise CheckpointError(f"{root / STATE_FILE}: not a coordinator checkpoint of format 1 or {FORMAT}")
    return body


def _atomic_write(path: Path, content: bytes) -> None:
    partial = path.with_name(f".{path.name}.partial")
    with open(partial, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
