"""One emulated device: the real agent and scheduler, with signals, waits and drop-outs from its profile, and
an attacker's stages and data transform if it is hostile."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from device_profiles.attacks import Hostile
from device_profiles.availability import SLOT_S, ProfileSignals
from device_profiles.clock import SimClock, Speedup
from device_profiles.prepare import DeviceEntry
from device_profiles.profile_pace import ProfilePace
from device_profiles.profiles import DeviceProfile
from edge_runtime.agent import AgentConfig, DeviceAgent
from edge_runtime.data import Dataset
from edge_runtime.mqtt import MqttOptions
from edge_runtime.policy import Scheduler
from edge_runtime.policy_file import Policy
from edge_runtime.protocol import Topics
from edge_runtime.signals import SignalReader

# What an emulated device asks before it trains, unless the run gives a policy file: the production triple.
DEFAULT_POLICY = Policy(require_charging=True, require_unmetered=True, min_user_idle_s=600.0,
                        unknown_signals="ignore")
# Availability changes once per slot; an idle agent re-checks this often per slot, so a status is at most 5
# simulated minutes old when a round selects on it.
CHECKS_PER_SLOT = 6


def check_interval_s(rate: float) -> float:
    """Real seconds between an idle agent's policy checks, so that it sees each availability slot change."""
    return min(10.0, max(0.2, SLOT_S / CHECKS_PER_SLOT / rate))


def emulated_agent(entry: DeviceEntry, profile: DeviceProfile, data: Dataset, *, mqtt: MqttOptions, topics: Topics,
                   cache_dir: Path, clock: SimClock, speedup: Speedup, deadline_clock: Callable[[], float],
                   policy: Policy, seed: int, backend: str | None, hostile: Hostile | None = None,
                   local_noise: float = 0.0) -> DeviceAgent:
    signals = ProfileSignals(profile, entry.index, seed, clock.now, entry.utc_offset)
    scheduler = Scheduler(replace(policy, check_interval_s=check_interval_s(clock.rate)), SignalReader([signals]),
                          clock=clock.now, utc_offset_h=entry.utc_offset)
    config = AgentConfig(device_id=entry.id, data=data, mqtt=mqtt, cache_dir=cache_dir, topics=topics,
                         backend=backend, num_threads=1, clock=deadline_clock, local_noise=local_noise)
    pace = ProfilePace(profile, speedup, seed, entry.index, signals)
    if hostile is None:
        return DeviceAgent(config, scheduler, pace)
    return DeviceAgent(config, scheduler, pace, stages=hostile.stages, transform=hostile.transform)
