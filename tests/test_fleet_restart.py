"""A coordinator that starts (or restarts) next to a large fleet sees every device's retained status.

On Mosquitto's defaults (20 messages in flight, 1000 queued) a QoS 1 subscriber is handed only about
1,020 of a burst of retained messages; the coordinator subscribes to statuses at QoS 0, which delivers
them all, and settles until they stop arriving. Run on a private default Mosquitto and on the embedded
broker, with 3,000 devices (the benchmark measures 10,000).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.broker import EmbeddedBroker
from coordinator.config import CoordinatorConfig
from coordinator.server import Coordinator
from edge_runtime.protocol import DeviceStatus, Topics, encode
from tests.conftest import FederationFiles
from tests.federation_tools import Mosquitto, Watcher, wait_until

DEVICES = 3000


@pytest.fixture(params=["mosquitto", "embedded"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "mosquitto":
        with Mosquitto(tmp_path) as broker:  # Mosquitto's defaults: no queue or in-flight settings
            yield broker.url
    else:
        with EmbeddedBroker(port=0) as embedded:
            yield embedded.url


def publish_statuses(url: str, topics: Topics, count: int) -> None:
    watcher = Watcher(url)
    try:
        for i in range(count):  # not eligible: the coordinator only waits, and the test reads its registry
            status = DeviceStatus(f"dev-{i:05d}", online=True, eligible=False, reasons=("not charging",))
            watcher.publish(topics.status(status.device_id), encode(status), retain=True)
    finally:
        watcher.close()  # waits for the publishes to be acknowledged


@pytest.mark.broker
def test_a_starting_coordinator_sees_every_retained_status(broker_url: str, tmp_path: Path,
                                                           federation_files: FederationFiles) -> None:
    federation = f"restart-{uuid.uuid4().hex[:8]}"
    topics = Topics(federation)
    publish_statuses(broker_url, topics, DEVICES)
    config = CoordinatorConfig(artifact=federation_files.artifact, state_dir=tmp_path / "state", broker=broker_url,
                               federation=federation, rounds=1, min_clients=1, min_reports=1)
    coordinator = Coordinator(config)
    stop = threading.Event()
    runner = threading.Thread(target=coordinator.run, args=(stop,), daemon=True)
    started = time.monotonic()
    runner.start()
    try:
        wait_until(lambda: coordinator.machine.phase == "waiting", 60, "the coordinator to settle")
        assert len(coordinator.machine.registry) == DEVICES, (len(coordinator.machine.registry),
                                                              time.monotonic() - started)
    finally:  # the broker is this test's own and goes with it: nothing retained to clear
        stop.set()
        runner.join(30)
