"""Aggregation strategies, one per file, and the registry that builds one from its name and options.

Every strategy's hyperparameters are named like their command-line options
(``server_lr`` is ``--server-lr`` and ``server-lr`` in TOML). An unknown
name, an option the strategy does not take, or a bad value is a
``ConfigError`` that lists what is valid.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from coordinator.errors import ConfigError
from coordinator.options import key_of
from coordinator.strategies.base import Diagnostics, Strategy
from coordinator.strategies.fedadagrad import FedAdagrad
from coordinator.strategies.fedadam import FedAdam
from coordinator.strategies.fedavg import FedAvg
from coordinator.strategies.fedavgm import FedAvgM
from coordinator.strategies.fedyogi import FedYogi
from coordinator.strategies.krum import Krum, MultiKrum
from coordinator.strategies.median import Median
from coordinator.strategies.trimmed_mean import TrimmedMean

__all__ = ["HYPERPARAMETERS", "STRATEGIES", "Diagnostics", "Strategy", "build_strategy", "options_of"]

STRATEGIES: dict[str, type[Any]] = {cls.name: cls for cls in (
    FedAvg, FedAvgM, FedAdam, FedYogi, FedAdagrad, Median, TrimmedMean, Krum, MultiKrum)}
# Every hyperparameter any strategy takes, as CoordinatorConfig fields (None there: the strategy's default).
HYPERPARAMETERS = ("server_lr", "server_momentum", "beta1", "beta2", "tau", "trim", "attackers", "krum_select")


def options_of(name: str) -> tuple[str, ...]:
    """The hyperparameters strategy ``name`` takes (field names)."""
    return tuple(f.name for f in fields(_class(name)))


def build_strategy(name: str, options: Mapping[str, Any]) -> Strategy[Any]:
    """Strategy ``name`` with the given hyperparameters (``None`` values are left at their defaults)."""
    cls = _class(name)
    given = {key: value for key, value in options.items() if value is not None}
    takes = options_of(name)
    extra = sorted(key for key in given if key not in takes)
    if extra:
        accepted = ", ".join(key_of(k) for k in takes) or "no options"
        raise ConfigError("configuration", key_of(extra[0]), f"an option of strategy {name!r}, which takes "
                          f"{accepted}", given[extra[0]])
    strategy: Strategy[Any] = cls(**given)
    return strategy


def _class(name: str) -> type[Any]:
    cls = STRATEGIES.get(name)
    if cls is None:
        raise ConfigError("configuration", "strategy", f"one of {', '.join(sorted(STRATEGIES))}", name)
    return cls
