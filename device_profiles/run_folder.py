"""Where an ``edgefl fleet`` run keeps its files: one place names them all."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.report import strict


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def train(self) -> Path:
        return self.root / "data" / "train.npz"

    @property
    def test(self) -> Path:
        return self.root / "data" / "test.npz"

    @property
    def partition(self) -> Path:
        return self.root / "partition.npz"

    @property
    def devices(self) -> Path:
        """One entry per emulated device: id, index, profile, UTC offset, examples."""
        return self.root / "devices.json"

    @property
    def config(self) -> Path:
        """The options the run used, every one of them (a TOML file for ``--config`` to run it again)."""
        return self.root / "fleet.toml"

    @property
    def artifact(self) -> Path:
        return self.root / "artifact"

    @property
    def coordinator(self) -> Path:
        return self.root / "coordinator"

    @property
    def rounds(self) -> Path:
        return self.root / "rounds.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report.png"

    def log(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"

    def worker_spec(self, worker: int) -> Path:
        return self.root / "workers" / f"worker-{worker}.json"

    def worker_ready(self, worker: int) -> Path:
        return self.root / "workers" / f"worker-{worker}-ready.json"

    def worker_stats(self, worker: int) -> Path:
        return self.root / "workers" / f"worker-{worker}-stats.json"

    def cache(self, worker: int) -> Path:
        return self.root / "cache" / f"worker-{worker}"


def write_json(path: Path, value: Any) -> None:
    """Write atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(strict(value), indent=1, allow_nan=False) + "\n")  # no Infinity/NaN: null
    os.replace(tmp, path)
