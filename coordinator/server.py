"""The coordinator's MQTT layer: moves bytes to and from the pure ``RoundMachine`` (``coordinator.machine``).

Messages arrive on paho's network thread and are queued; the coordinator's
thread hands each to the machine with the time, and carries out what the
machine returns: publish, save a checkpoint, write a round line. Everything
published retained (artifact, global model, state, open tasks) is remembered
and published again after every reconnect, so a broker that restarted
without persistence is repopulated.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from coordinator.checkpoint import save_checkpoint
from coordinator.config import CoordinatorConfig, check_proximal
from coordinator.evaluation import TestSetEvaluator
from coordinator.machine import Effect, Now, Publish, RoundMachine, Save
from coordinator.metrics import CoordinatorMetrics
from coordinator.report import RoundLog
from coordinator.resume import initial_state
from coordinator.server_state import ServerState
from edge_runtime.artifact import Artifact
from edge_runtime.broker_args import mqtt_options
from edge_runtime.codecs import get_codec
from edge_runtime.manifest import MANIFEST_FILE
from edge_runtime.mqtt import Backoff, MqttConnection
from edge_runtime.native_logs import native_logs_hidden
from edge_runtime.protocol import (
    Topics,
    artifact_id,
    bundle_files,
)
from edge_runtime.weights import select

log = logging.getLogger(__name__)
Clock = Callable[[], float]
_POLL_S = 0.1
INBOX_LIMIT = 8  # messages waiting for the coordinator's thread (at most this many updates held at once)
DEVICE_GAUGES_S = 1.0  # the device gauges are set at most this often (scrapes come seconds apart)
WAIT_NOTE_S = 30.0  # while the machine waits for devices, say why when it starts and then this often


class Coordinator:
    def __init__(self, config: CoordinatorConfig, *, clock: Clock = time.time,
                 on_round: Callable[[dict[str, Any]], None] | None = None,
                 on_wait: Callable[[str], None] | None = None, metrics: CoordinatorMetrics | None = None,
                 retry: Backoff | None = None) -> None:
        """``on_round`` gets each round line; ``on_wait`` why the next round waits for devices (default: an INFO
        log line); ``metrics`` follows the round lines and the devices' statuses; ``retry``: how a first
        connection that fails is retried (None: ``run`` raises ``ConnectFailure`` at once)."""
        self.config = config
        self.clock = clock
        self.artifact = Artifact.load(config.artifact)
        manifest = self.artifact.manifest
        check_proximal(config.prox_mu, manifest)
        files = {name: (self.artifact.folder / name).read_bytes()
                 for name in (MANIFEST_FILE, manifest.tflite_file, manifest.weights_file)}
        self.artifact_id = artifact_id(files[MANIFEST_FILE])
        self.topics = Topics(config.federation)
        self.strategy = config.build_strategy()
        limit = config.max_payload or max(get_codec(name).payload_limit(manifest.parameter_count)
                                          for name in config.round_codecs)  # the largest a task may ask for
        self._log = RoundLog(config.state_dir, on_round)
        with native_logs_hidden(not log.isEnabledFor(logging.INFO)):  # LiteRT's note on its CPU delegate
            evaluator = TestSetEvaluator(self.artifact, config.test_data) if config.test_data else None
        lr = config.lr if config.lr is not None else manifest.optimizer.learning_rate
        # The global model, its checkpoint and the updates hold the weights that travel; personal ones stay on devices.
        state = initial_state(config, self.artifact_id, manifest.federated, self.strategy,
                              lambda: select(self.artifact.initial_weights(), manifest.federated))
        self.machine = RoundMachine(config, state, self.strategy, manifest.federated,
                                    bundle_files(files, MANIFEST_FILE), payload_limit=limit, task_lr=lr,
                                    evaluator=evaluator, personal=bool(manifest.personal))
        # Bounded: when updates arrive faster than they are checked, paho's thread waits here, the socket
        # stops being read and the broker holds the rest; a streaming strategy's memory stays O(model), not
        # O(devices x model). A buffered one holds the round's accepted updates, said once here.
        if not self.strategy.streaming:
            log.info("strategy %s keeps each round's accepted updates: up to %.1f MB per selected device",
                     self.strategy.name, manifest.parameter_count * 4 / 1e6)
        self._on_wait = on_wait or (lambda text: log.info("%s", text))
        self._waiting_noted = -float("inf")  # when the current wait for devices was last said; -inf: no wait
        self._metrics = metrics
        self._devices_observed = -float("inf")  # when the device gauges were last set
        self._inbox: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=INBOX_LIMIT)
        self._receiving = True
        self._retained: dict[str, bytes] = {}
        self._retained_lock = threading.Lock()
        options = mqtt_options(config.broker, f"edgefl-coordinator-{config.federation}", config.username,
                               config.password, config.tls_ca, config.mqtt_version,  # type: ignore[arg-type]
                               retry=retry)
        self._conn = MqttConnection(options, self.topics.coordinator_subscriptions(), self._receive,
                                    on_connect=self._republish)

    # -- lifecycle --------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> ServerState:
        """Run rounds until ``rounds`` have been held (or ``stop`` is set); returns the final state."""
        stop = stop or threading.Event()
        self._conn.start()
        try:
            self._carry_out(self.machine.start(self._now()))
            while not self.machine.finished:
                if stop.is_set():
                    self._carry_out(self.machine.stop(self._now()))
                    break
                self._pump(_POLL_S)
        finally:
            self._stop_receiving()
            self._conn.close()
        return self.state

    @property
    def state(self) -> ServerState:
        return self.machine.state

    def _now(self) -> Now:
        return Now(self.clock(), time.monotonic(), time.time())

    def _stop_receiving(self) -> None:
        """Drop what arrives from now on, and free paho's thread if it waits on the full inbox, so it can stop."""
        self._receiving = False
        while True:
            try:
                self._inbox.get_nowait()
            except queue.Empty:
                return

    def _receive(self, topic: str, payload: bytes) -> None:  # paho's network thread
        if self._receiving:
            self._inbox.put((topic, payload))

    def _pump(self, timeout: float) -> None:
        """Hand the machine the next message (waiting up to ``timeout``), then whatever else is queued; or let
        time pass."""
        try:
            item: tuple[str, bytes] | None = self._inbox.get(timeout=timeout)
        except queue.Empty:
            item = None
        while item is not None:
            self._carry_out(self.machine.receive(*item, self._now()))
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                item = None
        self._carry_out(self.machine.tick(self._now()))
        self._observe()

    def _observe(self) -> None:
        """Say why the machine waits for devices (when the wait starts, then every ``WAIT_NOTE_S``); update the
        device gauges."""
        reason = self.machine.waiting_reason()
        if reason is None:
            self._waiting_noted = -float("inf")
        elif time.monotonic() >= self._waiting_noted + WAIT_NOTE_S:
            self._waiting_noted = time.monotonic()
            self._on_wait(reason)
        if self._metrics is not None and time.monotonic() >= self._devices_observed + DEVICE_GAUGES_S:
            self._devices_observed = time.monotonic()  # a walk over the registry: not after every update
            self._metrics.observe_devices(self.machine.registry.values())

    def _carry_out(self, effects: list[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Publish):
                self._publish_retained(effect.topic, effect.payload)
            elif isinstance(effect, Save):
                save_checkpoint(self.config.state_dir, effect.state)
            else:
                if self._metrics is not None:  # first: whoever reads the line finds the metrics up to date
                    self._metrics.observe_round(effect.line)
                self._log.write(effect.line)

    def _publish_retained(self, topic: str, payload: bytes) -> None:
        with self._retained_lock:
            if payload:
                self._retained[topic] = payload
            else:
                self._retained.pop(topic, None)
        self._conn.publish(topic, payload, retain=True)

    def _republish(self) -> None:  # paho's network thread, after every (re)connect
        with self._retained_lock:
            pending = list(self._retained.items())
        for topic, payload in pending:
            self._conn.publish(topic, payload, retain=True)
