"""Federations of separate processes through real brokers: learning, drop-outs, crashes, broker restarts."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FederationFiles
from tests.federation_tools import (
    SYSTEM_BROKER,
    LineReader,
    Mosquitto,
    Watcher,
    coordinator_command,
    free_port,
    port_open,
    round_lines,
    start,
    start_device,
    stop,
    wait_eligible,
    wait_until,
)

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("stop_processes")]


def devices(files: FederationFiles, folder: Path, federation: str, url: str, count: int,
            *extra: str) -> list[subprocess.Popen[str]]:
    return [start_device(url, federation, f"d{i}", files.devices[i], folder, *extra) for i in range(count)]


def rounds_file(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "state" / "rounds.jsonl").read_text().splitlines()]


def test_five_device_processes_learn_over_five_rounds(federation_files: FederationFiles, tmp_path: Path,
                                                      federation: str) -> None:
    devices(federation_files, tmp_path, federation, SYSTEM_BROKER, 5)
    coord = start(coordinator_command(federation_files, tmp_path, federation, SYSTEM_BROKER, "--rounds", "5",
                              "--fraction", "0.6", "--min-clients", "3", "--min-reports", "2",
                              "--round-timeout", "30", "--eval-every", "5"), tmp_path / "coordinator.log")
    lines = round_lines(coord, 5, 90)
    assert [line["round"] for line in lines] == [1, 2, 3, 4, 5]
    assert all(line["status"] == "committed" and line["reported"] >= 3 for line in lines), lines
    assert all(line["selected"] == 4 and line["goal"] == 3 for line in lines[1:])  # 0.6 x 5 = 3, x 1.3 -> 4
    accuracy = [line["test"]["accuracy"] for line in lines]
    assert accuracy[-1] > accuracy[0] + 0.2 and accuracy[-1] > 0.5, accuracy
    assert lines[-1]["federated_eval"]["examples"] > 0 and lines[-1]["federated_eval"]["devices"] >= 3
    assert all(line["bytes_in"] > 0 and line["bytes_out"] > 0 for line in lines)
    assert rounds_file(tmp_path) == lines


def test_a_device_killed_mid_round_does_not_stall_it(federation_files: FederationFiles, tmp_path: Path,
                                                     federation: str) -> None:
    fleet = devices(federation_files, tmp_path, federation, SYSTEM_BROKER, 5)
    wait_eligible(SYSTEM_BROKER, federation, 5)
    timeout = 12
    # Every device is selected (goal 5) and trains for a few seconds (4000 epochs: about 60,000 steps of ~65 us;
    # four devices share two cores, so about 8 s of the 12), so d4 dies while it trains.
    coord = start(coordinator_command(federation_files, tmp_path, federation, SYSTEM_BROKER, "--rounds", "2",
                              "--fraction", "1", "--min-clients", "4", "--over-select", "1", "--min-reports", "3",
                              "--round-timeout", str(timeout), "--local-epochs", "4000", "--eval-every", "0"),
                  tmp_path / "coordinator.log")
    watcher = Watcher(SYSTEM_BROKER, [f"edgefl/{federation}/devices/d4/task"])
    try:
        watcher.wait_for(f"edgefl/{federation}/devices/d4/task", timeout=60)
        fleet[4].send_signal(signal.SIGKILL)
        first, second = round_lines(coord, 2, 60)
    finally:
        watcher.close()
    assert first["status"] == "committed" and first["closed_by"] == "deadline", first
    assert (first["selected"], first["reported"], first["dropped"]) == (5, 4, 1)
    assert first["duration_s"] < timeout + 5
    # The last-will marked d4 offline, so the next round no longer waits for it.
    assert (second["eligible"], second["selected"], second["reported"]) == (4, 4, 4)
    assert second["closed_by"] == "goal"


def test_coordinator_killed_and_resumed_loses_no_committed_round(federation_files: FederationFiles,
                                                                 tmp_path: Path, federation: str) -> None:
    devices(federation_files, tmp_path, federation, SYSTEM_BROKER, 4)
    options = ("--rounds", "4", "--fraction", "1", "--min-clients", "3", "--min-reports", "2",
               "--round-timeout", "20", "--local-epochs", "1000", "--eval-every", "0")
    command = coordinator_command(federation_files, tmp_path, federation, SYSTEM_BROKER, *options)
    first = start(command, tmp_path / "coordinator-1.log")
    reader = LineReader(first)
    before = [reader.next(60), reader.next(60)]
    first.send_signal(signal.SIGKILL)  # while round 3 runs
    first.wait(10)
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert (state["next_round"], state["model_version"]) == (3, 2)

    again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "--resume" in again.stderr  # never overwrites a checkpoint silently

    after = round_lines(start([*command, "--resume"], tmp_path / "coordinator-2.log"), 2, 60)
    assert [line["round"] for line in before + after] == [1, 2, 3, 4]
    assert all(line["status"] == "committed" for line in before + after)
    assert [line["round"] for line in rounds_file(tmp_path)] == [1, 2, 3, 4]
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert (state["next_round"], state["model_version"], state["committed_rounds"]) == (5, 4, 4)


def test_mosquitto_restarted_mid_run_everyone_reconnects(federation_files: FederationFiles, tmp_path: Path) -> None:
    federation = "restart"
    with Mosquitto(tmp_path) as broker:
        fleet = devices(federation_files, tmp_path, federation, broker.url, 4)
        coord = start(coordinator_command(federation_files, tmp_path, federation, broker.url, "--rounds", "4",
                                  "--fraction", "1", "--min-clients", "3", "--min-reports", "2",
                                  "--round-timeout", "20", "--local-epochs", "300", "--eval-every", "0"),
                      tmp_path / "coordinator.log")
        try:
            reader = LineReader(coord)
            lines = [reader.next(60)]
            broker.stop()  # no persistence: retained messages and sessions are gone
            wait_until(lambda: not port_open(broker.port), 10, "mosquitto to stop")
            broker.start()
            lines += [reader.next(120) for _ in range(3)]
            assert coord.wait(30) == 0
        finally:
            stop([coord, *fleet])
    assert [line["round"] for line in lines] == [1, 2, 3, 4]
    assert sum(line["status"] == "committed" for line in lines) >= 3, lines
    assert lines[-1]["status"] == "committed" and lines[-1]["test"]["accuracy"] > lines[0]["test"]["accuracy"]


def test_the_same_federation_runs_on_the_embedded_broker(federation_files: FederationFiles, tmp_path: Path) -> None:
    port = free_port()
    broker = subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "broker", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"mqtt://127.0.0.1:{port}"
    try:
        wait_until(lambda: port_open(port), 20, "the embedded broker")
        devices(federation_files, tmp_path, "embedded", url, 3)
        coord = start(coordinator_command(federation_files, tmp_path, "embedded", url, "--rounds", "3",
                                          "--fraction", "1", "--min-clients", "3", "--min-reports", "2",
                                          "--round-timeout", "30", "--eval-every", "3"), tmp_path / "coordinator.log")
        lines = round_lines(coord, 3, 90)
    finally:
        stop([broker])  # type: ignore[list-item]
    assert all(line["status"] == "committed" and line["reported"] == 3 for line in lines), lines
    assert lines[-1]["test"]["accuracy"] > lines[0]["test"]["accuracy"]
    assert lines[-1]["federated_eval"]["devices"] == 3
