"""Coordinate-wise trimmed mean (Yin et al., ICML 2018).

For each coordinate, the ``k`` largest and ``k`` smallest values over the
round's ``n`` accepted updates are dropped and the rest averaged, with
``k = floor(trim * n)``, reported as ``trimmed``. With ``trim`` below 0.5,
``k`` is below ``n / 2`` and at least one value remains; the cap to the
largest ``k`` with ``2k < n`` (reported as ``trim_capped``) is only a guard.
With fewer than ``1 / trim`` updates nothing is dropped: a plain mean.
Weights (example counts) are ignored. Buffered: holds the round's updates,
see ``_robust.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from coordinator.options import want
from coordinator.strategies._robust import RobustRule
from coordinator.strategies.arith import UpdateBuffer, trimmed_mean
from coordinator.strategies.base import Diagnostics
from edge_runtime.weights import Weights


def per_side(trim: float, count: int) -> tuple[int, bool]:
    """How many values to drop from each side of ``count``: ``floor(trim * count)``, or the largest ``k`` with
    ``2k < count`` if that is less; and whether it was capped."""
    wanted = math.floor(trim * count)
    most = (count - 1) // 2
    return min(wanted, most), wanted > most


@dataclass(frozen=True)
class TrimmedMean(RobustRule):
    name: ClassVar[str] = "trimmed-mean"
    trim: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        want(math.isfinite(self.trim) and 0 <= self.trim < 0.5, "trim", "a fraction in [0, 0.5) dropped from "
             "each side", self.trim)

    def aggregate(self, buffer: UpdateBuffer) -> tuple[Weights, Diagnostics]:
        k, capped = per_side(self.trim, buffer.count)
        return trimmed_mean(buffer, k), {"trimmed": float(k), **({"trim_capped": 1.0} if capped else {})}
