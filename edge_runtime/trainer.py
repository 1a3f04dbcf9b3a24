"""Train, evaluate and predict through an artifact's signatures, with no TensorFlow."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_runtime.artifact import Artifact
from edge_runtime.backend import Backend, select_backend
from edge_runtime.data import Dataset, check_arrays
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.weights import Weights, check_weights

log = logging.getLogger(__name__)

EVAL_CHUNK = 1024
StepCallback = Callable[[int, float], None]


@dataclass(frozen=True)
class TrainResult:
    """What one call to ``Trainer.fit`` did."""

    examples_seen: int
    steps: int
    mean_loss: float
    wall_time_s: float


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    examples: int


class Trainer:
    """One interpreter over one artifact, holding the current weights and optimizer state.

    Weights start as the artifact's initial weights. ``set_weights`` replaces
    them and resets the optimizer state (as a new global model should).
    """

    def __init__(self, artifact: Artifact, backend: Backend | str | None = None,
                 num_threads: int | None = None) -> None:
        self.artifact = artifact
        self.manifest = artifact.manifest
        self.backend = backend if isinstance(backend, Backend) else select_backend(backend)
        self._interpreter = self.backend.interpreter(artifact.read_model(), num_threads=num_threads)
        self._runners: dict[str, Any] = {}
        self.set_weights(artifact.initial_weights())

    def _runner(self, key: str) -> Any:
        if key not in self._runners:
            self._runners[key] = self._interpreter.get_signature_runner(key)
        return self._runners[key]

    def get_weights(self) -> Weights:
        out = self._runner("get_weights")()
        return {name: np.array(out[name]) for name in self.manifest.weight_names}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        checked = check_weights(weights, self.manifest.weights)
        self._runner("set_weights")(**checked)

    def fit(self, x: np.ndarray, y: np.ndarray, *, epochs: int | None = None, steps: int | None = None,
            lr: float | None = None, seed: int = 0, on_step: StepCallback | None = None) -> TrainResult:
        """Train for ``epochs`` passes or exactly ``steps`` batches (give one of them).

        Batches are drawn from a seeded shuffle, reshuffled every epoch. A short
        last batch is padded and masked, so every example is trained on once
        per epoch and padding contributes nothing to the gradient.
        """
        if (epochs is None) == (steps is None):
            raise EdgeRuntimeError(f"give exactly one of epochs or steps, got epochs={epochs}, steps={steps}")
        if (epochs is not None and epochs < 1) or (steps is not None and steps < 1):
            raise EdgeRuntimeError(f"epochs and steps must be >= 1, got epochs={epochs}, steps={steps}")
        data = check_arrays(x, y, self.manifest)
        rate = np.float32(self.manifest.optimizer.learning_rate if lr is None else lr)
        train = self._runner("train")
        total_steps = steps if steps is not None else (epochs or 0) * self.steps_per_epoch(len(data))
        started = time.perf_counter()
        loss_sum, seen = 0.0, 0
        for step, (bx, by, mask, count) in enumerate(self._batches(data, seed)):
            if step == total_steps:
                break
            loss = float(train(x=bx, y=by, mask=mask, lr=rate)["loss"])
            if not np.isfinite(loss):
                raise EdgeRuntimeError(f"training diverged: loss is {loss} at step {step}; lower the learning rate")
            loss_sum += loss * count
            seen += count
            if on_step is not None:
                on_step(step, loss)
        wall = time.perf_counter() - started
        return TrainResult(examples_seen=seen, steps=total_steps, mean_loss=loss_sum / max(seen, 1), wall_time_s=wall)

    def steps_per_epoch(self, examples: int) -> int:
        return -(-examples // self.manifest.train_batch_size)

    def _batches(self, data: Dataset, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, int]]:
        batch = self.manifest.train_batch_size
        rng = np.random.default_rng(seed)
        x_pad = np.zeros((batch, *self.manifest.input_shape), np.float32)
        y_pad = np.zeros((batch,), np.int32)
        while True:
            order = rng.permutation(len(data))
            for start in range(0, len(order), batch):
                idx = order[start:start + batch]
                count = len(idx)
                mask = np.zeros((batch,), np.float32)
                mask[:count] = 1.0
                if count == batch:
                    yield data.x[idx], data.y[idx], mask, count
                    continue
                bx, by = x_pad.copy(), y_pad.copy()
                bx[:count], by[:count] = data.x[idx], data.y[idx]
                yield bx, by, mask, count

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> EvalResult:
        data = check_arrays(x, y, self.manifest)
        runner = self._runner("evaluate")
        loss_sum, correct = 0.0, 0.0
        for start in range(0, len(data), EVAL_CHUNK):
            out = runner(x=data.x[start:start + EVAL_CHUNK], y=data.y[start:start + EVAL_CHUNK])
            loss_sum += float(out["loss_sum"])
            correct += float(out["correct"])
        n = len(data)
        return EvalResult(loss=loss_sum / n, accuracy=correct / n, examples=n)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits for every row of ``x``."""
        xs = check_arrays(x, np.zeros(len(x), np.int32), self.manifest).x
        runner = self._runner("infer")
        return np.concatenate([runner(x=xs[s:s + EVAL_CHUNK])["logits"] for s in range(0, len(xs), EVAL_CHUNK)])
