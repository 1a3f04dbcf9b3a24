"""The coordinator's whole state between rounds: one frozen value, checkpointed whole.

It holds the global weights, the strategy's own arrays (optimizer moments,
momentum), the round counters, and ``ledger``: JSON values that wrappers
around a strategy keep across rounds (a privacy accountant's history, for
instance). Arrays are read-only, so a strategy's ``apply`` cannot change a
state it was given; it returns a new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import numpy as np

Arrays = Mapping[str, np.ndarray]
EMPTY: Arrays = MappingProxyType({})


def frozen_arrays(arrays: Mapping[str, np.ndarray]) -> Arrays:
    """A read-only view of read-only arrays (float32 unless they are integers), in the given order."""
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        array = np.asarray(value)
        array = array if array.dtype.kind in "iu" else array.astype(np.float32, copy=False)
        if array.flags.writeable:  # a copy, so the caller's array can still change without changing the state
            array = array.copy()
            array.flags.writeable = False
        out[name] = array
    return MappingProxyType(out)


@dataclass(frozen=True)
class ServerState:
    artifact_id: str
    strategy: str  # the registered name of the strategy whose arrays ``strategy_state`` holds
    weights: Arrays
    strategy_state: Arrays = field(default_factory=dict)
    next_round: int = 1
    model_version: int = 0
    committed_rounds: int = 0
    ledger: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", frozen_arrays(self.weights))
        object.__setattr__(self, "strategy_state", frozen_arrays(self.strategy_state))
        object.__setattr__(self, "ledger", MappingProxyType(dict(self.ledger)))

    def after_round(self, committed: ServerState | None) -> ServerState:
        """The state once a round has ended: ``committed`` (the strategy's result) if it committed, else this
        state with only the round counter moved on."""
        if committed is None:
            return replace(self, next_round=self.next_round + 1)
        return replace(committed, next_round=self.next_round + 1, model_version=self.model_version + 1,
                       committed_rounds=self.committed_rounds + 1)
