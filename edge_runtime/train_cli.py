"""``edgefl train-local``: train an artifact on a local data file, the check a user runs on a fresh device."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.argtypes import positive_float, positive_int, writable_file
from edge_runtime.artifact import Artifact
from edge_runtime.data import DEFAULT_LABEL_COLUMN, Dataset, load_data
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.trainer import StepCallback, Trainer
from edge_runtime.weights import save_weights


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float | None
    test_accuracy: float | None
    examples_seen: int
    wall_time_s: float


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("train-local", help="train an artifact on a local .npz/.csv file",
                              description="Train an artifact on local data through the TFLite interpreter "
                                          "(no TensorFlow) and print loss and accuracy per epoch.")
    p.add_argument("--artifact", required=True, type=Path, help="artifact folder written by `edgefl export`")
    p.add_argument("--data", required=True, type=Path, help=".npz with arrays x, y or .csv with a label column")
    p.add_argument("--test-data", type=Path, help="held-out .npz/.csv to evaluate after each epoch")
    p.add_argument("--label-column", default=DEFAULT_LABEL_COLUMN, help="label column of .csv files (%(default)s)")
    p.add_argument("--epochs", type=positive_int, default=1, help="passes over the data (%(default)s)")
    p.add_argument("--lr", type=positive_float, help="learning rate (default: the manifest's)")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed (%(default)s)")
    p.add_argument("--threads", type=positive_int, help="interpreter threads (default: the runtime's)")
    p.add_argument("--backend", choices=["ai_edge_litert", "tflite_runtime", "tensorflow"],
                   help="force a TFLite backend (default: first installed, or $EDGEFL_TFLITE_BACKEND)")
    p.add_argument("--save-weights", type=writable_file, help="write the trained weights to this .safetensors file")
    p.add_argument("--json", action="store_true", help="print one JSON object per epoch instead of text")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    artifact = Artifact.load(args.artifact)
    train = load_data(args.data, artifact.manifest, args.label_column)
    test = load_data(args.test_data, artifact.manifest, args.label_column) if args.test_data else None
    trainer = Trainer(artifact, backend=args.backend, num_threads=args.threads)
    if not args.json:
        print(f"{artifact.manifest.model_name}: {artifact.manifest.parameter_count} parameters, "
              f"{len(train)} training examples, backend {trainer.backend.name}")
    report_epochs(trainer, train, test, args.epochs, args.lr, args.seed, as_json=args.json,
                  progress=not args.no_progress)
    if args.save_weights:
        save_weights(args.save_weights, trainer.get_weights(), {"model": artifact.manifest.model_name})
    return 0


def train_epochs(trainer: Trainer, train: Dataset, test: Dataset | None, epochs: int, lr: float | None,
                 seed: int, on_step: StepCallback | None = None) -> Iterator[EpochReport]:
    """Train epoch by epoch, yielding an ``EpochReport`` (train and test metrics) after each."""
    if epochs < 1:
        raise EdgeRuntimeError(f"epochs must be >= 1, got {epochs}")
    # One independent shuffle seed per epoch, derived from ``seed`` (seed + epoch would overlap across seeds).
    epoch_seeds = np.random.SeedSequence(seed).generate_state(epochs)
    for epoch in range(1, epochs + 1):
        result = trainer.fit(train.x, train.y, epochs=1, lr=lr, seed=int(epoch_seeds[epoch - 1]), on_step=on_step)
        on_train = trainer.evaluate(train.x, train.y)
        on_test = trainer.evaluate(test.x, test.y) if test is not None else None
        yield EpochReport(epoch, result.mean_loss, on_train.accuracy,
                          on_test.loss if on_test else None, on_test.accuracy if on_test else None,
                          result.examples_seen, result.wall_time_s)


def report_epochs(trainer: Trainer, train: Dataset, test: Dataset | None, epochs: int, lr: float | None,
                  seed: int, as_json: bool = False, progress: bool = True) -> EpochReport | None:
    """Run ``train_epochs`` under a progress bar, printing one line per epoch; return the last report."""
    from tqdm import tqdm

    last = None
    total = epochs * trainer.steps_per_epoch(len(train))
    # disable=None: the bar shows only on a terminal, so logs and CI output stay clean.
    with tqdm(total=total, unit="step", disable=None if progress else True, leave=False, mininterval=0.2) as bar:
        for last in train_epochs(trainer, train, test, epochs, lr, seed, on_step=lambda _s, _l: bar.update(1)):
            bar.write(json.dumps(asdict(last)) if as_json else format_report(last))
    return last


def format_report(r: EpochReport) -> str:
    text = f"epoch {r.epoch:3d}  loss {r.train_loss:.4f}  accuracy {r.train_accuracy:.4f}"
    if r.test_accuracy is not None:
        text += f"  test loss {r.test_loss:.4f}  test accuracy {r.test_accuracy:.4f}"
    return text + f"  ({r.examples_seen} examples, {r.wall_time_s:.2f}s)"
