"""``edgefl broker-config``: the files it writes, the password hashes Mosquitto accepts, the ACL of PROTOCOL.md, and a
federation run through a Mosquitto started with the generated files, TLS included."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from coordinator.broker_config import (
    BrokerConfigError,
    BrokerPlan,
    acl_text,
    hash_password_file,
    mosquitto_pbkdf2,
    verify_password_line,
)
from edge_runtime.cli import main
from edge_runtime.mqtt import BrokerUrl, ConnectFailure, FailureCause, MqttConnection, MqttOptions
from tests.conftest import FederationFiles
from tests.federation_tools import (
    coordinator_command,
    free_port,
    port_open,
    round_lines,
    start,
    start_device,
    wait_until,
)
from tests.test_connection_errors import broker_dir  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
pytest.importorskip("cryptography")


def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))


# -- pure parts ---------------------------------------------------------------------------------------

def test_protocol_md_shows_the_generated_acl() -> None:
    text = (ROOT / "docs" / "PROTOCOL.md").read_text()
    block = re.search(r"```text\n(# pattern lines.*?)```", text, flags=re.S)
    assert block is not None
    assert block.group(1) == acl_text("default", BrokerPlan("default", ("d",)).coordinator)


def test_queue_limits_grow_with_the_fleet() -> None:
    assert BrokerPlan("f", ("a", "b")).queue_limits() == (1000, 20)
    assert BrokerPlan("f", tuple(f"d{i}" for i in range(500))).queue_limits() == (2000, 500)
    assert BrokerPlan("f", tuple(f"d{i}" for i in range(5000))).queue_limits() == (20000, 1000)


@pytest.mark.parametrize(("devices", "match"), [(("a", "a"), "twice"), (("edgefl-coordinator-f",), "coordinator"),
                                                (("a/b",), "device id"), ((), "no devices")])
def test_a_bad_plan_says_why(devices: tuple[str, ...], match: str) -> None:
    with pytest.raises(BrokerConfigError, match=match):
        BrokerPlan("f", devices)


@pytest.mark.skipif(not Path(MOSQUITTO_PASSWD).exists(), reason="needs mosquitto_passwd")
def test_the_python_hash_is_mosquitto_passwds(tmp_path: Path) -> None:
    path = tmp_path / "passwords"
    hash_password_file(path, {"pi-07": "s3cret-Ü"}, tool=MOSQUITTO_PASSWD)
    line = path.read_text().strip()
    assert line.startswith("pi-07:$7$101$") and verify_password_line(line, "s3cret-Ü")
    assert not verify_password_line(line, "s3cret-U")
    salt = __import__("base64").b64decode(line.split("$")[3])
    assert mosquitto_pbkdf2("pi-07", "s3cret-Ü", salt) == line


def test_cli_writes_every_file_with_private_modes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["broker-config", "--federation", "lab", "--count", "12", "--prefix", "pi-", "--tls",
                 "--host", "broker.lan", "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    envs = sorted(p.name for p in (out / "credentials").iterdir())
    assert envs == ["coordinator.env", *[f"pi-{i:02d}.env" for i in range(1, 13)]]
    assert all((out / "credentials" / name).stat().st_mode & 0o077 == 0 for name in envs)
    assert (out / "passwords").stat().st_mode & 0o007 == 0 and (out / "ca.key").stat().st_mode & 0o077 == 0
    env = read_env(out / "credentials" / "pi-03.env")
    assert env["EDGEFL_MQTT_USERNAME"] == "pi-03" and env["EDGEFL_TLS_CA"] == "/etc/edgefl/ca.crt"
    line = next(x for x in (out / "passwords").read_text().splitlines() if x.startswith("pi-03:"))
    assert verify_password_line(line, env["EDGEFL_MQTT_PASSWORD"])
    conf = (out / "mosquitto.conf").read_text()
    assert "listener 8883\n" in conf and "use_username_as_clientid true" in conf and "allow_anonymous false" in conf
    assert "mqtts://broker.lan:8883" in capsys.readouterr().out
    assert main(["broker-config", "--federation", "lab", "--count", "1", "--out", str(out)]) == 2  # no overwrite


# -- a federation through the generated broker ---------------------------------------------------------

def generated_broker(folder: Path, devices: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    assert main(["broker-config", "--federation", "fed", "--devices", devices, "--tls", "--host", "127.0.0.1",
                 "--bind", "127.0.0.1", "--port", str(port), "--device-ca-path", str(folder / "ca.crt"),
                 "--out", str(folder)]) == 0
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(folder / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: port_open(port), 10, "the generated mosquitto")
    return proc, f"mqtts://127.0.0.1:{port}"


class Client:
    """A client logged in with a generated credentials file; what it receives lands in ``got``."""

    def __init__(self, url: str, env: Path, subscriptions: list[str], client_id: str | None = None) -> None:
        creds = read_env(env)
        self.got: list[tuple[str, bytes]] = []
        self.arrived = threading.Condition()
        options = MqttOptions(BrokerUrl.parse(url), client_id or creds["EDGEFL_MQTT_USERNAME"],
                              creds["EDGEFL_MQTT_USERNAME"], creds["EDGEFL_MQTT_PASSWORD"],
                              Path(creds["EDGEFL_TLS_CA"]), protocol="3.1.1")
        self.conn = MqttConnection(options, [(s, 1) for s in subscriptions], self._on_message)
        self.conn.start(timeout_s=5)
        time.sleep(0.2)  # the SUBACK

    def _on_message(self, topic: str, payload: bytes) -> None:
        with self.arrived:
            self.got.append((topic, payload))
            self.arrived.notify_all()

    def wait_for(self, topic: str, payload: bytes) -> None:
        with self.arrived:
            assert self.arrived.wait_for(lambda: (topic, payload) in self.got, 5), (topic, self.got)


@pytest.mark.broker
def test_the_acl_keeps_devices_apart(broker_dir: Path) -> None:  # noqa: F811
    proc, url = generated_broker(broker_dir, "d0,d1")
    creds = broker_dir / "credentials"
    try:
        base = "edgefl/fed"
        coordinator = Client(url, creds / "coordinator.env", [f"{base}/updates/+", f"{base}/devices/+/status"])
        d1 = Client(url, creds / "d1.env", [f"{base}/devices/d1/task"])
        spy = Client(url, creds / "d0.env", [f"{base}/updates/d1", f"{base}/devices/d1/task", f"{base}/#"])
        spy.conn.publish(f"{base}/updates/d1", b"forged update")
        spy.conn.publish(f"{base}/devices/d1/status", b"forged status")
        spy.conn.publish(f"{base}/model/global", b"forged model")
        spy.conn.publish(f"{base}/updates/d0", b"own update")
        coordinator.wait_for(f"{base}/updates/d0", b"own update")  # after the forged ones, which were dropped
        coordinator.conn.publish(f"{base}/devices/d1/task", b"task")
        d1.conn.publish(f"{base}/updates/d1", b"real update")
        d1.wait_for(f"{base}/devices/d1/task", b"task")
        coordinator.wait_for(f"{base}/updates/d1", b"real update")
        time.sleep(0.5)
        assert not any(b"forged" in payload for _, payload in coordinator.got + d1.got), coordinator.got
        assert spy.got == [], "d0 read another device's task or update"
        # The client id is the username: d0 presenting d1's client id does not push d1 off.
        Client(url, creds / "d0.env", [], client_id="d1")
        coordinator.conn.publish(f"{base}/devices/d1/task", b"task 2")
        d1.wait_for(f"{base}/devices/d1/task", b"task 2")
        with pytest.raises(ConnectFailure) as failure:
            MqttConnection(MqttOptions(BrokerUrl.parse(url), "d1", "d1", "wrong", broker_dir / "ca.crt"), [],
                           lambda t, p: None).start(timeout_s=5)
        assert failure.value.cause is FailureCause.AUTHENTICATION
        for client in (coordinator, d1, spy):
            client.conn.close()
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.broker
@pytest.mark.usefixtures("stop_processes")
def test_a_federation_runs_through_the_generated_tls_broker(federation_files: FederationFiles, broker_dir: Path,  # noqa: F811
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    proc, url = generated_broker(broker_dir, "d0,d1,d2")
    try:
        for i in range(3):
            for key, value in read_env(broker_dir / "credentials" / f"d{i}.env").items():
                monkeypatch.setenv(key, value)  # as systemd's EnvironmentFile= would; no password on a command line
            start_device(url, "fed", f"d{i}", federation_files.devices[i], broker_dir)
        for key, value in read_env(broker_dir / "credentials" / "coordinator.env").items():
            monkeypatch.setenv(key, value)
        coord = start(coordinator_command(federation_files, broker_dir, "fed", url, "--rounds", "2", "--fraction", "1",
                                          "--min-clients", "3", "--min-reports", "3", "--expect-devices", "3",
                                          "--round-timeout", "60", "--eval-every", "0"),
                      broker_dir / "coordinator.log")
        lines = round_lines(coord, 2, 120)
        assert [line["status"] for line in lines] == ["committed", "committed"], lines
        assert all(line["reported"] == 3 for line in lines), lines
    finally:
        proc.terminate()
        proc.wait(10)
