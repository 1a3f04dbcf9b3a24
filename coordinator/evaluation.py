"""Evaluating the global model: on a held-out file at the coordinator, and summed over devices' reports."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_runtime.artifact import Artifact
from edge_runtime.data import Dataset, load_data
from edge_runtime.protocol import EvaluationReport
from edge_runtime.trainer import Trainer


@dataclass(frozen=True)
class Metrics:
    loss: float
    accuracy: float
    examples: int
    devices: int = 0  # federated evaluation: devices that reported
    failed: int = 0  # federated evaluation: devices that said they could not evaluate
    # federated evaluation of an artifact with personal weights: the global weights with each device's own
    personalized_loss: float | None = None
    personalized_accuracy: float | None = None


class TestSetEvaluator:
    """Evaluates weights on a held-out file through the artifact's own ``evaluate`` signature."""

    def __init__(self, artifact: Artifact, path: Path) -> None:
        self._data: Dataset = load_data(path, artifact.manifest)
        self._trainer = Trainer(artifact)

    def __call__(self, weights: Mapping[str, np.ndarray]) -> Metrics:
        self._trainer.set_weights(weights)
        result = self._trainer.evaluate(self._data.x, self._data.y)
        return Metrics(result.loss, result.accuracy, result.examples)


def combine(reports: Iterable[EvaluationReport]) -> Metrics | None:
    """Example-weighted loss and accuracy over devices' evaluation reports; None when there are none. The
    personalized ones are over the reports that carry them (None when none does)."""
    items = [r for r in reports if r.examples > 0]
    examples = sum(r.examples for r in items)
    if not examples:
        return None
    loss, accuracy = _personalized(items)
    return Metrics(sum(r.loss_sum for r in items) / examples, sum(r.correct for r in items) / examples, examples,
                   len(items), personalized_loss=loss, personalized_accuracy=accuracy)


def _personalized(reports: Iterable[EvaluationReport]) -> tuple[float | None, float | None]:
    loss_sum, correct, examples = 0.0, 0, 0
    for r in reports:
        if r.personalized_loss_sum is not None and r.personalized_correct is not None:
            loss_sum, correct, examples = (loss_sum + r.personalized_loss_sum, correct + r.personalized_correct,
                                           examples + r.examples)
    return (loss_sum / examples, correct / examples) if examples else (None, None)
