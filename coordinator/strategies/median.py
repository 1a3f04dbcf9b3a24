"""Coordinate-wise median (Yin et al., ICML 2018).

Each coordinate of the aggregate is the median of that coordinate over the
round's accepted updates (the mean of the middle two for an even count), so
fewer than half the updates, however large, cannot drag it outside the range
of the others. Weights (example counts) are ignored. Buffered: holds the
round's updates, see ``_robust.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from coordinator.strategies._robust import RobustRule
from coordinator.strategies.arith import UpdateBuffer, coordinate_median
from coordinator.strategies.base import Diagnostics
from edge_runtime.weights import Weights


@dataclass(frozen=True)
class Median(RobustRule):
    name: ClassVar[str] = "median"

    def aggregate(self, buffer: UpdateBuffer) -> tuple[Weights, Diagnostics]:
        return coordinate_median(buffer), {}
