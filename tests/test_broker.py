"""The embedded broker (amqtt) against real paho clients: QoS 1, retained messages, last wills, the CLI."""

from __future__ import annotations

import queue
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.broker import BrokerError, EmbeddedBroker, free_port
from edge_runtime.mqtt import BrokerUrl, MqttConnection, MqttOptions, ProtocolChoice

pytest.importorskip("amqtt")
pytest.importorskip("paho.mqtt")
pytestmark = pytest.mark.broker  # each test starts its own embedded broker on a free port

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 5.0


class Client:
    """An ``MqttConnection`` subscribed to ``PREFIX/#`` whose messages land in a queue.

    ``retained`` holds what the broker sent right after the subscription, i.e. its retained messages.
    """

    def __init__(self, url: str, client_id: str, prefix: str, will: tuple[str, bytes] | None = None,
                 protocol: ProtocolChoice = "auto") -> None:
        self.client_id = client_id
        self.prefix = prefix
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        options = MqttOptions(BrokerUrl.parse(url), client_id, protocol=protocol)
        self.conn = MqttConnection(options, [(f"{prefix}/#", 1)], lambda t, p: self.inbox.put((t, p)), will=will)
        self.conn.start(timeout_s=TIMEOUT_S)
        self.retained = dict(self.sync())

    def sync(self) -> list[tuple[str, bytes]]:
        """Publish to ourselves and wait for it: then the subscription is live and whatever the broker sent
        before (retained messages) has arrived. Returns those earlier messages."""
        marker = f"{self.prefix}/sync/{self.client_id}"
        self.conn.publish(marker, b"")
        before = []
        while (message := self.inbox.get(timeout=TIMEOUT_S))[0] != marker:
            before.append(message)
        return before

    def expect(self, topic: str) -> bytes:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            got, payload = self.inbox.get(timeout=max(0.01, deadline - time.monotonic()))
            if got == topic:
                return payload

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker(port=0) as running:
        yield running


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    return f"edgefl/test/{request.node.name}"


def edgefl_broker(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "edge_runtime.cli", "broker", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_line(proc: subprocess.Popen[str], timeout_s: float = 10.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    if not ready:
        proc.kill()
        pytest.fail(f"no output within {timeout_s} s; stderr: {proc.communicate()[1]}")
    return proc.stdout.readline().rstrip("\n")


def test_a_qos1_message_reaches_a_subscriber_over_mqtt_311(broker: EmbeddedBroker, prefix: str) -> None:
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}" and broker.running
    subscriber = Client(broker.url, "sub", prefix)
    publisher = Client(broker.url, "pub", prefix)
    assert subscriber.conn.protocol == "3.1.1"  # MqttConnection asked for v5 first and amqtt refused it
    publisher.conn.publish(f"{prefix}/update", b"\x00weights\xff", qos=1)
    assert subscriber.expect(f"{prefix}/update") == b"\x00weights\xff"
    publisher.close()
    subscriber.close()


def test_a_retained_message_reaches_later_subscribers_until_an_empty_payload_clears_it(
        broker: EmbeddedBroker, prefix: str) -> None:
    topic = f"{prefix}/status"
    watcher = Client(broker.url, "watcher", prefix)
    watcher.conn.publish(topic, b"v1", retain=True)
    assert watcher.expect(topic) == b"v1"  # the broker has handled the publish, so it has stored it
    late = Client(broker.url, "late", prefix)
    assert late.retained == {topic: b"v1"}

    watcher.conn.publish(topic, b"", retain=True)
    assert watcher.expect(topic) == b""
    later = Client(broker.url, "later", prefix)
    assert later.retained == {}
    for client in (later, late, watcher):
        client.close()


DOOMED_DEVICE = """
import sys, time
from edge_runtime.mqtt import BrokerUrl, MqttConnection, MqttOptions

url, topic = sys.argv[1:3]
options = MqttOptions(BrokerUrl.parse(url), "doomed", protocol="3.1.1")  # see WILL_OVER_V5 below
conn = MqttConnection(options, [], lambda t, p: None, will=(topic, b"lost"))
conn.start(timeout_s=5)
print("connected", flush=True)
time.sleep(60)
"""


def test_the_last_will_of_a_killed_client_is_delivered_and_retained(broker: EmbeddedBroker, prefix: str) -> None:
    watcher = Client(broker.url, "watcher", prefix)
    polite = Client(broker.url, "polite", prefix, will=(f"{prefix}/polite/status", b"lost"), protocol="3.1.1")
    polite.close()  # a clean DISCONNECT: no will
    doomed = subprocess.Popen([sys.executable, "-c", DOOMED_DEVICE, broker.url, f"{prefix}/doomed/status"],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert read_line(doomed) == "connected"
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.communicate(timeout=TIMEOUT_S)
    assert watcher.expect(f"{prefix}/doomed/status") == b"lost"
    late = Client(broker.url, "late", prefix)
    assert late.retained == {f"{prefix}/doomed/status": b"lost"}
    late.close()
    watcher.close()


WILL_OVER_V5 = ("amqtt parses a CONNECT's payload as 3.1.1 before it checks the protocol level, so a v5 CONNECT "
                "with a will fails to parse and is dropped without the CONNACK that would make MqttConnection fall "
                "back to 3.1.1; with protocol='auto' and a will it retries v5 forever")


def test_auto_negotiation_reaches_amqtt_with_a_will(broker: EmbeddedBroker) -> None:
    options = MqttOptions(BrokerUrl.parse(broker.url), "device-with-will")
    conn = MqttConnection(options, [], lambda t, p: None, will=("edgefl/test/will/status", b"lost"))
    conn.start(timeout_s=1.5)
    conn.close()


def test_stop_frees_the_port_for_a_new_broker() -> None:
    broker = EmbeddedBroker(port=0)
    with broker:
        client = Client(broker.url, "c", "edgefl/test/restart")  # stop() must not hang on a connected client
        with pytest.raises(BrokerError, match="already started"):
            broker.start()
    assert not broker.running
    broker.stop()  # a no-op once stopped
    with EmbeddedBroker(port=broker.port) as again:
        assert again.running
    client.close()


def test_a_port_in_use_gives_a_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port} is already in use"):
            EmbeddedBroker(port=port).start()
        cli = edgefl_broker("--port", str(port))
        _, stderr = cli.communicate(timeout=30)
    assert cli.returncode == 2, stderr
    assert f"edgefl broker: error: 127.0.0.1:{port}: port {port} is already in use" in stderr


def test_edgefl_broker_serves_until_sigterm() -> None:
    port = free_port()
    cli = edgefl_broker("--port", str(port))
    try:
        assert read_line(cli) == f"embedded MQTT 3.1.1 broker on mqtt://127.0.0.1:{port} (Ctrl-C to stop)"
        client = Client(f"mqtt://127.0.0.1:{port}", "c", "edgefl/test/cli")  # still connected at SIGTERM
        cli.send_signal(signal.SIGTERM)
        started = time.monotonic()
        _, stderr = cli.communicate(timeout=TIMEOUT_S)
        assert time.monotonic() - started < 3.0
        client.close()  # about 1 s: paho is waiting to reconnect
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 0, stderr
    assert stderr == ""  # amqtt's warning for each refused MQTT v5 CONNECT is silenced without -v


BLOCK_AMQTT = """
import importlib.abc, sys

class NoAmqtt(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "amqtt":
            raise ImportError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoAmqtt())
"""


def test_without_amqtt_the_error_names_the_extra() -> None:
    script = BLOCK_AMQTT + textwrap.dedent("""
        from coordinator.broker import BrokerError, EmbeddedBroker
        try:
            EmbeddedBroker(port=0).start()
        except BrokerError as exc:
            print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert 'pip install "edgefl[broker]"' in result.stdout
