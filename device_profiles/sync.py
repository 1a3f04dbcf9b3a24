"""The fleet's own MQTT link: it shares the simulated clock between shards and sees the coordinator finish."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence

from device_profiles.clock import SimClock
from device_profiles.errors import FleetError
from device_profiles.fleet_config import FleetConfig
from edge_runtime.broker_args import mqtt_options
from edge_runtime.errors import ProtocolError
from edge_runtime.mqtt import MqttConnection, ProtocolChoice
from edge_runtime.protocol import CoordinatorState, FleetClock, Topics, decode, encode

log = logging.getLogger(__name__)


class FleetLink:
    """Use as a context manager."""

    def __init__(self, url: str, federation: str, mqtt_version: ProtocolChoice) -> None:
        self.topics = Topics(federation)
        self._clock: FleetClock | None = None
        self._state: CoordinatorState | None = None
        self._state_seen = time.monotonic()  # when the coordinator was last heard of
        self._changed = threading.Event()
        options = mqtt_options(url, f"edgefl-fleet-{uuid.uuid4().hex[:12]}", protocol=mqtt_version)
        subscriptions = ((self.topics.fleet_clock, 1), (self.topics.coordinator, 1))
        self._conn = MqttConnection(options, subscriptions, self._receive)

    def __enter__(self) -> FleetLink:
        self._conn.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.close()

    def _receive(self, topic: str, payload: bytes) -> None:  # paho's network thread
        if not payload:
            return
        try:
            if topic == self.topics.fleet_clock:
                self._clock = decode(payload, FleetClock)
            else:
                self._state, self._state_seen = decode(payload, CoordinatorState), time.monotonic()
        except ProtocolError as exc:
            log.warning("ignored a bad message on %s: %s", topic, exc)
        self._changed.set()

    def publish_clock(self, config: FleetConfig) -> SimClock:
        """Start the run's clock now and retain it for the other shards."""
        clock = SimClock.starting_now(config.start_hour, config.speedup_value.rate(config.day_length_s))
        self._conn.publish(self.topics.fleet_clock, encode(FleetClock(clock.wall_start, clock.sim_start, clock.rate)),
                           retain=True)
        return clock

    def wait_clock(self, timeout_s: float = 300.0, max_age_s: float = 3600.0) -> SimClock:
        """The clock the first shard published (it may start after this one); one older than ``max_age_s`` is
        taken for a crashed run's and ignored."""
        deadline, oldest = time.monotonic() + timeout_s, time.time() - max_age_s
        while self._clock is None or self._clock.wall_start < oldest:
            if time.monotonic() > deadline:
                raise FleetError(f"no fleet clock on {self.topics.fleet_clock} within {timeout_s:g} s; "
                                 "expected shard 1 (which runs the coordinator) to be running on the same broker")
            self._changed.wait(0.5)
            self._changed.clear()
        return SimClock(self._clock.wall_start, self._clock.sim_start, self._clock.rate)

    def wait_finished(self, since: float, stop: threading.Event, silence_s: float) -> None:
        """Until the coordinator publishes ``finished`` (after ``since``, wall clock), or ``stop`` is set.

        The coordinator publishes its state at every phase of every round; ``silence_s`` without a word from
        it means shard 1 is gone (it has no last will), and ends the wait with an error.
        """
        self._state_seen = time.monotonic()
        while not stop.is_set():
            state = self._state
            if state is not None and state.phase == "finished" and state.updated_at > since:
                return
            if time.monotonic() - self._state_seen > silence_s:
                raise FleetError(f"no word from the coordinator on {self.topics.coordinator} for {silence_s:.0f} s; "
                                 "expected shard 1 to be running")
            self._changed.wait(0.5)
            self._changed.clear()

    def clear_retained(self, device_ids: Sequence[str]) -> None:
        """Delete what the run left retained on the broker: model, state, clock, device statuses."""
        topics = [self.topics.artifact, self.topics.global_model, self.topics.coordinator, self.topics.fleet_clock]
        for topic in topics + [self.topics.status(d) for d in device_ids]:
            self._conn.publish(topic, b"", retain=True)
        self._conn.flush(30.0)
