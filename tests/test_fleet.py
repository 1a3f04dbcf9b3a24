"""``edgefl fleet`` end to end, as a user runs it: real coordinator and device processes on Mosquitto and on the
embedded broker, the whole run folder written, and a fleet split over two shards sharing one broker."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.broker import free_port
from device_profiles.fleet_config import build_fleet_config
from device_profiles.partition import load_partition
from tests.conftest import FederationFiles
from tests.federation_tools import SYSTEM_BROKER

pytestmark = pytest.mark.broker
RUN_FILES = ("rounds.jsonl", "summary.json", "report.png", "partition.npz", "devices.json", "fleet.toml",
             "data/train.npz", "data/test.npz", "artifact/manifest.json", "coordinator/state.json")


def fleet(out: Path, *options: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge_runtime.cli", "fleet", "--out", str(out), "--no-progress",
                           *options], capture_output=True, text=True, timeout=timeout)


def lines_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def check_run_folder(out: Path, devices: int, rounds: int) -> dict[str, Any]:
    for name in RUN_FILES:
        assert (out / name).is_file(), f"{name} missing from the run folder"
    lines = lines_of(out / "rounds.jsonl")
    assert [line["round"] for line in lines] == list(range(1, rounds + 1))
    assert all(0 <= line["sim_hour"] < 24 and line["selected"] >= 1 for line in lines)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] and summary["rounds"] == rounds and summary["participation"]["devices"] == devices
    assert summary["committed"] >= 1 and summary["final_accuracy"] is not None
    assert summary["bytes_in"] > 0 and summary["device_bytes_received"] > summary["bytes_out"]  # the broker fans out
    parts, _, _ = load_partition(out / "partition.npz")
    with np.load(out / "data" / "train.npz") as train:
        assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(train["y"])))
    assert len(json.loads((out / "devices.json").read_text())) == devices
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return summary


def test_a_fleet_of_20_runs_3_rounds_on_mosquitto(tmp_path: Path, federation: str) -> None:
    out = tmp_path / "run"
    done = fleet(out, "--devices", "20", "--rounds", "3", "--broker", SYSTEM_BROKER, "--federation", federation,
                 "--partition", "iid", "--round-interval", "3600", "--codec", "auto")
    assert done.returncode == 0, done.stderr
    summary = check_run_folder(out, 20, 3)
    moved, lines = summary["traffic"], lines_of(out / "rounds.jsonl")  # each device's codec by its profile's link
    assert moved["bytes_up"] == sum(line["bytes_up"] for line in lines) > 0
    assert sum(moved["codec_mix"].values()) == sum(line["reported"] for line in lines)
    assert set(moved["codec_mix"]) <= {"float16", "int8", "rotated-sign"} and moved["compression"] > 1.9
    assert sum(1 for line in done.stdout.splitlines() if line.startswith("round ")) == 3
    starts = [line["sim_time"] for line in lines]
    assert all(b - a >= 3600 - 5 for a, b in itertools.pairwise(starts))  # --round-interval, simulated
    again = build_fleet_config(out / "fleet.toml", {})  # the run's own options file repeats it
    assert (again.devices, again.rounds, again.federation, again.round_interval) == (20, 3, federation, 3600.0)


def test_a_fleet_of_20_runs_3_rounds_on_the_embedded_broker_with_simulated_waits(tmp_path: Path) -> None:
    """LTE-M gateways (100 kbps up, 300 down, 300 ms) at 10x: a ~40 kB update takes 3.5 simulated seconds to
    upload and the model 1.4 to download, so no round can close in under 0.45 s of real time."""
    out = tmp_path / "run"
    done = fleet(out, "--devices", "20", "--rounds", "3", "--speedup", "10", "--round-interval", "0",
                 "--round-timeout", "60", "--profiles", "gateway", "--partition", "shards:2")
    assert done.returncode == 0, done.stderr
    summary = check_run_folder(out, 20, 3)
    assert summary["profiles"] == {"gateway": 20}
    durations = [line["duration_s"] for line in lines_of(out / "rounds.jsonl") if line["reported"]]
    assert durations and min(durations) >= 0.45, durations


def test_two_shards_share_one_broker_and_one_clock(tmp_path: Path, federation: str) -> None:
    common = ["--devices", "16", "--rounds", "2", "--broker", SYSTEM_BROKER, "--federation", federation,
              "--partition", "iid", "--min-clients", "4"]
    second = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "fleet", "--out", str(tmp_path / "b"),
                               "--no-progress", "--shard", "2/2", *common], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        first = fleet(tmp_path / "a", "--shard", "1/2", *common)
        assert first.returncode == 0, first.stderr
        _, errors = second.communicate(timeout=120)
        assert second.returncode == 0, errors
    finally:
        second.kill()
    lines = lines_of(tmp_path / "a" / "rounds.jsonl")
    assert len(lines) == 2
    stats = json.loads((tmp_path / "b" / "workers" / "worker-0-stats.json").read_text())
    assert [s["id"] for s in stats] == [f"dev-{i:05d}" for i in range(8, 16)]  # the second half of the fleet
    assert all(s["bytes_received"] > 0 for s in stats)  # each of them fetched the model from shard 1's coordinator


def test_bad_options_fail_before_anything_starts(tmp_path: Path) -> None:
    done = fleet(tmp_path / "run", "--partition", "dirichlet:-1", timeout=60)
    assert done.returncode == 2
    assert "partition" in done.stderr and "dirichlet needs a finite number > 0" in done.stderr
    assert not (tmp_path / "run").exists()
    port = free_port()
    done = fleet(tmp_path / "run", "--broker", f"mqtt://127.0.0.1:{port}", "--devices", "3", timeout=120)
    assert done.returncode == 2 and f"connection refused: nothing listens on port {port}" in done.stderr


def test_sigterm_stops_the_whole_fleet_and_leaves_no_process(tmp_path: Path) -> None:
    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "fleet", "--out", str(tmp_path / "run"),
                             "--no-progress", "--devices", "10", "--rounds", "50"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # the first round line: broker, workers and coordinator are all up
        assert first.startswith("round "), first
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 2  # the embedded broker and a device worker
        proc.terminate()
        assert proc.wait(timeout=60) == 1  # stopped before its 50 rounds: a partial run
    finally:
        proc.kill()
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert not summary["completed"] and summary["rounds"] >= 1


def test_the_users_experiment_runs_as_given(tmp_path: Path, federation_files: FederationFiles) -> None:
    """Per-device files, a test set and an artifact of the user's own, on the embedded broker: the devices keep
    every row, the coordinator evaluates the given test set, and the artifact is the one given."""
    sites = tmp_path / "sites"
    sites.mkdir()
    for path in federation_files.devices:
        shutil.copy(path, sites)
    policy = tmp_path / "anytime.toml"
    policy.write_text("")  # no constraints: every device may train
    out = tmp_path / "run"
    done = fleet(out, "--dataset", str(sites), "--devices", str(len(federation_files.devices)), "--rounds", "2",
                 "--test-data", str(federation_files.test), "--artifact", str(federation_files.artifact),
                 "--policy", str(policy), "--profiles", "pi-5", "--round-interval", "0", "--min-clients", "2",
                 "--min-reports", "1", "--fraction", "0.5")
    assert done.returncode == 0, done.stderr
    assert "model: digits-mlp (mlp, " in done.stderr and f"in {federation_files.test} for testing" in done.stderr
    summary = check_run_folder(out, len(federation_files.devices), 2)
    assert summary["config"]["artifact"] == str(federation_files.artifact)
    with np.load(out / "data" / "test.npz") as test, np.load(federation_files.test) as given:
        assert np.array_equal(test["y"], given["y"])
    with np.load(out / "data" / "train.npz") as train:
        assert len(train["y"]) == sum(len(np.load(f)["y"]) for f in federation_files.devices)
    assert (out / "artifact" / "manifest.json").read_bytes() == \
        (federation_files.artifact / "manifest.json").read_bytes()
