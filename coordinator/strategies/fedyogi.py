"""FedYogi (Reddi et al., ICLR 2021; Yogi: Zaheer et al., NeurIPS 2018): FedAdam with an additive ``v`` rule.

``v <- v - (1 - beta2) * delta ** 2 * sign(v - delta ** 2)``: ``v`` moves
towards the squared mean update by a step that depends on that square only,
not on how far ``v`` is from it. Once updates become small, Adam forgets a
large ``v`` geometrically and its steps grow back quickly; Yogi lowers ``v``
by small amounts and keeps the steps small. ``v`` never goes below zero: it
falls only while above ``delta ** 2``, and by less than that.

Same options and defaults as FedAdam, hence a subclass that replaces only
the rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from coordinator.server_state import Arrays
from coordinator.strategies.fedadam import FedAdam
from edge_runtime.weights import Weights


@dataclass(frozen=True)
class FedYogi(FedAdam):
    name: ClassVar[str] = "fedyogi"

    def second_moment(self, v: Arrays, squared: Weights) -> Weights:
        out: Weights = {}
        for name, old in v.items():
            previous, target = np.asarray(old, np.float64), np.asarray(squared[name], np.float64)
            out[name] = (previous - (1.0 - self.beta2) * target * np.sign(previous - target)).astype(np.float32)
        return out
