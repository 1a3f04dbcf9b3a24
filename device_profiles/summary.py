"""A fleet run's summary: what was learned, how long it took (simulated and real), what moved, who took part,
and who attacked.

``FleetSummary.as_json()`` is what ``summary.json`` holds.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from coordinator.report import traffic as round_traffic
from coordinator.rounds import Tally
from device_profiles.clock import SimClock
from device_profiles.fleet_config import FleetConfig
from device_profiles.prepare import DeviceEntry
from device_profiles.run_folder import RunFolder

_COUNTED = ("selected", "reported", "failed", "interrupted", "dropped", "late", "bytes_in", "bytes_out")


@dataclass(frozen=True)
class Participation:
    devices: int
    selected: int  # summed over rounds
    reported: int
    devices_that_trained: int
    mean_eligible: float | None


@dataclass(frozen=True)
class Traffic:
    """The federated work's bytes, summed over the round lines: the accepted updates (up), what the selected devices
    fetched for their tasks (down: the task and the global model), per device, and the codecs' effect."""

    bytes_up: int
    bytes_down: int
    bytes_up_per_device: float | None  # mean payload of an accepted update (per reporting device and round)
    bytes_down_per_device: float | None  # mean per selected device and round
    codec_mix: dict[str, int]  # accepted updates by codec
    compression: float | None  # the accepted updates' bytes had their tensors been float32, over their bytes


def traffic(lines: Sequence[dict[str, Any]]) -> Traffic:
    up = sum(int(line.get("bytes_up", 0)) for line in lines)
    down = sum(int(line.get("bytes_down", 0)) for line in lines)
    float32 = sum(int(line.get("bytes_up_float32", 0)) for line in lines)
    mix = Counter[str]()
    for line in lines:
        mix.update(line.get("codec_mix", {}))
    selected = sum(int(line["selected"]) for line in lines)
    summed = round_traffic(Tally(bytes_up=up, bytes_up_float32=float32, codec_mix=mix, bytes_down=down), selected)
    return Traffic(up, down, summed["bytes_up_per_device"], summed["bytes_down_per_device"], summed["codec_mix"],
                   summed["compression"])


@dataclass(frozen=True)
class DeviceCounts:
    """A count as the coordinator saw it, and as the emulated devices counted it themselves."""

    coordinator: int
    emulated: int


@dataclass(frozen=True)
class AttackSummary:
    """The run's ``--attack``: which devices ran it, and how many updates they trained (their own counters)."""

    kind: str
    fraction: float
    devices: int
    device_ids: tuple[str, ...]
    updates_trained: int  # by the attackers; participation.devices_that_trained and the round lines count all

    def describe(self) -> str:
        """``10% sign-flip attackers (5 devices)``."""
        return f"{self.fraction * 100:g}% {self.kind} attackers ({self.devices} device{'s' * (self.devices != 1)})"


@dataclass(frozen=True)
class FleetSummary:
    rounds: int
    rounds_requested: int
    completed: bool
    committed: int
    abandoned: int
    final_accuracy: float | None
    best_accuracy: float | None
    best_round: int | None
    classes: int
    model: str  # the family trained (--model, or the one the data's shape chose, or the given artifact's)
    partition: str  # how the data was spread: the partition spec, or "one file each" for a folder of device files
    simulated_time_s: float
    wall_time_s: float
    mean_round_wall_s: float | None
    bytes_in: int  # the coordinator's
    bytes_out: int
    device_bytes_received: int
    device_bytes_sent: int
    traffic: Traffic
    participation: Participation
    dropouts: DeviceCounts  # coordinator: selected devices silent at a round's deadline
    interruptions: DeviceCounts
    failures: int
    late: int
    profiles: dict[str, int]
    attack: AttackSummary | None
    config: dict[str, Any]
    privacy: dict[str, Any] | None = None  # central DP: the last round line's (epsilon, delta, ...); None: off

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(config: FleetConfig, folder: RunFolder, lines: Sequence[dict[str, Any]], entries: Sequence[DeviceEntry],
              clock: SimClock, classes: int, model: str, partition: str) -> FleetSummary:
    accuracies = [(line["round"], line["test"]["accuracy"]) for line in lines if line.get("test")]
    best = max(accuracies, key=lambda item: item[1], default=None)
    stats = _worker_stats(folder)
    total = Counter[str]()
    for line in lines:
        total.update({key: int(line[key]) for key in _COUNTED})
    held = sum(1 for line in lines if line["status"] != "stopped")  # a line "stopped" by DP's budget: not held
    return FleetSummary(
        rounds=held, rounds_requested=config.rounds, completed=held == config.rounds,
        committed=sum(1 for line in lines if line["status"] == "committed"),
        abandoned=sum(1 for line in lines if line["status"] == "abandoned"),
        final_accuracy=accuracies[-1][1] if accuracies else None,
        best_accuracy=best[1] if best else None, best_round=best[0] if best else None, classes=classes,
        model=model, partition=partition,
        simulated_time_s=round(clock.at(time.time()) - clock.sim_start, 1),
        wall_time_s=round(time.time() - clock.wall_start, 2),
        mean_round_wall_s=round(sum(line["duration_s"] for line in lines) / len(lines), 3) if lines else None,
        bytes_in=total["bytes_in"], bytes_out=total["bytes_out"],
        device_bytes_received=sum(s["bytes_received"] for s in stats),
        device_bytes_sent=sum(s["bytes_sent"] for s in stats),
        traffic=traffic(lines),
        participation=Participation(
            devices=len(entries), selected=total["selected"], reported=total["reported"],
            devices_that_trained=sum(1 for s in stats if s["trained"] > 0),
            mean_eligible=round(sum(line["eligible"] for line in lines) / len(lines), 2) if lines else None),
        dropouts=DeviceCounts(total["dropped"], sum(s["dropped"] for s in stats)),
        interruptions=DeviceCounts(total["interrupted"], sum(s["interrupted"] for s in stats)),
        failures=total["failed"], late=total["late"],
        profiles=dict(sorted(Counter(e.profile for e in entries).items())),
        attack=_attack(config, entries, stats),
        config={k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        privacy=next((dict(line["privacy"]) for line in reversed(lines) if line.get("privacy")), None),
    )


def _attack(config: FleetConfig, entries: Sequence[DeviceEntry],
            stats: Sequence[dict[str, Any]]) -> AttackSummary | None:
    spec = config.attack_spec
    if spec is None:
        return None
    ids = tuple(e.id for e in entries if e.attack is not None)
    hostile = set(ids)
    return AttackSummary(spec.kind, spec.fraction, len(ids), ids,
                         sum(s["trained"] for s in stats if s["id"] in hostile))


def _worker_stats(folder: RunFolder) -> list[dict[str, Any]]:
    """Per-device counters the worker processes wrote when they stopped (none if a worker was killed)."""
    stats: list[dict[str, Any]] = []
    for path in sorted((folder.root / "workers").glob("worker-*-stats.json")):
        stats.extend(json.loads(path.read_text()))
    return stats
