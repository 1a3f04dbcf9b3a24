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
from edge_runtime.data import check_arrays
from edge_runtime.errors import ArtifactError, EdgeRuntimeError
from edge_runtime.signatures import signature_mismatches
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
        self._full_mask = np.ones((self.manifest.train_batch_size,), np.float32)
        self._default_lr = np.float32(self.manifest.optimizer.learning_rate)
        problems = signature_mismatches(self.manifest, self._runner)
        if problems:
            raise ArtifactError(artifact.folder, "model.tflite does not match its manifest: " + "; ".join(problems))
        self.set_weights(artifact.initial_weights())

    def _runner(self, key: str) -> Any:
        if key not in self._runners:
            self._runners[key] = self._interpreter.get_signature_runner(key)
        return self._runners[key]

    def get_weights(self) -> Weights:
        """Every trainable tensor, personal ones included."""
        out = self._runner("get_weights")(unused=np.float32(0))
        return {name: np.array(out[name]) for name in self.manifest.weight_names}

    def set_weights(self, weights: Mapping[str, np.ndarray]) -> None:
        """Replace the weights and reset the optimizer state (and a proximal artifact's anchors).

        Given only the travelling weights (a global model), the personal ones keep their current values.
        """
        personal = self.manifest.personal
        if personal and not any(w.name in weights for w in personal):
            current = self.get_weights()
            weights = {**weights, **{w.name: current[w.name] for w in personal}}
        checked = check_weights(weights, self.manifest.weights)
        self._runner("set_weights")(**checked)

    def fit(self, x: np.ndarray, y: np.ndarray, *, epochs: int | None = None, steps: int | None = None,
            lr: float | None = None, seed: int = 0, on_step: StepCallback | None = None,
            max_examples: int | None = None, mu: float = 0.0) -> TrainResult:
        """Train for ``epochs`` passes or exactly ``steps`` batches (give one of them).

        With ``max_examples``, an epoch is a seeded sample of at most that many
        examples (drawn afresh each epoch), so a device with more data does not
        train longer or weigh more than the cap allows.

        Batches are drawn from a seeded shuffle, reshuffled every epoch. A short
        last batch is padded and masked, so every example is trained on once
        per epoch and padding contributes nothing to the gradient.

        ``mu`` > 0 adds FedProx's proximal term, pulling the travelling weights towards the values last set
        by ``set_weights``; it needs a proximal artifact (``manifest.proximal``).
        """
        if (epochs is None) == (steps is None):
            raise EdgeRuntimeError(f"give exactly one of epochs or steps, got epochs={epochs}, steps={steps}")
        if (epochs is not None and epochs < 1) or (steps is not None and steps < 1):
            raise EdgeRuntimeError(f"epochs and steps must be >= 1, got epochs={epochs}, steps={steps}")
        if max_examples is not None and max_examples < 1:
            raise EdgeRuntimeError(f"max_examples must be >= 1, got {max_examples}")
        data = check_arrays(x, y, self.manifest)
        _check_lr(lr)
        coefficient = self._check_mu(mu)
        per_epoch = min(len(data), max_examples or len(data))
        total_steps = steps if steps is not None else (epochs or 0) * self.steps_per_epoch(per_epoch)
        started = time.perf_counter()
        loss_sum, seen = 0.0, 0
        batches = self._batch_indices(len(data), seed, per_epoch)
        for step, idx in zip(range(total_steps), batches, strict=False):
            loss = self._step(data.x[idx], data.y[idx], lr, coefficient)
            loss_sum += loss * len(idx)
            seen += len(idx)
            if on_step is not None:
                on_step(step, loss)
        wall = time.perf_counter() - started
        if not all(np.all(np.isfinite(w)) for w in self.get_weights().values()):
            raise EdgeRuntimeError("training diverged: the weights hold NaN or Inf; lower the learning rate "
                                   "and set the weights again before training further")
        return TrainResult(examples_seen=seen, steps=total_steps, mean_loss=loss_sum / max(seen, 1), wall_time_s=wall)

    def train_step(self, x: np.ndarray, y: np.ndarray, lr: float | None = None, mu: float = 0.0) -> float:
        """One optimizer step on 1..``train_batch_size`` rows; returns their mean loss.

        Fewer rows than the batch size are padded with zeros and masked out,
        so the step is exactly the step on those rows alone.
        """
        data = check_arrays(x, y, self.manifest)
        _check_lr(lr)
        coefficient = self._check_mu(mu)
        if len(data) > self.manifest.train_batch_size:
            raise EdgeRuntimeError(f"train_step got {len(data)} rows; expected at most "
                                   f"{self.manifest.train_batch_size} (the artifact's train batch size)")
        return self._step(data.x, data.y, lr, coefficient)

    def _check_mu(self, mu: float) -> np.float32:
        if not (np.isfinite(mu) and mu >= 0):
            raise EdgeRuntimeError(f"proximal coefficient mu {mu!r}: expected a finite number >= 0")
        if mu > 0 and not self.manifest.proximal:
            raise EdgeRuntimeError(f"mu = {mu} asks for FedProx's proximal term, but artifact "
                                   f"{self.manifest.model_name!r} was exported without one (its train signature "
                                   "takes no mu); re-export it with this edgefl, or train with mu = 0")
        return np.float32(mu)

    def steps_per_epoch(self, examples: int) -> int:
        return -(-examples // self.manifest.train_batch_size)

    def _step(self, x: np.ndarray, y: np.ndarray, lr: float | None, mu: np.float32) -> float:
        batch, count = self.manifest.train_batch_size, len(y)
        mask = self._full_mask
        if count < batch:
            mask = np.zeros((batch,), np.float32)
            mask[:count] = 1.0
            x = np.concatenate([x, np.zeros((batch - count, *x.shape[1:]), np.float32)])
            y = np.concatenate([y, np.zeros((batch - count,), np.int32)])
        rate = self._default_lr if lr is None else np.float32(lr)
        inputs = {"x": x, "y": y, "mask": mask, "lr": rate}
        if self.manifest.proximal:
            inputs["mu"] = mu
        loss = float(self._runner("train")(**inputs)["loss"])
        if not np.isfinite(loss):
            raise EdgeRuntimeError(f"training diverged: loss is {loss}; lower the learning rate")
        return loss

    def _batch_indices(self, examples: int, seed: int, per_epoch: int) -> Iterator[np.ndarray]:
        """Endless batches of row indices: each epoch the first ``per_epoch`` rows of a fresh seeded permutation;
        the last batch of an epoch may be short."""
        rng = np.random.default_rng(seed)
        batch = self.manifest.train_batch_size
        while True:
            order = rng.permutation(examples)[:per_epoch]
            for start in range(0, per_epoch, batch):
                yield order[start:start + batch]

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


def _check_lr(lr: float | None) -> None:
    if lr is not None and not (np.isfinite(lr) and lr > 0):
        raise EdgeRuntimeError(f"learning rate {lr!r}: expected a finite number > 0")
