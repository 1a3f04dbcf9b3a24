"""Trigger policies in a running federation: ineligible devices are never selected, and a device unplugged
while it trains stops within one step and is counted as interrupted."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import psutil
import pytest

from edge_runtime.agent import AgentConfig, DeviceAgent
from edge_runtime.broker_args import mqtt_options
from edge_runtime.policy import Decision, Scheduler
from edge_runtime.policy_file import load_policy
from edge_runtime.protocol import Topics
from edge_runtime.signals import system_reader
from tests.conftest import FederationFiles, write_signals
from tests.federation_tools import (
    SYSTEM_BROKER,
    Watcher,
    coordinator_command,
    device_statuses,
    round_lines,
    start,
    start_device,
    wait_until,
)

pytestmark = [pytest.mark.broker, pytest.mark.usefixtures("stop_processes")]

POLICY = "require-charging = true\nrequire-unmetered = true\ncheck-seconds = 0.2\n"


def policy_files(folder: Path, power: str) -> tuple[Path, Path]:
    policy, signals = folder / "policy.toml", folder / "signals.json"
    policy.write_text(POLICY)
    write_signals(signals, power=power, network="unmetered", interface="wlan0")
    return policy, signals


def test_the_coordinator_never_selects_an_ineligible_device(federation_files: FederationFiles, tmp_path: Path,
                                                            federation: str) -> None:
    policy, signals = policy_files(tmp_path, power="battery")
    for i in range(2):
        start_device(SYSTEM_BROKER, federation, f"d{i}", federation_files.devices[i], tmp_path)
    start_device(SYSTEM_BROKER, federation, "unplugged", federation_files.devices[2], tmp_path,
                 "--policy", str(policy), "--signals", str(signals))
    watcher = Watcher(SYSTEM_BROKER, [f"edgefl/{federation}/devices/+/status", f"edgefl/{federation}/devices/+/task"])
    try:
        wait_until(lambda: len(device_statuses(watcher)) == 3, 30, "three device statuses")
        unplugged = device_statuses(watcher)["unplugged"]
        assert (unplugged["online"], unplugged["eligible"], unplugged["reasons"]) == (True, False, ["not charging"])
        coord = start(coordinator_command(federation_files, tmp_path, federation, SYSTEM_BROKER, "--rounds", "3",
                                          "--fraction", "1", "--min-clients", "2", "--min-reports", "2",
                                          "--eval-every", "2", "--round-timeout", "30"),
                      tmp_path / "coordinator.log")
        lines = round_lines(coord, 3, 90)
        assert [(line["eligible"], line["selected"], line["status"]) for line in lines] == [(2, 2, "committed")] * 3
        tasks = {topic.split("/")[-2] for topic, payload, _ in watcher.seen if topic.endswith("/task") and payload}
        assert tasks == {"d0", "d1"}, "the ineligible device was sent a task"

        write_signals(signals, power="charging", network="unmetered", interface="wlan0")  # plugged in
        wait_until(lambda: device_statuses(watcher)["unplugged"]["eligible"], 10, "the eligibility change")
        assert device_statuses(watcher)["unplugged"]["reasons"] == ["charging", "unmetered network (wlan0)"]
    finally:
        watcher.close()


class CountingPolicy:
    """The real scheduler, counting its checks while a task runs (one per training step), so a test can tell
    how many steps ran after it unplugged the device."""

    def __init__(self, inner: Scheduler) -> None:
        self.inner = inner
        self.check_interval_s = inner.check_interval_s
        self.steps = 0
        self.training = threading.Event()

    def check(self) -> Decision:
        if self.training.is_set():
            self.steps += 1
        return self.inner.check()

    def begin_task(self) -> None:
        self.inner.begin_task()
        self.training.set()

    def end_task(self, trained: bool) -> None:
        self.training.clear()
        self.inner.end_task(trained)


def test_unplugged_while_training_stops_within_one_step(federation_files: FederationFiles, tmp_path: Path,
                                                         federation: str) -> None:
    policy_file, signals = policy_files(tmp_path, power="charging")
    policy = CountingPolicy(Scheduler(load_policy(policy_file), system_reader(tmp_path, signals_file=signals)))
    config = AgentConfig("phone", federation_files.devices[0], mqtt_options(SYSTEM_BROKER, "phone"),
                         tmp_path / "cache", Topics(federation), num_threads=1)
    agent, stop = DeviceAgent(config, policy), threading.Event()
    thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    topics = Topics(federation)
    watcher = Watcher(SYSTEM_BROKER, [topics.report("phone"), topics.update("phone"), topics.global_model])
    thread.start()
    try:
        # One device, a long local training (thousands of steps), so the unplug lands mid-training.
        coord = start(coordinator_command(federation_files, tmp_path, federation, SYSTEM_BROKER, "--rounds", "1",
                                          "--fraction", "1", "--min-clients", "1", "--min-reports", "1",
                                          "--local-epochs", "3000", "--eval-every", "0", "--round-timeout", "60"),
                      tmp_path / "coordinator.log")
        wait_until(lambda: policy.steps >= 20, 60, "training to be under way")
        write_signals(signals, power="battery", network="unmetered", interface="wlan0")  # unplugged
        steps_at_unplug = policy.steps
        [line] = round_lines(coord, 1, 60)
        report = json.loads(watcher.wait_for(topics.report("phone"), timeout=10))
    finally:
        stop.set()
        thread.join(15)
        watcher.close()
    assert (report["kind"], report["outcome"], report["reason"]) == ("failed", "interrupted", "not charging")
    assert steps_at_unplug <= policy.steps <= steps_at_unplug + 1, (steps_at_unplug, policy.steps)
    assert (line["status"], line["interrupted"], line["reported"]) == ("abandoned", 1, 0), line
    assert line["failure_reasons"] == {"not charging": 1}
    assert watcher.latest(topics.update("phone")) is None, "a partial update was sent"
    assert json.loads((tmp_path / "state" / "state.json").read_text())["model_version"] == 0  # nothing committed


def test_training_runs_at_the_requested_nice_level(federation_files: FederationFiles, tmp_path: Path,
                                                   federation: str) -> None:
    proc = start_device(SYSTEM_BROKER, federation, "niced", federation_files.devices[0], tmp_path, "--nice", "7",
                        "--threads", "1")
    watcher = Watcher(SYSTEM_BROKER, [f"edgefl/{federation}/devices/+/status"])
    try:
        wait_until(lambda: "niced" in device_statuses(watcher), 30, "the device to come online")
        assert psutil.Process(proc.pid).nice() == os.nice(0) + 7
    finally:
        watcher.close()


def test_sigterm_while_training_stops_at_the_next_step(federation_files: FederationFiles, tmp_path: Path,
                                                       federation: str) -> None:
    device = start_device(SYSTEM_BROKER, federation, "leaving", federation_files.devices[0], tmp_path)
    topics = Topics(federation)
    watcher = Watcher(SYSTEM_BROKER, [topics.task("leaving"), topics.report("leaving"), topics.status("leaving")])
    try:
        wait_until(lambda: watcher.latest(topics.status("leaving")) is not None, 30, "the device to come online")
        start(coordinator_command(federation_files, tmp_path, federation, SYSTEM_BROKER, "--rounds", "1",
                                  "--fraction", "1", "--min-clients", "1", "--min-reports", "1",
                                  "--local-epochs", "5000", "--eval-every", "0", "--round-timeout", "60"),
              tmp_path / "coordinator.log")
        wait_until(lambda: "round 1: training" in (tmp_path / "leaving.log").read_text(), 60, "training to start")
        device.terminate()
        assert device.wait(15) == 0  # long before 5000 epochs could finish
        report = json.loads(watcher.wait_for(topics.report("leaving"), timeout=10))
        assert (report["outcome"], report["reason"]) == ("interrupted", "the device is shutting down")
        wait_until(lambda: not json.loads(watcher.latest(topics.status("leaving")) or b"{}").get("online", True),
                   10, "the offline status")
    finally:
        watcher.close()
