"""Where a coordinator starts: a fresh server state, or the checkpoint's, checked against the configuration.

A checkpoint continues only with ``--resume``, for the same artifact, and with
the strategy that made it (its optimizer arrays mean nothing to another);
``--reset-strategy`` keeps the checkpoint's weights and counters and starts
the configured strategy afresh.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from coordinator.checkpoint import has_checkpoint, load_checkpoint
from coordinator.config import CoordinatorConfig
from coordinator.errors import CheckpointError
from coordinator.server_state import Arrays, ServerState
from coordinator.strategies import Strategy
from edge_runtime.manifest import WeightSpec

log = logging.getLogger(__name__)


def initial_state(config: CoordinatorConfig, artifact_id: str, specs: tuple[WeightSpec, ...],
                  strategy: Strategy[Any], initial_weights: Callable[[], Arrays]) -> ServerState:
    folder = config.state_dir
    if config.resume and has_checkpoint(folder):
        state = load_checkpoint(folder, specs)
        if state.artifact_id != artifact_id:
            raise CheckpointError(f"{folder}: checkpoint is for artifact {state.artifact_id}, not {artifact_id} "
                                  f"({config.artifact})")
        log.info("resuming at round %d, model version %d", state.next_round, state.model_version)
        return _with_strategy(config, state, strategy)
    if has_checkpoint(folder):
        raise CheckpointError(f"{folder} already holds a checkpoint; pass --resume to continue it, or choose "
                              "another --state-dir")
    weights = initial_weights()
    return ServerState(artifact_id, strategy.name, weights, strategy.init(weights))


def _with_strategy(config: CoordinatorConfig, state: ServerState, strategy: Strategy[Any]) -> ServerState:
    """The checkpoint's strategy arrays, if they are this strategy's; fresh ones with --reset-strategy."""
    fresh = strategy.init(state.weights)
    if config.reset_strategy:
        log.info("starting strategy %s afresh (the checkpoint's was %s)", strategy.name, state.strategy)
        return replace(state, strategy=strategy.name, strategy_state=fresh)
    if state.strategy != strategy.name:
        raise CheckpointError(f"{config.state_dir}: the checkpoint was made with strategy {state.strategy!r}, the "
                              f"configuration says {strategy.name!r}; pass --strategy {state.strategy} to continue "
                              f"it, or --reset-strategy to start {strategy.name} afresh from its weights")
    shapes = {name: (value.shape, value.dtype) for name, value in state.strategy_state.items()}
    if shapes != {name: (value.shape, value.dtype) for name, value in fresh.items()}:
        raise CheckpointError(f"{config.state_dir}: the checkpoint's {strategy.name} arrays do not fit this artifact "
                              f"(found {sorted(shapes)}); --reset-strategy starts the strategy afresh")
    return state
