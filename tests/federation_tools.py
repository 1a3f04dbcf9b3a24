"""Tools for integration tests against real brokers and real processes.

A private Mosquitto on a free port (for restarts), a raw MQTT client that plays
a misbehaving device or watches the federation, and helpers that start
``edgefl device`` / ``edgefl coordinator`` as separate processes.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

if TYPE_CHECKING:
    from edge_runtime.protocol import Topics
    from tests.conftest import FederationFiles

# The machine's Mosquitto; EDGEFL_TEST_BROKER points the suite at another one (a private broker, so that a
# benchmark using the machine's broker at the same time is not disturbed by the tests' device ids).
SYSTEM_BROKER = os.environ.get("EDGEFL_TEST_BROKER", "mqtt://127.0.0.1:1883")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Mosquitto:
    """A private Mosquitto (no persistence) that a test can stop and start again on the same port."""

    def __init__(self, folder: Path, port: int | None = None, extra: Sequence[str] = ()) -> None:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.port = port or free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.conf = folder / f"mosquitto-{self.port}.conf"
        self.conf.write_text("\n".join([f"listener {self.port} 127.0.0.1", "allow_anonymous true",
                                        "persistence false", *extra]) + "\n")
        self._binary = binary
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Mosquitto:
        self._proc = subprocess.Popen([self._binary, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
        wait_until(lambda: port_open(self.port), 10, f"mosquitto on port {self.port}")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(10)
            self._proc = None

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Watcher:
    """A raw paho client: subscribes to topics, keeps every message, publishes anything (also garbage)."""

    def __init__(self, url: str, topics: Sequence[str] = (), client_id: str = "") -> None:
        host, port = url.removeprefix("mqtt://").split(":")
        self.messages: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
        self.seen: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"watch-{os.getpid()}-"
                                                                                      f"{time.monotonic_ns()}",
                                  protocol=paho.MQTTv311)
        self.client.on_message = self._on_message
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.connect(host, int(port))
        self.client.loop_start()
        if not connected.wait(10):
            raise AssertionError(f"no connection to {url}")
        for topic in topics:
            self.client.subscribe(topic, qos=1)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        item = (message.topic, bytes(message.payload), bool(message.retain))
        with self._lock:
            self.seen.append(item)
        self.messages.put(item)

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def latest(self, topic: str) -> bytes | None:
        with self._lock:
            found = [p for t, p, _ in self.seen if t == topic]
        return found[-1] if found else None

    def wait_for(self, topic: str, predicate: Callable[[bytes], bool] = bool, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        with self._lock:
            for t, p, _ in self.seen:
                if t == topic and predicate(p):
                    return p
        while time.monotonic() < deadline:
            try:
                t, p, _ = self.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            if t == topic and predicate(p):
                return p
        raise AssertionError(f"no matching message on {topic} within {timeout} s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def clear_retained(url: str, federation: str) -> None:
    """Delete every retained message a test left under ``edgefl/<federation>/``."""
    watcher = Watcher(url, [f"edgefl/{federation}/#"])
    time.sleep(0.5)
    for topic in {t for t, _, retained in watcher.seen if retained}:
        watcher.publish(topic, b"", retain=True)
    watcher.close()


def edgefl(*args: str) -> list[str]:
    return [sys.executable, "-m", "edge_runtime.cli", *args]


# Every process a test starts, so that a fixture can stop all of them however the test ends.
LAUNCHED: list[subprocess.Popen[str]] = []


def start(args: Sequence[str], log: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as handle:
        proc = subprocess.Popen(list(args), stdout=subprocess.PIPE, stderr=handle, text=True, env=env)
    LAUNCHED.append(proc)
    return proc


def stop_launched() -> None:
    stop(LAUNCHED)
    LAUNCHED.clear()


def start_device(url: str, federation: str, device_id: str, data: Path, folder: Path,
                 *extra: str) -> subprocess.Popen[str]:
    return start(edgefl("-v", "device", "--broker", url, "--federation", federation, "--device-id", device_id,
                        "--data", str(data), "--cache-dir", str(folder / f"cache-{device_id}"), *extra),
                 folder / f"{device_id}.log")


def coordinator_command(files: FederationFiles, folder: Path, federation: str, url: str, *options: str) -> list[str]:
    """``edgefl coordinator`` over the shared digits artifact, its state in ``folder/state``."""
    return edgefl("-v", "coordinator", "--artifact", str(files.artifact), "--state-dir", str(folder / "state"),
                  "--federation", federation, "--broker", url, "--test-data", str(files.test), *options)


def device_statuses(watcher: Watcher) -> dict[str, dict[str, Any]]:
    """The latest status each device published, as the watcher saw them."""
    latest: dict[str, dict[str, Any]] = {}
    for topic, payload, _ in list(watcher.seen):
        if payload and topic.endswith("/status"):
            latest[topic.split("/")[-2]] = json.loads(payload)
    return latest


def wait_eligible(url: str, federation: str, count: int, timeout: float = 60) -> None:
    """Until ``count`` devices have published an eligible status (they hold the model)."""
    watcher = Watcher(url, [f"edgefl/{federation}/devices/+/status"])
    try:
        wait_until(lambda: sum(1 for s in device_statuses(watcher).values() if s["online"] and s["eligible"])
                   >= count, timeout, f"{count} eligible devices")
    finally:
        watcher.close()


def stop(processes: Sequence[subprocess.Popen[str]], timeout: float = 10) -> None:
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LineReader:
    """Reads a process's stdout JSON lines on a thread, so a test can wait for the next one."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.all: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for text in proc.stdout:
            if text.startswith("{"):
                line = json.loads(text)
                self.all.append(line)
                self.lines.put(line)

    def next(self, timeout: float) -> dict[str, Any]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no round line within {timeout} s") from None


def round_lines(proc: subprocess.Popen[str], count: int, timeout: float) -> list[dict[str, Any]]:
    """The next ``count`` round lines of a coordinator process, which must then exit with 0."""
    reader = LineReader(proc)
    lines = [reader.next(timeout) for _ in range(count)]
    assert proc.wait(30) == 0
    return lines


# --- a device agent without a broker ---------------------------------------------------------------


@dataclass
class RecordingConnection:
    """Stands for MqttConnection: records (un)subscriptions and publishes; grants every subscription."""

    subscribed: set[str]
    granted_topics: set[str]
    published: list[tuple[str, bytes]] = field(default_factory=list)

    def subscribe(self, topic: str, qos: int = 1) -> None:
        self.subscribed.add(topic)

    def unsubscribe(self, topic: str) -> None:
        self.subscribed.discard(topic)

    def granted(self, topic: str) -> bool:
        return topic in self.granted_topics and topic in self.subscribed

    def publish(self, topic: str, payload: bytes, *, retain: bool = False, qos: int = 1) -> None:
        self.published.append((topic, payload))


def offline_agent(files: FederationFiles, cache: Path, topics: Topics, device_id: str = "u1",
                  **config: Any) -> Any:
    """A ``DeviceAgent`` on device 0's data whose connection only records, with the federation's artifact loaded:
    a test feeds it messages through ``_handle`` and reads what it published. ``config``: other ``AgentConfig``
    fields."""
    import numpy as np

    from edge_runtime.agent import AgentConfig, DeviceAgent
    from edge_runtime.artifact import Artifact
    from edge_runtime.broker_args import mqtt_options
    from edge_runtime.data import Dataset
    from edge_runtime.manifest import MANIFEST_FILE
    from edge_runtime.protocol import bundle_files

    data = np.load(files.devices[0])
    mqtt = mqtt_options("mqtt://127.0.0.1:1", device_id)
    agent_config = AgentConfig(device_id, Dataset(data["x"], data["y"]), mqtt, cache, topics, num_threads=1, **config)
    agent = DeviceAgent(agent_config)
    subscribed = {topic for topic, _ in topics.device_subscriptions(device_id)}
    agent._conn = RecordingConnection(subscribed, set(subscribed))
    artifact = Artifact.load(files.artifact)
    manifest = artifact.manifest
    names = (MANIFEST_FILE, manifest.tflite_file, manifest.weights_file)
    agent._handle(topics.artifact, bundle_files({name: (artifact.folder / name).read_bytes() for name in names},
                                                MANIFEST_FILE))
    return agent
