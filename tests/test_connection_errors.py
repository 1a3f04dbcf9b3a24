"""A failed first connection names its cause within seconds (refused, unresolvable, TLS, authentication), and a
device retries with jittered backoff instead of exiting. Real Mosquitto instances on free ports."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from coordinator.broker_config import hash_password_file, make_ca, make_server_cert, write_pem
from edge_runtime.mqtt import (
    Backoff,
    BrokerUrl,
    ConnectCancelled,
    ConnectFailure,
    FailureCause,
    MqttConnection,
    MqttOptions,
)
from tests.conftest import FederationFiles
from tests.federation_tools import Mosquitto, coordinator_command, edgefl, free_port, start, stop, wait_until

pytest.importorskip("cryptography")
FAST_S = 5.0  # every named failure must be reported within this


@pytest.fixture
def broker_dir() -> Iterator[Path]:
    """A folder Mosquitto can read when it drops root's privileges (pytest's own are private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="edgefl-broker-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def connect(url: str, *, ca: Path | None = None, username: str | None = None, password: str | None = None,
            retry: Backoff | None = None) -> tuple[ConnectFailure | None, float]:
    options = MqttOptions(BrokerUrl.parse(url), f"probe-{time.monotonic_ns()}", username, password, ca, retry=retry)
    conn = MqttConnection(options, [], lambda topic, payload: None)
    started = time.monotonic()
    try:
        conn.start(timeout_s=30)
    except ConnectFailure as exc:
        return exc, time.monotonic() - started
    conn.close()
    return None, time.monotonic() - started


def expect(failure: ConnectFailure | None, seconds: float, cause: FailureCause, *words: str) -> None:
    assert failure is not None, "connected, expected a failure"
    assert failure.cause is cause, f"{failure.cause}: {failure}"
    assert seconds < FAST_S, f"took {seconds:.1f} s: {failure}"
    for word in words:
        assert word in str(failure), str(failure)


# -- the pure parts -----------------------------------------------------------------------------------

def test_backoff_doubles_up_to_its_ceiling_and_jitters_down() -> None:
    backoff = Backoff(first_s=1.0, max_s=60.0, jitter=0.5)
    assert [backoff.delay(n, 0.0) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff.delay(3, 0.5) == 6.0  # 8 x (1 - 0.5 x 0.5)
    assert backoff.delay(100, 0.999) == pytest.approx(60 * (1 - 0.4995))
    assert Backoff(jitter=0).delay(2, 0.7) == 4.0


@pytest.mark.parametrize(("kwargs", "field"), [({"first_s": 0}, "first_s"), ({"max_s": 0.5}, "max_s"),
                                                ({"jitter": 1.5}, "jitter"), ({"give_up_after_s": -1}, "give_up")])
def test_a_bad_backoff_names_its_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        Backoff(**kwargs)


# -- plain TCP ----------------------------------------------------------------------------------------

def test_a_refused_port_is_named_at_once() -> None:
    expect(*connect(f"mqtt://127.0.0.1:{free_port()}"), FailureCause.REFUSED, "connection refused")


def test_an_unresolvable_host_is_named_at_once() -> None:
    expect(*connect("mqtt://no-such-host.invalid:1883"), FailureCause.UNRESOLVABLE, "no-such-host.invalid")


@pytest.mark.broker
def test_a_wrong_password_is_named_authentication(broker_dir: Path) -> None:
    hash_password_file(broker_dir / "passwords", {"dev-1": "right"})
    broker = Mosquitto(broker_dir, extra=[f"password_file {broker_dir / 'passwords'}"])
    broker.conf.write_text(broker.conf.read_text().replace("allow_anonymous true", "allow_anonymous false"))
    with broker:
        expect(*connect(broker.url, username="dev-1", password="wrong"), FailureCause.AUTHENTICATION,
               "authentication failed")
        expect(*connect(broker.url), FailureCause.AUTHENTICATION)  # anonymous
        assert connect(broker.url, username="dev-1", password="right")[0] is None


# -- TLS ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object, Path]:
    cert, key = make_ca("test CA")
    return cert, key, write_pem(tmp_path_factory.mktemp("ca"), "ca", cert, key).cert


def tls_broker(folder: Path, ca: tuple[object, object, Path], hosts: tuple[str, ...],
               **cert_options: object) -> Mosquitto:
    files = write_pem(folder, "server", *make_server_cert(ca[0], ca[1], hosts, **cert_options))  # type: ignore[arg-type]
    broker = Mosquitto(folder, extra=[f"certfile {files.cert}", f"keyfile {files.key}"])
    broker.url = f"mqtts://127.0.0.1:{broker.port}"
    return broker


@pytest.fixture
def good_tls(broker_dir: Path, ca: tuple[object, object, Path]) -> Iterator[Mosquitto]:
    with tls_broker(broker_dir, ca, ("localhost", "127.0.0.1")) as broker:
        yield broker


@pytest.mark.broker
def test_tls_with_the_right_ca_connects(good_tls: Mosquitto, ca: tuple[object, object, Path]) -> None:
    assert connect(good_tls.url, ca=ca[2])[0] is None


@pytest.mark.broker
def test_tls_with_an_unknown_ca_is_named(good_tls: Mosquitto, tmp_path: Path) -> None:
    cert, key = make_ca("another CA")
    other = write_pem(tmp_path, "other-ca", cert, key).cert
    expect(*connect(good_tls.url, ca=other), FailureCause.TLS, "unknown CA", str(other))
    expect(*connect(good_tls.url), FailureCause.TLS, "unknown CA", "--tls-ca")  # the system's CAs


@pytest.mark.broker
def test_tls_with_a_missing_ca_file_is_named(good_tls: Mosquitto, tmp_path: Path) -> None:
    expect(*connect(good_tls.url, ca=tmp_path / "nope.crt"), FailureCause.TLS, "nope.crt", "does not exist")


@pytest.mark.broker
def test_tls_to_a_name_the_certificate_lacks_is_a_host_name_mismatch(broker_dir: Path,
                                                                     ca: tuple[object, object, Path]) -> None:
    with tls_broker(broker_dir, ca, ("broker.example.org",)) as broker:
        expect(*connect(broker.url, ca=ca[2]), FailureCause.TLS, "host name mismatch", "127.0.0.1")


@pytest.mark.broker
def test_tls_with_an_expired_certificate_is_named(broker_dir: Path, ca: tuple[object, object, Path]) -> None:
    long_ago = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=30)
    with tls_broker(broker_dir, ca, ("127.0.0.1",), days=1, not_before=long_ago) as broker:
        expect(*connect(broker.url, ca=ca[2]), FailureCause.TLS, "expired")


@pytest.mark.broker
def test_plain_mqtt_to_a_tls_port_says_so(good_tls: Mosquitto) -> None:
    expect(*connect(good_tls.url.replace("mqtts://", "mqtt://")), FailureCause.CLOSED, "mqtts://")


# -- retrying -----------------------------------------------------------------------------------------

def test_retrying_gives_up_after_its_limit_with_the_cause() -> None:
    failure, seconds = connect(f"mqtt://127.0.0.1:{free_port()}", retry=Backoff(first_s=0.2, give_up_after_s=1.5))
    assert failure is not None and failure.cause is FailureCause.REFUSED
    assert "gave up after" in str(failure) and 0.5 < seconds < 4, (seconds, failure)


@pytest.mark.broker
def test_retrying_connects_once_the_broker_starts(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    starter = threading.Timer(1.5, broker.start)
    starter.start()
    try:
        failure, seconds = connect(broker.url, retry=Backoff(first_s=0.2, max_s=0.5, give_up_after_s=20))
        assert failure is None and seconds >= 1.0
    finally:
        starter.join()
        broker.stop()


def test_a_stop_while_retrying_cancels() -> None:
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    options = MqttOptions(BrokerUrl.parse(f"mqtt://127.0.0.1:{free_port()}"), "cancelled", retry=Backoff(stop=stop))
    started = time.monotonic()
    with pytest.raises(ConnectCancelled):
        MqttConnection(options, [], lambda topic, payload: None).start()
    assert time.monotonic() - started < 3


def test_edgefl_device_retries_then_gives_up_with_the_cause(tmp_path: Path) -> None:
    data = tmp_path / "train.npz"
    np.savez(data, x=np.zeros((4, 2), np.float32), y=np.zeros(4, np.int32))
    started = time.monotonic()
    done = subprocess.run(edgefl("device", "--device-id", "d0", "--data", str(data), "--cache-dir",
                                 str(tmp_path / "cache"), "--broker", f"mqtt://127.0.0.1:{free_port()}",
                                 "--connect-timeout", "3", "--nice", "0"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "connection refused" in done.stderr and "retrying in" in done.stderr and "gave up after" in done.stderr
    assert time.monotonic() - started < 30


@pytest.mark.broker
def test_edgefl_coordinator_waits_for_a_broker_that_starts_later(
        tmp_path: Path, broker_dir: Path, federation_files: FederationFiles, stop_processes: None) -> None:
    broker = Mosquitto(broker_dir)  # its port is free: nothing listens yet
    log = tmp_path / "coordinator.log"
    proc = start(coordinator_command(federation_files, tmp_path, "late-broker", broker.url, "--rounds", "1"), log)
    wait_until(lambda: "retrying in" in log.read_text(), 60, "the coordinator retrying")
    assert "connection refused" in log.read_text() and proc.poll() is None
    with broker:
        wait_until(lambda: f"connected to {broker.url}" in log.read_text(), 60, "the coordinator connecting")
        stop([proc])
    assert proc.returncode == 0, log.read_text()


def test_edgefl_coordinator_gives_up_after_its_connect_timeout(tmp_path: Path,
                                                               federation_files: FederationFiles) -> None:
    command = coordinator_command(federation_files, tmp_path, "no-broker", f"mqtt://127.0.0.1:{free_port()}",
                                  "--connect-timeout", "3")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "connection refused" in done.stderr and "gave up after" in done.stderr
