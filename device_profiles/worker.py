"""A fleet worker process: ``python -m device_profiles.worker SPEC.json`` runs its share of emulated devices.

Each device is the real ``DeviceAgent`` on its own thread, with its own MQTT
connection, status and last will, exactly as on hardware; a device that
``devices.json`` names as an attacker gets its attack's stages injected
(``device_profiles.attacks``). The process runs
until SIGTERM or SIGINT, then stops every device (each publishes its offline
status) and writes what each one did to the stats file its spec names.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from device_profiles.attacks import hostile
from device_profiles.clock import SimClock, Speedup
from device_profiles.emulated import DEFAULT_POLICY, emulated_agent
from device_profiles.errors import FleetError
from device_profiles.partition import load_partition
from device_profiles.prepare import load_devices
from device_profiles.profiles import load_profiles
from device_profiles.run_folder import RunFolder, write_json
from edge_runtime.agent import DeviceAgent
from edge_runtime.broker_args import mqtt_options, stop_on_signals
from edge_runtime.data import Dataset
from edge_runtime.errors import EdgeflError
from edge_runtime.mqtt import ProtocolChoice
from edge_runtime.policy_file import load_policy
from edge_runtime.protocol import Topics

log = logging.getLogger(__name__)
# Hundreds of threads, each mostly waiting on its socket, share one interpreter lock. With CPython's default 5 ms
# switch interval they hand it around so often that a selected device waits behind the others at every step:
# 1,000 devices in 4 workers took 3.7-4.7 s a round here, 1.3-1.4 s with 50 ms (and 200 ms), 15-20 s with 0.5 ms.
GIL_SWITCH_S = 0.05


@dataclass(frozen=True)
class WorkerSpec:
    """What the fleet tells one worker process (written as JSON next to the run)."""

    run: str
    worker: int
    indices: list[int]
    broker: str
    federation: str
    mqtt_version: ProtocolChoice
    clock: SimClock
    speedup: str
    seed: int
    profile_file: str | None
    policy: str | None
    backend: str | None
    local_noise: float = 0.0  # every device's local DP noise multiplier (0: none)

    @classmethod
    def read(cls, path: Path) -> WorkerSpec:
        try:
            raw = json.loads(path.read_text())
            return cls(**{**raw, "clock": SimClock(**raw["clock"])})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FleetError(f"{path}: not a worker spec written by edgefl fleet ({exc})") from None


def build_agents(spec: WorkerSpec) -> list[DeviceAgent]:
    folder = RunFolder(Path(spec.run))
    entries = {e.index: e for e in load_devices(folder.devices)}
    parts, _, _ = load_partition(folder.partition)
    with np.load(folder.train, allow_pickle=False) as archive:
        x, y = archive["x"], archive["y"]
    profiles = load_profiles(Path(spec.profile_file) if spec.profile_file else None)
    policy = load_policy(Path(spec.policy)) if spec.policy else DEFAULT_POLICY
    clock = spec.clock
    speedup = Speedup.parse(spec.speedup)
    deadline_clock = speedup.deadline_clock(clock)
    topics = Topics(spec.federation)
    agents = []
    for index in spec.indices:
        entry = entries[index]
        # environ={}: every emulated device is its own anonymous client, whatever credentials this shell holds
        mqtt = mqtt_options(spec.broker, entry.id, protocol=spec.mqtt_version, environ={})
        rows = parts[index]
        agents.append(emulated_agent(entry, profiles[entry.profile], Dataset(x[rows], y[rows]), mqtt=mqtt,
                                     topics=topics, cache_dir=folder.cache(spec.worker), clock=clock,
                                     speedup=speedup, deadline_clock=deadline_clock, policy=policy, seed=spec.seed,
                                     backend=spec.backend, local_noise=spec.local_noise,
                                     hostile=hostile(entry.attack, spec.seed, index) if entry.attack else None))
    return agents


def serve(spec: WorkerSpec, stop: threading.Event, connect_timeout_s: float = 30.0) -> None:
    """Start the devices one at a time, each once the previous one's subscriptions are acknowledged.

    One at a time spares the broker a burst of simultaneous connections (the
    embedded amqtt broker loses sessions when clients subscribe while another
    connects); the ready file tells the fleet that this worker's devices are up.
    """
    folder = RunFolder(Path(spec.run))
    agents = build_agents(spec)
    threads = []
    for agent in agents:
        thread = threading.Thread(target=agent.run, args=(stop,), name=f"agent-{agent.config.device_id}", daemon=True)
        thread.start()
        threads.append(thread)
        if not agent.ready.wait(connect_timeout_s) and not stop.is_set():
            log.error("%s: not connected and subscribed within %g s", agent.config.device_id, connect_timeout_s)
        if stop.is_set():
            break
    write_json(folder.worker_ready(spec.worker), {"devices": len(threads)})
    log.info("worker %d: %d devices running", spec.worker, len(threads))
    stop.wait()
    deadline = time.monotonic() + connect_timeout_s
    for thread in threads:  # every agent saw the same stop event; they publish offline and close together
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    stats = [{"id": a.config.device_id, **asdict(a.stats)} for a in agents]
    write_json(folder.worker_stats(spec.worker), stats)


def stop_with_parent(stop: threading.Event) -> None:
    """Stop when the fleet process that started this worker is gone (killed without a chance to stop us)."""
    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(1.0):
            if os.getppid() != parent:
                log.error("the fleet process %d is gone; stopping", parent)
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if len(argv) != 1:
        print("usage: python -m device_profiles.worker SPEC.json", file=sys.stderr)
        return 2
    try:
        sys.setswitchinterval(GIL_SWITCH_S)
        stop = stop_on_signals()
        stop_with_parent(stop)
        serve(WorkerSpec.read(Path(argv[0])), stop)
    except EdgeflError as exc:
        print(f"fleet worker: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
