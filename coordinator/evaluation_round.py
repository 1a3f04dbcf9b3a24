"""A federated-evaluation phase, without I/O: which devices were asked, what they reported."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

from coordinator.evaluation import Metrics, combine
from coordinator.rounds import (
    BAD_METADATA,
    DUPLICATE,
    IDENTITY_MISMATCH,
    NOT_SELECTED,
    UNKNOWN_DEVICE,
    WRONG_TASK,
)
from edge_runtime.protocol import EvaluateTask, EvaluationReport, TaskFailed


class EvaluationRound:
    def __init__(self, task: EvaluateTask, selected: frozenset[str], personal: bool = False) -> None:
        """``personal``: the artifact has personal weights; only then may a report carry personalized sums."""
        self.task = task
        self.selected = selected
        self.personal = personal
        self.rejected: Counter[str] = Counter()
        self.failed = 0
        self._reports: dict[str, EvaluationReport] = {}
        self._answered: set[str] = set()

    @property
    def all_answered(self) -> bool:
        return self.selected <= self._answered

    def offer(self, sender: str, known: bool, message: EvaluationReport | TaskFailed) -> str | None:
        reason = None
        if message.device_id != sender:
            reason = IDENTITY_MISMATCH
        elif not known:
            reason = UNKNOWN_DEVICE
        elif sender not in self.selected:
            reason = NOT_SELECTED
        elif message.task_id != self.task.task_id or message.round != self.task.round:
            reason = WRONG_TASK
        elif sender in self._answered:
            reason = DUPLICATE
        elif isinstance(message, EvaluationReport) and not _plausible(message, self.personal):
            reason = BAD_METADATA
        if reason is not None:
            self.rejected[reason] += 1
            return reason
        self._answered.add(sender)
        if isinstance(message, EvaluationReport):
            self._reports[sender] = message
        else:
            self.failed += 1
        return None

    def metrics(self) -> Metrics | None:
        combined = combine(self._reports.values())
        return replace(combined, failed=self.failed) if combined is not None else None


def _plausible(report: EvaluationReport, personal: bool) -> bool:
    """Sums a device can have computed: counts within its examples, finite losses >= 0; the personalized pair
    both given or both absent, and given only for an artifact with personal weights."""
    personalized = (report.personalized_loss_sum, report.personalized_correct)
    if personalized != (None, None) and not (personal and _sums(report.examples, *personalized)):
        return False
    return report.examples >= 0 and _sums(report.examples, report.loss_sum, report.correct)


def _sums(examples: int, loss_sum: float | None, correct: int | None) -> bool:
    return (loss_sum is not None and correct is not None and 0 <= correct <= examples
            and math.isfinite(loss_sum) and loss_sum >= 0)
