"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017).

Each of the round's ``n`` accepted updates is scored by the sum of its
squared L2 distances (all tensors together) to its ``n - f - 2`` nearest
other updates, ``f`` being ``attackers``, the number of malicious devices a
round is assumed to hold. Krum takes the one update with the lowest score;
Multi-Krum averages, uniformly, the ``m`` updates with the lowest scores
(``krum_select``; by default ``n - f``, at least 1, at most ``n``). Ties go
to the update that arrived first.

Blanchard et al.'s guarantee needs ``n > 2f + 2``. Below that the rule still
runs, scoring each update over ``max(1, n - f - 2)`` neighbours, but it
protects nothing: the round line says ``bound_met: 0``. Weights (example
counts) are ignored. Buffered: holds the round's updates, see ``_robust.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from coordinator.options import want
from coordinator.strategies._robust import RobustRule
from coordinator.strategies.arith import UpdateBuffer, WeightedSum, krum_scores, pairwise_sq_distances
from coordinator.strategies.base import Diagnostics
from edge_runtime.weights import Weights


def is_count(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


@dataclass(frozen=True)
class Krum(RobustRule):
    name: ClassVar[str] = "krum"
    attackers: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        want(is_count(self.attackers, 0), "attackers", "an integer >= 0 (malicious devices assumed per round)",
             self.attackers)

    def selected(self, count: int) -> int:
        """How many of ``count`` updates the aggregate averages: Krum keeps one."""
        return 1

    def aggregate(self, buffer: UpdateBuffer) -> tuple[Weights, Diagnostics]:
        n, f = buffer.count, self.attackers
        scores = krum_scores(pairwise_sq_distances(buffer.updates), f)
        chosen = np.argsort(scores, kind="stable")[:self.selected(n)]
        mean = WeightedSum(buffer.updates[0])
        for index in chosen:
            mean.add(buffer.updates[index], 1.0)
        return mean.mean(), {"selected": float(len(chosen)), "bound_met": float(n > 2 * f + 2)}


@dataclass(frozen=True)
class MultiKrum(Krum):
    name: ClassVar[str] = "multi-krum"
    krum_select: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        want(self.krum_select is None or is_count(self.krum_select, 1), "krum-select",
             "an integer >= 1 (updates averaged; default n - f)", self.krum_select)

    def selected(self, count: int) -> int:
        wanted = count - self.attackers if self.krum_select is None else self.krum_select
        return max(1, min(count, wanted))
