"""``edgefl fleet`` takes the user's experiment: a test set of its own, an exported artifact, no normalization,
the model the data's shape calls for, and a day that grows with the fleet. Bad input is refused with a message
naming it, before anything in the run folder is touched."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from coordinator.errors import ConfigError
from device_profiles.errors import FleetError
from device_profiles.fleet import run_fleet
from device_profiles.fleet_config import FleetConfig, build_fleet_config
from device_profiles.partition import load_partition
from device_profiles.prepare import choose_family, model_spec, prepare_data, split_data
from device_profiles.run_folder import RunFolder
from edge_runtime.errors import ArtifactError, DataError
from tests.conftest import FederationFiles


def device_folder(tmp_path: Path, sizes: tuple[int, ...] = (10, 20, 5), features: int = 4) -> Path:
    data = tmp_path / "devices"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i, n in enumerate(sizes):
        np.savez(data / f"site-{i}.npz", x=rng.normal(size=(n, features)), y=rng.integers(0, 2, n))
    return data


def refused_untouched(config: FleetConfig, error: type[Exception], match: str) -> None:
    """``run_fleet`` refuses ``config`` naming the problem, and the run folder (a user's, with a file of theirs)
    is left as it was."""
    config.out.mkdir(parents=True, exist_ok=True)
    mine = config.out / "notes.txt"
    mine.write_text("mine")
    with pytest.raises(error, match=match):
        run_fleet(config)
    assert sorted(p.name for p in config.out.iterdir()) == ["notes.txt"] and mine.read_text() == "mine"


def test_a_test_set_of_its_own_takes_nothing_from_the_devices(tmp_path: Path) -> None:
    test = tmp_path / "test.npz"
    rng = np.random.default_rng(1)
    np.savez(test, x=rng.normal(size=(7, 13)), y=rng.integers(0, 3, 7))
    train, held, parts = split_data(FleetConfig(dataset="wine", devices=5, test_data=test))
    assert len(train) == 178 and len(held) == 7 and sum(p.size for p in parts) == 178
    folder = device_folder(tmp_path)
    np.savez(test, x=rng.normal(size=(6, 4)), y=rng.integers(0, 2, 6))
    train, held, parts = split_data(FleetConfig(dataset=str(folder), devices=3, test_data=test))
    assert [p.size for p in parts] == [10, 20, 5] and len(held) == 6


def test_a_test_set_of_another_shape_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    test = tmp_path / "test.npz"
    np.savez(test, x=np.zeros((4, 12)), y=np.zeros(4, dtype=np.int64))
    config = FleetConfig(dataset="wine", devices=5, test_data=test, out=tmp_path / "run")
    refused_untouched(config, DataError, r"test\.npz.*shape \(12,\); expected \(13,\) like the training data")


def test_a_test_fraction_with_a_test_set_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        build_fleet_config(None, {"test_data": tmp_path / "t.npz", "test_fraction": 0.3})
    assert caught.value.key == "test-fraction" and "test-data" in caught.value.expected


def test_a_partition_is_refused_for_a_folder_of_device_files(tmp_path: Path) -> None:
    config = FleetConfig(dataset=str(device_folder(tmp_path)), devices=3, partition="iid", out=tmp_path / "run")
    refused_untouched(config, ConfigError, r"'partition'.*no value for a folder of per-device files")
    parts_of = RunFolder(tmp_path / "ok")
    prepare_data(FleetConfig(dataset=config.dataset, devices=3), parts_of)
    _, spec, _ = load_partition(parts_of.partition)
    assert spec is None  # recorded as the devices' own files, not as a partition that never ran


def test_the_model_follows_the_datas_shape_unless_given(tmp_path: Path) -> None:
    wine, _, _ = split_data(FleetConfig(dataset="wine"))
    digits, _, _ = split_data(FleetConfig(dataset="digits"))
    assert choose_family(FleetConfig(), wine) == "mlp" and choose_family(FleetConfig(), digits) == "cnn"
    assert choose_family(FleetConfig(model="mlp"), digits) == "mlp"
    with pytest.raises(DataError, match=r"--model cnn needs images .*use --model mlp"):
        choose_family(FleetConfig(dataset="wine", model="cnn"), wine)
    assert model_spec(FleetConfig(), wine, 3, "mlp").hidden == (64,)
    assert model_spec(FleetConfig(), digits, 10, "cnn").filters == (16, 32)


def test_normalize_none_exports_inputs_as_they_are() -> None:
    wine, _, _ = split_data(FleetConfig(dataset="wine"))
    assert model_spec(FleetConfig(normalize="none"), wine, 3, "mlp").normalization is None
    standard = model_spec(FleetConfig(), wine, 3, "mlp").normalization
    assert standard is not None and len(standard.mean) == 13
    with pytest.raises(ConfigError) as caught:
        build_fleet_config(None, {"normalize": "minmax"})
    assert caught.value.key == "normalize" and caught.value.expected == "none or standard"


@pytest.mark.parametrize("option", [{"model": "mlp"}, {"hidden": (8,)}, {"normalize": "none"}, {"batch_size": 8}])
def test_model_options_with_an_artifact_are_refused_naming_them(option: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as caught:
        build_fleet_config(None, {"artifact": Path("artifact"), **option})
    assert caught.value.key == next(iter(option)).replace("_", "-") and "artifact" in caught.value.expected


def test_an_artifact_is_checked_against_the_data(tmp_path: Path, federation_files: FederationFiles) -> None:
    from device_profiles.fleet import _check_inputs

    devices = tmp_path / "devices"
    devices.mkdir()
    for path in federation_files.devices:
        shutil.copy(path, devices)
    config = FleetConfig(dataset=str(devices), devices=6, test_data=federation_files.test,
                         artifact=federation_files.artifact, out=tmp_path / "run")
    inputs = _check_inputs(config)
    assert (inputs.family, inputs.classes, len(inputs.test)) == ("mlp", 10, len(np.load(federation_files.test)["y"]))
    refused_untouched(FleetConfig(dataset="digits", artifact=federation_files.artifact, out=tmp_path / "run2"),
                      ArtifactError, r"takes input of shape \(64,\); the data's examples have shape \(8, 8, 1\)")
    many = tmp_path / "many.npz"
    np.savez(many, x=np.zeros((40, 64)), y=np.arange(40) % 12)
    refused_untouched(FleetConfig(dataset=str(many), devices=2, artifact=federation_files.artifact,
                                  out=tmp_path / "run3"),
                      ArtifactError, r"has 10 classes; the data has labels up to 11")


def test_the_simulated_day_grows_with_the_fleet() -> None:
    assert FleetConfig(devices=50).day_length_s == 48.0
    assert FleetConfig(devices=300).day_length_s == pytest.approx(288.0)
    assert FleetConfig(devices=300, day_seconds=30).day_length_s == 30.0


def test_an_artifact_inside_the_run_folder_is_refused_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "run"
    (out / "artifact").mkdir(parents=True)
    (out / "artifact" / "manifest.json").write_text("{}")
    config = FleetConfig(out=out, artifact=out / "artifact", devices=5)
    with pytest.raises(FleetError, match="inside the run folder"):
        run_fleet(config)
    assert (out / "artifact" / "manifest.json").read_text() == "{}"


def test_a_late_first_round_and_deadline_rounds_are_said_with_the_option_that_helps() -> None:
    from device_profiles.fleet import time_warnings

    config = FleetConfig(devices=300)
    lines = [{"sim_time": 5.36 * 3600, "closed_by": "deadline"}, {"sim_time": 6 * 3600, "closed_by": "goal"},
             {"sim_time": 7 * 3600, "closed_by": "deadline"}]
    warnings = time_warnings(config, lines, 0.0)
    assert len(warnings) == 2
    assert warnings[0].startswith("the first round started 5.4 simulated hours after the run began")
    assert "--day-seconds (now 288)" in warnings[0]
    assert warnings[1].startswith("2 of 3 rounds ran to their deadline")
    assert time_warnings(config, [{"sim_time": 600.0, "closed_by": "goal"}], 0.0) == []
