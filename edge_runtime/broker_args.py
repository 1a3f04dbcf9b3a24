"""Command-line options for reaching an MQTT broker, shared by ``edgefl device`` and ``edgefl coordinator``.

Credentials come from the environment, the way a systemd ``EnvironmentFile`` (such as the files
``edgefl broker-config`` writes) passes them: the password never from a flag, where every user could read
it in ``ps``; the username and CA file from a flag, else from the environment.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_runtime.mqtt import Backoff, BrokerUrl, MqttOptions, ProtocolChoice
from edge_runtime.protocol import DEFAULT_FEDERATION

PASSWORD_ENV = "EDGEFL_MQTT_PASSWORD"
USERNAME_ENV = "EDGEFL_MQTT_USERNAME"
TLS_CA_ENV = "EDGEFL_TLS_CA"  # used for mqtts:// brokers only; --tls-ca also turns TLS on for mqtt://
CREDENTIAL_ENVS = (USERNAME_ENV, PASSWORD_ENV, TLS_CA_ENV)


def add_broker_arguments(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """``defaults=False`` leaves unset options as None, so that a config file can fill them."""
    def default(value: Any) -> Any:
        return value if defaults else None

    group = parser.add_argument_group("broker")
    group.add_argument("--broker", default=default("mqtt://127.0.0.1:1883"),
                       help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (default mqtt://127.0.0.1:1883)")
    group.add_argument("--federation", default=default(DEFAULT_FEDERATION),
                       help=f"federation name, the topic prefix edgefl/NAME/ (default {DEFAULT_FEDERATION})")
    group.add_argument("--username", help=f"MQTT username (default ${USERNAME_ENV}); the password is read from "
                                          f"${PASSWORD_ENV} only")
    group.add_argument("--tls-ca", type=Path, help=f"CA certificate file for TLS (implies TLS; default ${TLS_CA_ENV} "
                                                   "for mqtts://)")
    group.add_argument("--mqtt-version", choices=["auto", "5", "3.1.1"], default=default("auto"),
                       help="MQTT protocol version (default auto: v5, else 3.1.1)")


def mqtt_options(broker: str, client_id: str, username: str | None = None, password: str | None = None,
                 tls_ca: Path | None = None, protocol: ProtocolChoice = "auto", retry: Backoff | None = None,
                 environ: Mapping[str, str] | None = None) -> MqttOptions:
    """Options for a connection; what is not given is taken from ``environ`` (default: ``os.environ``)."""
    env = os.environ if environ is None else environ
    url = BrokerUrl.parse(broker)
    if tls_ca is None and url.tls and env.get(TLS_CA_ENV):
        tls_ca = Path(env[TLS_CA_ENV])
    return MqttOptions(url, client_id, username or env.get(USERNAME_ENV) or None,
                       password if password is not None else env.get(PASSWORD_ENV), tls_ca, protocol=protocol,
                       retry=retry)


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so a service stops cleanly (offline status, closed session)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop
