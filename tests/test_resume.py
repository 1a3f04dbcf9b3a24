"""Where a coordinator starts: fresh, or from a checkpoint that must fit the configured strategy. No broker."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.checkpoint import load_checkpoint, save_checkpoint
from coordinator.config import CoordinatorConfig
from coordinator.errors import CheckpointError, ConfigError
from coordinator.resume import initial_state
from coordinator.server_state import ServerState
from edge_runtime.manifest import WeightSpec

AID = "ef" * 32
SPECS = (WeightSpec("w", (2,)), WeightSpec("b", (1,)))
START = {"w": np.array([1.0, -1.0], np.float32), "b": np.array([0.5], np.float32)}


def config(tmp_path: Path, **changes: Any) -> CoordinatorConfig:
    return CoordinatorConfig(artifact=Path("artifact"), state_dir=tmp_path, **changes)


def start(cfg: CoordinatorConfig, artifact: str = AID) -> ServerState:
    return initial_state(cfg, artifact, SPECS, cfg.build_strategy(), lambda: START)


def adam_checkpoint(tmp_path: Path) -> ServerState:
    """A fedadam state after a commit: moments that are not the initial ones."""
    cfg = config(tmp_path, strategy="fedadam")
    state = start(cfg)
    moments = {name: np.asarray(value) + 0.25 for name, value in state.strategy_state.items()}
    saved = ServerState(AID, "fedadam", START, moments, next_round=4, model_version=3, committed_rounds=3,
                        ledger={"note": "kept"})
    save_checkpoint(tmp_path, saved)
    return saved


def test_a_fresh_start_has_the_strategy_initial_arrays(tmp_path: Path) -> None:
    state = start(config(tmp_path, strategy="fedadam"))
    assert (state.strategy, state.next_round, state.model_version) == ("fedadam", 1, 0)
    assert sorted(state.strategy_state) == ["m/b", "m/w", "v/b", "v/w"]
    assert all(np.all(state.strategy_state[f"m/{n}"] == 0) for n in START)


def test_resume_restores_weights_moments_counters_and_ledger_bit_exact(tmp_path: Path) -> None:
    saved = adam_checkpoint(tmp_path)
    state = start(config(tmp_path, strategy="fedadam", resume=True))
    assert (state.next_round, state.model_version, state.committed_rounds) == (4, 3, 3)
    assert dict(state.ledger) == {"note": "kept"}
    for name, value in saved.strategy_state.items():
        assert state.strategy_state[name].tobytes() == value.tobytes(), name


def test_resume_with_another_strategy_is_refused_naming_both(tmp_path: Path) -> None:
    adam_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"'fedadam'.*'fedyogi'.*--reset-strategy"):
        start(config(tmp_path, strategy="fedyogi", resume=True))


def test_reset_strategy_keeps_weights_and_counters_and_starts_afresh(tmp_path: Path) -> None:
    adam_checkpoint(tmp_path)
    state = start(config(tmp_path, strategy="fedavgm", resume=True, reset_strategy=True))
    assert (state.strategy, state.next_round, state.model_version) == ("fedavgm", 4, 3)
    assert all(np.all(value == 0) for value in state.strategy_state.values())
    assert load_checkpoint(tmp_path, SPECS).strategy == "fedadam"  # nothing written until a round commits


def test_strategy_arrays_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, ServerState(AID, "fedadam", START, {"m/w": np.zeros(3, np.float32)}))
    with pytest.raises(CheckpointError, match="do not fit"):
        start(config(tmp_path, strategy="fedadam", resume=True))


def test_a_checkpoint_is_not_overwritten_without_resume_nor_used_for_another_artifact(tmp_path: Path) -> None:
    adam_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="--resume"):
        start(config(tmp_path, strategy="fedadam"))
    with pytest.raises(CheckpointError, match="for artifact"):
        start(config(tmp_path, strategy="fedadam", resume=True), artifact="00" * 32)


@pytest.mark.parametrize(("changes", "message"), [
    ({"strategy": "fedsgd"}, "'strategy': expected one of fedadagrad, fedadam, fedavg, fedavgm, fedyogi, krum, "),
    ({"strategy": "fedavg", "beta1": 0.9}, "'beta1': expected an option of strategy 'fedavg', which takes server-lr"),
    ({"strategy": "median", "server_momentum": 0.5}, "'server-momentum'"),
    ({"strategy": "fedadam", "beta2": 1.0}, "'beta2'"),
    ({"codec": "int3"}, "'codec': expected auto or one of float32, float16"),
    ({"codec_table": (("satellite", "int8"),)}, "'codec-table.satellite': expected a link class: one of wired, "),
    ({"max_examples": 0}, "'max-examples'"),
    ({"weighting": "by-loss"}, "'weighting': expected examples or uniform"),
])
def test_bad_pipeline_options_are_refused_listing_what_is_valid(tmp_path: Path, changes: dict[str, Any],
                                                                 message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(tmp_path, **changes)
    assert message in str(info.value)
