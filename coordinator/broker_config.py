"""A ready Mosquitto configuration for one federation, as ``edgefl broker-config`` writes it.

``BrokerPlan`` says what to generate; the text of each file comes from a pure function
(``acl_text``, ``mosquitto_conf``, ``credentials_env``), ``write_config`` writes them. The ACL is the
one of docs/PROTOCOL.md §2.2 (a test compares the two). Passwords are hashed the way Mosquitto
expects: by ``mosquitto_passwd -U`` where it is installed (no password on its command line), else
by ``mosquitto_pbkdf2``, Mosquitto 2's ``$7$`` format (PBKDF2-SHA512, 101 iterations, 12-byte salt),
which the tests check against ``mosquitto_passwd``. Certificates (``make_ca``, ``make_server_cert``)
need the ``cryptography`` package, in the coordinator extra, imported only when TLS files are made.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.errors import CoordinatorError
from edge_runtime.broker_args import PASSWORD_ENV, TLS_CA_ENV, USERNAME_ENV
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.protocol import check_name

COORDINATOR_PREFIX = "edgefl-coordinator-"
MQTT_MAX_PAYLOAD = 268_435_455  # MQTT's own cap on a packet
DEFAULT_MESSAGE_LIMIT = 64 * 1024 * 1024
DEFAULT_DEVICE_CA = Path("/etc/edgefl/ca.crt")
PBKDF2_ITERATIONS = 101  # mosquitto_passwd's default in Mosquitto 2
CA_DAYS, SERVER_DAYS = 3650, 825
SECRET_MODE = 0o600
BROKER_SECRET_MODE = 0o640


class BrokerConfigError(CoordinatorError):
    """The broker configuration cannot be generated as asked; says which option and why."""


@dataclass(frozen=True)
class TlsFiles:
    """The broker's certificate, its key and the CA that signed it (what devices are given)."""

    cert: Path
    key: Path
    ca: Path


@dataclass(frozen=True)
class BrokerPlan:
    """What ``write_config`` generates. ``tls``: None (plain), "generate" (a new CA and server certificate for
    ``hosts``), or existing files."""

    federation: str
    devices: tuple[str, ...]
    port: int = 1883
    bind: str | None = None
    tls: TlsFiles | str | None = None
    hosts: tuple[str, ...] = ("localhost",)
    max_message_bytes: int = DEFAULT_MESSAGE_LIMIT
    device_ca: Path = DEFAULT_DEVICE_CA

    def __post_init__(self) -> None:
        try:
            check_name(self.federation, "--federation")
            for device in self.devices:
                check_name(device, "device id")
        except EdgeRuntimeError as exc:
            raise BrokerConfigError(str(exc)) from exc
        if not self.devices:
            raise BrokerConfigError("no devices: give --devices ID,ID,... or --count N")
        repeated = sorted(d for d, n in Counter(self.devices).items() if n > 1)
        if repeated:
            raise BrokerConfigError(f"device ids given twice: {', '.join(repeated)}")
        if self.coordinator in self.devices:
            raise BrokerConfigError(f"{self.coordinator!r} is the coordinator's username, not a device id")
        if not 1 <= self.port <= 65535:
            raise BrokerConfigError(f"--port must be in 1..65535, got {self.port}")
        if not 1 <= self.max_message_bytes <= MQTT_MAX_PAYLOAD:
            raise BrokerConfigError(f"the message size limit must be in 1..{MQTT_MAX_PAYLOAD} bytes, got "
                                    f"{self.max_message_bytes}")
        if self.tls not in (None, "generate") and not isinstance(self.tls, TlsFiles):
            raise BrokerConfigError(f"tls must be None, 'generate' or TlsFiles, got {self.tls!r}")
        if not self.hosts:
            raise BrokerConfigError("at least one --host: the name devices use to reach the broker")

    @property
    def coordinator(self) -> str:
        """The coordinator's username, which is also its client id (``edgefl-coordinator-<federation>``)."""
        return f"{COORDINATOR_PREFIX}{self.federation}"

    @property
    def broker_url(self) -> str:
        host = f"[{self.hosts[0]}]" if ":" in self.hosts[0] else self.hosts[0]
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def queue_limits(self) -> tuple[int, int]:
        """(max_queued_messages, max_inflight_messages): room for every device's update and report at once
        in the coordinator's queue, and for a task per device in flight."""
        devices = len(self.devices)
        return max(1000, 4 * devices), max(20, min(devices, 1000))


@dataclass(frozen=True)
class GeneratedFiles:
    folder: Path
    conf: Path
    passwords: Path
    acl: Path
    coordinator_env: Path
    device_envs: Mapping[str, Path]
    ca: Path | None


def acl_text(federation: str, coordinator: str) -> str:
    """The ACL of docs/PROTOCOL.md §2.2: a device writes only its own status, update and report and reads only its
    own task and the shared model and state; the coordinator the reverse, for every device."""
    base = f"edgefl/{federation}"
    return "\n".join([
        "# pattern lines apply to every client; %u is its username (= its device id)",
        f"pattern write {base}/devices/%u/status",
        f"pattern write {base}/updates/%u",
        f"pattern write {base}/reports/%u",
        f"pattern write {base}/secagg/%u",
        f"pattern read  {base}/devices/%u/task",
        f"pattern read  {base}/devices/%u/secagg",
        f"pattern read  {base}/model/artifact",
        f"pattern read  {base}/model/global",
        f"pattern read  {base}/model/delta",
        f"pattern read  {base}/coordinator/state",
        "",
        f"user {coordinator}",
        f"topic write {base}/model/artifact",
        f"topic write {base}/model/global",
        f"topic write {base}/model/delta",
        f"topic write {base}/coordinator/state",
        f"topic write {base}/devices/+/task",
        f"topic write {base}/devices/+/secagg",
        f"topic read  {base}/devices/+/status",
        f"topic read  {base}/updates/+",
        f"topic read  {base}/reports/+",
        f"topic read  {base}/secagg/+",
    ]) + "\n"


def mosquitto_conf(plan: BrokerPlan, folder: Path, tls: TlsFiles | None) -> str:
    """``mosquitto.conf`` for ``plan``, naming the files in ``folder`` by absolute path."""
    queued, inflight = plan.queue_limits()
    listener = f"listener {plan.port}" + (f" {plan.bind}" if plan.bind else "")
    lines = [
        f"# Mosquitto configuration of the edgefl federation {plan.federation!r} ({len(plan.devices)} devices),",
        "# written by `edgefl broker-config`; docs/PROTOCOL.md section 2.2 explains the ACL. Start with",
        f"#   mosquitto -c {folder / 'mosquitto.conf'}",
        "per_listener_settings false",
        listener,
    ]
    if tls is not None:
        lines += [f"certfile {tls.cert.resolve()}", f"keyfile {tls.key.resolve()}", "tls_version tlsv1.2"]
    lines += [
        "",
        "# Every client authenticates; its username is its client id (a device's id), so nobody takes another's.",
        "allow_anonymous false",
        f"password_file {folder / 'passwords'}",
        f"acl_file {folder / 'acl'}",
        "use_username_as_clientid true",
        "",
        "# The artifact bundle is the largest message (PROTOCOL.md section 10): it and every update must fit.",
        f"message_size_limit {plan.max_message_bytes}",
        "# Sized for the fleet: the coordinator receives an update and a report from every device at once.",
        f"max_queued_messages {queued}",
        f"max_inflight_messages {inflight}",
        "# Retained messages are kept in memory; the coordinator republishes its own after a broker restart.",
    ]
    return "\n".join(lines) + "\n"


def credentials_env(plan: BrokerPlan, username: str, password: str, ca: Path | None) -> str:
    """An environment file (systemd ``EnvironmentFile=``, or ``set -a; . FILE``) with a client's credentials."""
    who = "the coordinator" if username == plan.coordinator else f"device {username}"
    command = (f"edgefl coordinator --federation {plan.federation} --broker {plan.broker_url} ..."
               if username == plan.coordinator else
               f"edgefl device --device-id {username} --federation {plan.federation} --broker {plan.broker_url} ...")
    lines = [f"# MQTT credentials of {who}, federation {plan.federation!r}; written by `edgefl broker-config`.",
             "# Keep it mode 600. Used with:", f"#   {command}",
             f"{USERNAME_ENV}={username}", f"{PASSWORD_ENV}={password}"]
    if ca is not None:
        lines.append(f"{TLS_CA_ENV}={ca}")
    return "\n".join(lines) + "\n"


def new_password() -> str:
    return secrets.token_urlsafe(24)  # 192 bits; URL-safe characters need no quoting in an environment file


def mosquitto_pbkdf2(username: str, password: str, salt: bytes | None = None) -> str:
    """A password-file line in Mosquitto 2's format: ``user:$7$101$<salt b64>$<hash b64>``."""
    salt = salt if salt is not None else secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, PBKDF2_ITERATIONS)
    return f"{username}:$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def verify_password_line(line: str, password: str) -> bool:
    """Whether a ``$7$`` (PBKDF2-SHA512) or ``$6$`` (SHA512) password-file line accepts ``password``."""
    _user, _, stored = line.strip().partition(":")
    parts = stored.split("$")
    if stored.startswith("$7$") and len(parts) == 5:
        salt, digest = base64.b64decode(parts[3]), base64.b64decode(parts[4])
        return hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2])) == digest
    if stored.startswith("$6$") and len(parts) == 4:
        salt, digest = base64.b64decode(parts[2]), base64.b64decode(parts[3])
        return hashlib.sha512(password.encode() + salt).digest() == digest
    return False


def hash_password_file(path: Path, passwords: Mapping[str, str], tool: str | None = None) -> None:
    """Write ``path`` (mode 600) as a Mosquitto password file; ``tool``: mosquitto_passwd's path (default: found on
    the PATH or in /usr/bin; without it, ``mosquitto_pbkdf2``)."""
    tool = tool or shutil.which("mosquitto_passwd") or next(
        (p for p in ("/usr/bin/mosquitto_passwd",) if os.access(p, os.X_OK)), None)
    if tool is None:
        write_secret(path, "".join(mosquitto_pbkdf2(user, pw) + "\n" for user, pw in passwords.items()), broker=True)
        return
    write_secret(path, "".join(f"{user}:{pw}\n" for user, pw in passwords.items()), broker=True)
    done = subprocess.run([tool, "-U", str(path)], capture_output=True, text=True, check=False)
    if done.returncode != 0 or ":$" not in path.read_text():
        path.unlink()
        raise BrokerConfigError(f"{tool} -U failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")


def write_secret(path: Path, text: str, *, broker: bool = False) -> None:
    """Write ``text`` to ``path`` atomically, readable by its owner only; ``broker``: and by the group
    ``mosquitto`` when written by root, since a Mosquitto started as root reads its files as that user."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, SECRET_MODE)
        if broker and os.geteuid() == 0 and (group := _mosquitto_group()) is not None:
            os.fchown(fd, -1, group)
            os.fchmod(fd, BROKER_SECRET_MODE)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _mosquitto_group() -> int | None:
    import grp

    try:
        return grp.getgrnam("mosquitto").gr_gid
    except KeyError:
        return None


def write_config(plan: BrokerPlan, out: Path, *, force: bool = False) -> GeneratedFiles:
    """Write the configuration, the password file, the ACL, TLS files and every credentials file into ``out``."""
    folder = out.resolve()
    conf = folder / "mosquitto.conf"
    if conf.exists() and not force:
        raise BrokerConfigError(f"{conf} exists; choose another --out, or --force to replace every file (and "
                                "password) in it")
    (folder / "credentials").mkdir(parents=True, exist_ok=True)
    tls = _tls_files(plan, folder)
    passwords = {plan.coordinator: new_password(), **{device: new_password() for device in plan.devices}}
    hash_password_file(folder / "passwords", passwords)
    (folder / "acl").write_text(acl_text(plan.federation, plan.coordinator))
    ca = folder / "ca.crt" if tls is not None else None
    coordinator_env = folder / "credentials" / "coordinator.env"
    write_secret(coordinator_env, credentials_env(plan, plan.coordinator, passwords[plan.coordinator], ca))
    device_envs = {}
    for device in plan.devices:
        device_envs[device] = folder / "credentials" / f"{device}.env"
        write_secret(device_envs[device], credentials_env(plan, device, passwords[device],
                                                          plan.device_ca if tls else None))
    conf.write_text(mosquitto_conf(plan, folder, tls))
    return GeneratedFiles(folder, conf, folder / "passwords", folder / "acl", coordinator_env, device_envs, ca)


def _tls_files(plan: BrokerPlan, folder: Path) -> TlsFiles | None:
    if plan.tls is None:
        return None
    if isinstance(plan.tls, TlsFiles):
        for name, path in (("--tls-cert", plan.tls.cert), ("--tls-key", plan.tls.key), ("--tls-ca", plan.tls.ca)):
            if not path.is_file():
                raise BrokerConfigError(f"{name} {path}: no such file")
        if plan.tls.ca.resolve() != (folder / "ca.crt"):
            shutil.copyfile(plan.tls.ca, folder / "ca.crt")
        return TlsFiles(plan.tls.cert.resolve(), plan.tls.key.resolve(), folder / "ca.crt")
    try:
        import cryptography  # noqa: F401
    except ImportError as exc:
        raise BrokerConfigError(f"--tls needs the cryptography package ({exc}); pip install \"edgefl[coordinator]\", "
                                "or give --tls-cert, --tls-key and --tls-ca") from exc
    ca_cert, ca_key = make_ca(f"edgefl {plan.federation} broker CA")
    cert, key = make_server_cert(ca_cert, ca_key, (*plan.hosts, "localhost", "127.0.0.1"))  # + the coordinator's
    files = TlsFiles(folder / "server.crt", folder / "server.key", folder / "ca.crt")
    write_secret(folder / "ca.key", _key_pem(ca_key))  # keep it: it signs the next server certificate
    write_secret(files.key, _key_pem(key), broker=True)
    files.ca.write_bytes(_cert_pem(ca_cert))
    files.cert.write_bytes(_cert_pem(cert) + _cert_pem(ca_cert))
    return files


# -- certificates (cryptography) -------------------------------------------------------------------

def make_ca(name: str, days: int = CA_DAYS) -> tuple[Any, Any]:
    """A self-signed CA certificate and its key (EC P-256)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def make_server_cert(ca_cert: Any, ca_key: Any, hosts: tuple[str, ...], days: int = SERVER_DAYS,
                     not_before: dt.datetime | None = None) -> tuple[Any, Any]:
    """A server certificate for ``hosts`` (DNS names and IP addresses), signed by the CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def _cert_pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    pem: bytes = cert.public_bytes(serialization.Encoding.PEM)
    return pem


def _key_pem(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    pem: bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    return pem.decode()


def write_pem(folder: Path, name: str, cert: Any, key: Any) -> TlsFiles:
    """``name``.crt and ``name``.key (mode 600, or 640 for the group mosquitto) in ``folder``; ``ca`` is the
    certificate itself."""
    write_secret(folder / f"{name}.key", _key_pem(key), broker=True)
    (folder / f"{name}.crt").write_bytes(_cert_pem(cert))
    return TlsFiles(folder / f"{name}.crt", folder / f"{name}.key", folder / f"{name}.crt")
