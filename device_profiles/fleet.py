"""``edgefl fleet``: a whole emulated fleet, the real coordinator and real device agents, on one simulated clock.

The first shard prepares the run (data, partition, devices, artifact), starts
the broker unless one is given, publishes the clock, starts its device
workers and runs the coordinator in this process; every round line is
annotated with the simulated time and written to the run folder. Other
shards (``--shard i/n`` on other machines) run devices only, on the clock the
first one published, until the coordinator says it has finished.
"""

from __future__ import annotations

import json
import logging
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from coordinator.config import check_proximal
from device_profiles.clock import SimClock, hour_of_day
from device_profiles.errors import FleetError
from device_profiles.fleet_config import EMBEDDED, FleetConfig
from device_profiles.prepare import (
    DeviceEntry,
    assign_devices,
    check_artifact,
    choose_family,
    class_count,
    default_cache,
    export_artifact,
    save_data,
    save_devices,
    split_data,
    write_config_toml,
)
from device_profiles.processes import launch, start_embedded_broker, stop_all
from device_profiles.profiles import load_profiles
from device_profiles.run_folder import RunFolder, write_json, writing
from device_profiles.summary import FleetSummary, summarize
from device_profiles.sync import FleetLink
from device_profiles.worker import WorkerSpec
from edge_runtime.artifact import Artifact
from edge_runtime.data import Dataset
from edge_runtime.mqtt import ProtocolChoice
from edge_runtime.policy_file import load_policy

log = logging.getLogger(__name__)
RoundCallback = Callable[[dict[str, Any]], None]


def run_fleet(config: FleetConfig, on_round: RoundCallback | None = None,
              note: Callable[[str], None] = log.info, stop: threading.Event | None = None) -> FleetSummary:
    """Run the fleet to the end; returns the summary (also written to ``summary.json``)."""
    folder = RunFolder(config.out)
    inputs = _check_inputs(config)  # everything is checked before a file is touched
    with writing(folder):  # removes only what an earlier run recorded; records what this one writes, however it ends
        return _run_fleet(config, folder, inputs, on_round, note, stop or threading.Event())


def _run_fleet(config: FleetConfig, folder: RunFolder, inputs: _Inputs, on_round: RoundCallback | None,
               note: Callable[[str], None], stop: threading.Event) -> FleetSummary:
    entries, classes = inputs.entries, _prepare(config, folder, inputs, note)
    brokers: list[subprocess.Popen[bytes]] = []
    workers: list[subprocess.Popen[bytes]] = []
    try:
        url = config.broker
        version: ProtocolChoice = "auto"
        if config.broker == EMBEDDED:
            broker, url = start_embedded_broker(folder.log("broker"))
            brokers.append(broker)
            version = "3.1.1"  # amqtt speaks 3.1.1 only; saying so spares every device the v5 probe
        with FleetLink(url, config.federation, version) as link:
            try:
                lines, clock = _run(config, folder, url, version, link, workers, on_round, note, stop)
            finally:
                stop_all(workers)  # the devices go offline before the broker is cleaned up
                if config.runs_coordinator:
                    link.clear_retained([e.id for e in entries])
    finally:
        stop_all(workers + brokers)
    summary = summarize(config, folder, lines, entries, clock, classes, inputs.family, _spread(config))
    write_json(folder.summary, summary.as_json())
    for warning in time_warnings(config, lines, clock.sim_start):
        note(warning)
    if lines:
        from device_profiles.report import run_report

        run_report(folder)
    return summary


# Past these, waiting ate the simulated day: the first round started this late, or this share of rounds ran to
# their deadline (a deadline round lasts round-timeout on the real clock while the availability clock runs on).
LATE_START_H, DEADLINE_SHARE = 1.0, 0.25


def time_warnings(config: FleetConfig, lines: list[dict[str, Any]], sim_start: float) -> list[str]:
    """What to tell the user when start-up or deadline rounds consumed the simulated day, and which option helps."""
    if not lines or not config.runs_coordinator:
        return []
    knob = (f"--day-seconds (now {config.day_length_s:g}) makes the simulated day last longer in real time"
            if config.speedup_value.is_max else "a lower --speedup lets less simulated time pass per real second")
    out = []
    late_h = (lines[0].get("sim_time", sim_start) - sim_start) / 3600
    if late_h > LATE_START_H:
        out.append(f"the first round started {late_h:.1f} simulated hours after the run began (start-up and the "
                   f"wait for eligible devices); {knob}")
    deadline = sum(1 for line in lines if line.get("closed_by") == "deadline")
    if deadline > DEADLINE_SHARE * len(lines):
        out.append(f"{deadline} of {len(lines)} rounds ran to their deadline, while availability kept changing; "
                   f"{knob}, and --round-timeout shortens the wait")
    return out


def _run(config: FleetConfig, folder: RunFolder, url: str, version: ProtocolChoice, link: FleetLink,
         workers: list[subprocess.Popen[bytes]], on_round: RoundCallback | None, note: Callable[[str], None],
         stop: threading.Event) -> tuple[list[dict[str, Any]], SimClock]:
    if not config.runs_coordinator:
        note(f"waiting for shard 1's clock on {link.topics.fleet_clock}")
    clock = link.publish_clock(config) if config.runs_coordinator else link.wait_clock()
    _start_workers(config, folder, url, version, clock, workers)
    note(f"{len(_shard_indices(config))} devices in {len(workers)} worker process(es) on {url}, "
         f"speedup {config.speedup_value}, simulated start {hour_of_day(clock.sim_start):05.2f} h UTC")
    finishing = _watch_workers(workers, stop)
    try:
        if config.runs_coordinator:
            return _coordinate(config, folder, url, version, clock, on_round, stop), clock
        link.wait_finished(clock.wall_start, stop, _silence_s(config, clock))
        return [], clock
    finally:
        finishing.set()


def _silence_s(config: FleetConfig, clock: SimClock) -> float:
    """How long shard 1's coordinator may say nothing: three rounds' deadline and interval, in real seconds."""
    deadline = config.deadline_s if config.speedup_value.is_max else config.deadline_s / clock.rate
    return 120.0 + 3 * (deadline + config.round_interval / clock.rate)


@dataclass(frozen=True)
class _Inputs:
    """A run's inputs, every one checked: the split, each device's rows of the training split, the devices."""

    train: Dataset
    test: Dataset
    parts: list[np.ndarray]
    entries: list[DeviceEntry]
    family: str  # the model's: --model, the data's choice, or the artifact's
    classes: int
    artifact: Artifact | None  # --artifact's, checked against the data


def _refuse_artifact_in_run_folder(config: FleetConfig) -> None:
    """A run replaces its own files, ``artifact/`` among them: an --artifact inside --out would be deleted."""
    assert config.artifact is not None
    if config.artifact.resolve().is_relative_to(config.out.resolve()):
        raise FleetError(f"--artifact {config.artifact} is inside the run folder {config.out}, whose files this run "
                         "replaces; copy the artifact somewhere else first (e.g. cp -r "
                         f"{config.artifact} ./my-artifact) and pass that")


def _check_inputs(config: FleetConfig) -> _Inputs:
    """Data against the model (or the artifact), profiles, mix and policy; nothing written yet."""
    train, test, parts = split_data(config)
    entries = assign_devices(config, load_profiles(config.profile_file), parts)
    if config.policy is not None:
        load_policy(config.policy)  # the workers read it again; a bad file is refused here, before they start
    if config.artifact is not None:
        _refuse_artifact_in_run_folder(config)
        artifact = check_artifact(config.artifact, train, test)
        manifest = artifact.manifest
        check_proximal(config.prox_mu or 0.0, manifest)  # the coordinator would refuse it once devices are up
        return _Inputs(train, test, parts, entries, manifest.family, manifest.num_classes, artifact)
    return _Inputs(train, test, parts, entries, choose_family(config, train), class_count(train, test), None)


def _prepare(config: FleetConfig, folder: RunFolder, inputs: _Inputs, note: Callable[[str], None]) -> int:
    """Write the run's inputs to its cleared folder; returns the number of classes."""
    train, test, parts, entries, classes = inputs.train, inputs.test, inputs.parts, inputs.entries, inputs.classes
    write_config_toml(folder.config, config)
    save_data(config, folder, train, test, parts)
    save_devices(folder.devices, entries)
    note(f"{config.dataset}: {len(train)} training examples over {len(parts)} devices ({_spread(config)}), "
         f"{len(test)} {'in ' + str(config.test_data) if config.test_data else 'held out'} for testing; "
         f"{classes} classes")
    note(_model_text(config, inputs))
    if config.attack is not None:
        hostile = sum(1 for e in entries if e.attack is not None)
        note(f"{hostile} of {len(entries)} devices attack ({config.attack}); devices.json names them")
    if config.runs_coordinator:
        export_artifact(config, train, classes, inputs.family, folder, default_cache())
    return classes


def _spread(config: FleetConfig) -> str:
    return "one file each" if config.device_files else str(config.partition_spec)


def _model_text(config: FleetConfig, inputs: _Inputs) -> str:
    """Which model the run trains, and why that one."""
    if inputs.artifact is not None:
        manifest = inputs.artifact.manifest
        return (f"model: {manifest.model_name} ({manifest.family}, {manifest.parameter_count} parameters) from "
                f"{config.artifact}")
    if config.model is None:
        shape = tuple(inputs.train.x.shape[1:])
        why = "images (height, width, channels)" if inputs.family == "cnn" else "not images"
        return f"model: {inputs.family}, chosen for examples of shape {shape}, {why}; --model chooses another"
    return f"model: {inputs.family}"


def _shard_indices(config: FleetConfig) -> list[int]:
    index, count = config.shard_index
    return [int(i) for i in np.array_split(np.arange(config.devices), count)[index - 1]]


def _start_workers(config: FleetConfig, folder: RunFolder, url: str, version: ProtocolChoice, clock: SimClock,
                   workers: list[subprocess.Popen[bytes]]) -> None:
    """Start the workers into ``workers``, each as soon as it exists, so that a failure can stop them all."""
    indices = _shard_indices(config)
    chunks = [c for c in np.array_split(np.array(indices), config.worker_processes(len(indices))) if c.size]
    for worker, chunk in enumerate(chunks):
        spec = WorkerSpec(run=str(folder.root.resolve()), worker=worker, indices=[int(i) for i in chunk], broker=url,
                          federation=config.federation, mqtt_version=version, clock=clock,
                          speedup=str(config.speedup_value), seed=config.seed,
                          profile_file=str(config.profile_file) if config.profile_file else None,
                          policy=str(config.policy) if config.policy else None, backend=config.backend,
                          local_noise=config.local_noise_multiplier or 0.0)
        write_json(folder.worker_spec(worker), asdict(spec))
        proc = launch(["-m", "device_profiles.worker", str(folder.worker_spec(worker))], folder.log(f"worker-{worker}"))
        workers.append(proc)
        if config.broker == EMBEDDED:  # amqtt loses sessions when clients of two workers connect at once
            _wait_ready(proc, folder, worker, len(chunk))
    for worker, (proc, chunk) in enumerate(zip(workers, chunks, strict=True)):
        _wait_ready(proc, folder, worker, len(chunk))


def _wait_ready(proc: subprocess.Popen[bytes], folder: RunFolder, worker: int, devices: int) -> None:
    """Until worker ``worker`` says its devices are connected and subscribed, or fails."""
    deadline = time.monotonic() + 60.0 + 0.5 * devices
    while not folder.worker_ready(worker).exists():
        if proc.poll() is not None:
            raise FleetError(f"device worker {worker} exited with code {proc.returncode} while starting; "
                             f"see {folder.log(f'worker-{worker}')}")
        if time.monotonic() > deadline:
            raise FleetError(f"device worker {worker} did not connect its {devices} devices in time; "
                             f"see {folder.log(f'worker-{worker}')}")
        time.sleep(0.1)


def _watch_workers(workers: list[subprocess.Popen[bytes]], stop: threading.Event) -> threading.Event:
    """Stop the run if every worker process dies (a crash, the OOM killer) before the returned event is set."""
    finishing = threading.Event()

    def watch() -> None:
        while not finishing.wait(1.0):
            if all(w.poll() is not None for w in workers):
                log.error("every device worker exited; stopping the run (see the logs/ folder)")
                stop.set()
                return

    threading.Thread(target=watch, name="fleet-watch", daemon=True).start()
    return finishing


def _coordinate(config: FleetConfig, folder: RunFolder, url: str, version: str, clock: SimClock,
                on_round: RoundCallback | None, stop: threading.Event) -> list[dict[str, Any]]:
    from coordinator.server import Coordinator

    simulated = not config.speedup_value.is_max
    lines: list[dict[str, Any]] = []

    def record(line: dict[str, Any]) -> None:
        started = line["started_at"] if simulated else clock.at(line["started_at"])
        line = {**line, "sim_time": round(started, 1), "sim_hour": round(hour_of_day(started), 3),
                "wall_s": round(time.time() - clock.wall_start, 3)}
        lines.append(line)
        with open(folder.rounds, "a") as handle:
            handle.write(json.dumps(line, allow_nan=False) + "\n")  # the coordinator made it strict
        if on_round is not None:
            on_round(line)

    coordinator = Coordinator(config.coordinator_config(folder.artifact, folder.coordinator, folder.test, url,
                                                        version, clock.rate),
                              clock=config.speedup_value.deadline_clock(clock), on_round=record)
    coordinator.run(stop)
    return lines
