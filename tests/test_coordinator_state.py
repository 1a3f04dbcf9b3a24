"""The coordinator's state folder (atomic checkpoints) and its configuration (TOML file plus flags), no broker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.checkpoint import (
    STATE_FILE,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from coordinator.config import CoordinatorConfig, build_config
from coordinator.errors import CheckpointError, ConfigError, CoordinatorError
from coordinator.server_state import ServerState
from edge_runtime.manifest import WeightSpec
from edge_runtime.weights import Weights, weights_to_bytes

# --- checkpoints --------------------------------------------------------------------------------

SPECS = (WeightSpec("conv/kernel", (3, 3, 1, 2)), WeightSpec("conv/bias", (2,)))
AID = "ab" * 32
STATE = (4, 2, 2)  # next round, model version, committed rounds
NEXT = (5, 3, 3)


def save(folder: Path, counters: tuple[int, int, int], weights: Weights, strategy: str = "fedavg",
         arrays: Weights | None = None) -> ServerState:
    state = ServerState(AID, strategy, weights, arrays or {}, *counters)
    save_checkpoint(folder, state)
    return state


def load(folder: Path) -> tuple[tuple[int, int, int], Weights]:
    state = load_checkpoint(folder, SPECS)
    assert (state.artifact_id, state.strategy) == (AID, "fedavg")
    return (state.next_round, state.model_version, state.committed_rounds), dict(state.weights)


def model(seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    weights = {spec.name: rng.standard_normal(spec.shape).astype(np.float32) for spec in SPECS}
    weights["conv/bias"][:] = [-0.0, 1e-45]  # a negative zero and a subnormal: bit-exact or not at all
    return weights


def assert_bit_exact(actual: Weights, expected: Weights) -> None:
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert (actual[name].dtype, actual[name].shape) == (value.dtype, value.shape), name
        assert actual[name].tobytes() == value.tobytes(), name


def arrays_file(folder: Path) -> str:
    name: str = json.loads((folder / STATE_FILE).read_text())["arrays_file"]
    assert name.startswith("server-v") and name.endswith(".safetensors")
    return name


def files(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


def test_save_then_load_round_trips_state_and_weights_bit_exact(tmp_path: Path) -> None:
    assert not has_checkpoint(tmp_path)
    save(tmp_path / "state", STATE, model(0))
    assert has_checkpoint(tmp_path / "state")
    state, weights = load(tmp_path / "state")
    assert state == STATE
    assert_bit_exact(weights, model(0))
    assert files(tmp_path / "state") == {STATE_FILE, arrays_file(tmp_path / "state")}


def test_a_second_save_replaces_the_previous_weights_file(tmp_path: Path) -> None:
    save(tmp_path, STATE, model(0))
    save(tmp_path, NEXT, model(1))
    assert files(tmp_path) == {STATE_FILE, arrays_file(tmp_path)}  # v2 removed, no partial file left
    assert arrays_file(tmp_path).startswith("server-v3-")
    state, weights = load(tmp_path)
    assert state == NEXT
    assert_bit_exact(weights, model(1))


def test_saving_the_same_version_again_keeps_its_weights_file(tmp_path: Path) -> None:
    save(tmp_path, STATE, model(0))
    abandoned = (5, 2, 2)
    save(tmp_path, abandoned, model(0))
    assert files(tmp_path) == {STATE_FILE, arrays_file(tmp_path)}
    state, weights = load(tmp_path)
    assert state == abandoned
    assert_bit_exact(weights, model(0))


def test_altered_weights_bytes_are_refused_naming_sha256(tmp_path: Path) -> None:
    save(tmp_path, STATE, model(0))
    path = tmp_path / arrays_file(tmp_path)
    content = bytearray(path.read_bytes())
    content[-1] ^= 0x01  # one bit of the last float: still a valid safetensors file
    path.write_bytes(bytes(content))
    with pytest.raises(CheckpointError, match="sha256") as info:
        load(tmp_path)
    assert arrays_file(tmp_path) in str(info.value)


def _edit_state(change: Callable[[dict[str, Any]], object]) -> Callable[[Path], None]:
    """Rewrite state.json as ``change(body)``."""
    def edit(folder: Path) -> None:
        body = json.loads((folder / STATE_FILE).read_text())
        (folder / STATE_FILE).write_text(json.dumps(change(body)))
    return edit


def _without(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda body: {name: value for name, value in body.items() if name != key}


def _with(**changes: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda body: {**body, **changes}


def _write_state(text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / STATE_FILE).write_text(text)


@pytest.mark.parametrize(("damage", "message"), [
    pytest.param(_write_state("{not json"), "cannot read", id="not-json"),
    pytest.param(_write_state(""), "cannot read", id="empty"),
    pytest.param(_edit_state(lambda body: [body]), "not a coordinator checkpoint", id="a-list"),
    pytest.param(_edit_state(_with(format=3)), "not a coordinator checkpoint", id="format-3"),
    pytest.param(_edit_state(_without("format")), "not a coordinator checkpoint", id="no-format"),
    pytest.param(_edit_state(_without("next_round")), "unusable", id="missing-field"),
    pytest.param(_edit_state(_with(model_version="two")), "unusable", id="wrong-type"),
    pytest.param(_edit_state(_with(arrays_file="server-v9.safetensors")), "unusable",
                 id="missing-weights-file"),
    pytest.param(_edit_state(_with(arrays_sha256="0" * 64)), "sha256", id="other-sha256"),
    pytest.param(lambda folder: (folder / STATE_FILE).unlink(), "cannot read", id="no-state-file"),
])
def test_a_damaged_state_file_is_refused(tmp_path: Path, damage: Callable[[Path], None], message: str) -> None:
    save(tmp_path, STATE, model(0))
    damage(tmp_path)
    with pytest.raises(CheckpointError, match=message) as info:
        load(tmp_path)
    assert isinstance(info.value, CoordinatorError)


@pytest.mark.parametrize("weights", [
    pytest.param({"conv/kernel": np.zeros((3, 3, 1, 4), np.float32), "conv/bias": np.zeros(4, np.float32)},
                 id="wrong-shape"),
    pytest.param({"conv/kernel": np.zeros((3, 3, 1, 2), np.float32)}, id="missing-tensor"),
    pytest.param({**model(0), "dense/bias": np.zeros(2, np.float32)}, id="extra-tensor"),
])
def test_weights_that_do_not_fit_the_specs_are_refused(tmp_path: Path, weights: Weights) -> None:
    save(tmp_path, STATE, weights)
    with pytest.raises(CheckpointError, match="does not fit the artifact"):
        load(tmp_path)


def test_a_crash_before_state_json_is_replaced_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    save(tmp_path, STATE, model(0))
    # The next commit wrote its weights file, then died before (or while) replacing state.json.
    (tmp_path / "server-v3.safetensors").write_bytes(weights_to_bytes(model(1), {"version": "3"}))
    (tmp_path / f".{STATE_FILE}.partial").write_text('{"format": 2, "trunc')
    state, weights = load(tmp_path)
    assert state == STATE
    assert_bit_exact(weights, model(0))
    save(tmp_path, NEXT, model(1))  # and the commit can be made again
    assert files(tmp_path) == {STATE_FILE, arrays_file(tmp_path)}
    assert load(tmp_path)[0] == NEXT


# --- configuration ------------------------------------------------------------------------------

REQUIRED = 'artifact = "artifacts/digits"\nstate-dir = "state"\n'


def toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "coordinator.toml"
    path.write_text(text)
    return path


def config_error(file: Path | None, overrides: dict[str, Any] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        build_config(file, overrides or {})
    return info.value


def test_a_toml_file_with_kebab_case_keys(tmp_path: Path) -> None:
    file = toml(tmp_path, REQUIRED + 'round-timeout = 30\nover-select = 1.5\ntest-data = "x.npz"\nrounds = 3\n'
                                     'fraction = 1\nmin-clients = 3\nlr = 0.01\nresume = true\nfederation = "lab-1"\n'
                                     'mqtt-version = "5"\nmax-payload = 100000\n')
    config = build_config(file, {})
    assert config.artifact == Path("artifacts/digits")
    assert config.state_dir == Path("state")
    assert config.test_data == Path("x.npz")
    assert config.round_timeout == 30.0 and isinstance(config.round_timeout, float)
    assert config.fraction == 1.0 and isinstance(config.fraction, float)
    assert (config.over_select, config.rounds, config.min_clients, config.lr) == (1.5, 3, 3, 0.01)
    assert (config.resume, config.federation, config.mqtt_version, config.max_payload) == (True, "lab-1", "5", 100000)
    # keys left out keep their defaults
    assert (config.min_reports, config.clip_norm, config.eval_every, config.broker) == (
        2, 5.0, 5, "mqtt://127.0.0.1:1883")


def test_command_line_values_win_and_none_means_not_given(tmp_path: Path) -> None:
    file = toml(tmp_path, REQUIRED + "rounds = 3\nfraction = 0.5\nresume = true\neval-every = 5\n")
    config = build_config(file, {"rounds": 7, "fraction": None, "state_dir": Path("other"), "eval_every": 0,
                                 "resume": False, "lr": None})
    assert (config.rounds, config.fraction, config.state_dir, config.eval_every) == (7, 0.5, Path("other"), 0)
    assert config.resume  # an unset store_true flag (False) does not undo the file
    assert config.lr is None


def test_the_command_line_alone_is_enough() -> None:
    config = build_config(None, {"artifact": Path("a"), "state_dir": Path("s"), "over_select": 2.0})
    assert config == CoordinatorConfig(Path("a"), Path("s"), over_select=2.0)


@pytest.mark.parametrize(("text", "key"), [
    ('state-dir = "state"\n', "artifact"),
    ('artifact = "a"\n', "state-dir"),
])
def test_a_missing_artifact_or_state_dir_is_named(tmp_path: Path, text: str, key: str) -> None:
    error = config_error(toml(tmp_path, text))
    assert error.key == key
    assert repr(key) in str(error) and f"--{key}" in str(error)
    assert config_error(None, {}).key == "artifact"


def test_an_unknown_key_is_named(tmp_path: Path) -> None:
    error = config_error(toml(tmp_path, REQUIRED + "round-timout = 30\n"))
    assert error.key == "round-timout"
    assert "'round-timout'" in str(error) and "round-timeout" in str(error)  # and the known keys are listed
    assert str(tmp_path / "coordinator.toml") in str(error)


@pytest.mark.parametrize(("line", "meant"), [
    ("round-timout = 30", "round-timeout"),
    ("round_timout = 30", "round-timeout"),  # snake case is read as the kebab-case key, and suggested so
    ("min-client = 2", "min-clients"),
    ("fedration = 'lab'", "federation"),
])
def test_a_misspelled_key_gets_a_did_you_mean(tmp_path: Path, line: str, meant: str) -> None:
    error = config_error(toml(tmp_path, REQUIRED + line + "\n"))
    assert error.expected == f"a known key (did you mean {meant!r}?)"
    assert str(error).endswith(f"expected a known key (did you mean {meant!r}?), found 'an unknown key'")


def test_a_key_like_no_other_lists_the_known_keys(tmp_path: Path) -> None:
    error = config_error(toml(tmp_path, REQUIRED + "zzz = 1\n"))
    assert "did you mean" not in str(error)
    assert error.expected.startswith("one of [") and "'round-timeout'" in error.expected


@pytest.mark.parametrize(("line", "key"), [
    ('rounds = "ten"', "rounds"),
    ("rounds = 2.5", "rounds"),
    ("fraction = true", "fraction"),
    ('round-timeout = "fast"', "round-timeout"),
    ("round-timeout = inf", "round-timeout"),
    ("over-select = nan", "over-select"),
    ("test-data = 3", "test-data"),
    ('resume = "yes"', "resume"),
    ("seed = 1.0", "seed"),
    ("max-payload = 1.5", "max-payload"),
    ("mqtt-version = 5", "mqtt-version"),
    ("federation = [1]", "federation"),
])
def test_a_value_of_the_wrong_type_is_named(tmp_path: Path, line: str, key: str) -> None:
    error = config_error(toml(tmp_path, REQUIRED + line + "\n"))
    assert error.key == key
    assert repr(key) in str(error)


@pytest.mark.parametrize(("line", "key"), [
    ("fraction = 0", "fraction"),
    ("fraction = 1.5", "fraction"),
    ("over-select = 0.9", "over-select"),
    ("min-reports = 3", "min-reports"),  # more than min-clients (2)
    ("min-clients = 0", "min-clients"),
    ("eval-every = -1", "eval-every"),
    ("round-timeout = 0", "round-timeout"),
    ("rounds = 0", "rounds"),
    ("local-epochs = 0", "local-epochs"),
    ("clip-norm = -1", "clip-norm"),
    ("server-lr = 0", "server-lr"),
    ("lr = 0", "lr"),
    ("max-payload = 0", "max-payload"),
    ('mqtt-version = "4"', "mqtt-version"),
])
def test_an_invalid_value_is_named_as_the_user_writes_it(tmp_path: Path, line: str, key: str) -> None:
    file = toml(tmp_path, REQUIRED + line + "\n")
    error = config_error(file)
    assert (error.key, error.source) == (key, str(file))
    assert f"{file}: {key!r}: expected" in str(error)


def test_an_invalid_flag_without_a_file_names_the_command_line() -> None:
    error = config_error(None, {"artifact": Path("a"), "state_dir": Path("s"), "over_select": 0.9})
    assert (error.key, error.source, error.found) == ("over-select", "command line", 0.9)


def test_an_invalid_federation_name_is_a_config_error(tmp_path: Path) -> None:
    error = config_error(toml(tmp_path, REQUIRED + 'federation = "lab/1"\n'))
    assert error.key == "federation"


@pytest.mark.parametrize("text", [REQUIRED + "rounds = \n", "[coordinator\n", 'artifact = "a"\nartifact = "b"\n'])
def test_a_toml_syntax_error_is_a_config_error(tmp_path: Path, text: str) -> None:
    file = toml(tmp_path, text)
    error = config_error(file)
    assert (error.source, error.key) == (str(file), "(file)")


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    assert config_error(tmp_path / "absent.toml").key == "(file)"
