"""Command-line options for reaching an MQTT broker, shared by ``edgefl device`` and ``edgefl coordinator``."""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path
from typing import Any

from edge_runtime.mqtt import BrokerUrl, MqttOptions, ProtocolChoice
from edge_runtime.protocol import DEFAULT_FEDERATION

PASSWORD_ENV = "EDGEFL_MQTT_PASSWORD"


def add_broker_arguments(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """``defaults=False`` leaves unset options as None, so that a config file can fill them."""
    def default(value: Any) -> Any:
        return value if defaults else None

    group = parser.add_argument_group("broker")
    group.add_argument("--broker", default=default("mqtt://127.0.0.1:1883"),
                       help="mqtt://HOST[:PORT] or mqtts://HOST[:PORT] (default mqtt://127.0.0.1:1883)")
    group.add_argument("--federation", default=default(DEFAULT_FEDERATION),
                       help=f"federation name, the topic prefix edgefl/NAME/ (default {DEFAULT_FEDERATION})")
    group.add_argument("--username", help="MQTT username")
    group.add_argument("--password", help=f"MQTT password (better: set ${PASSWORD_ENV})")
    group.add_argument("--tls-ca", type=Path, help="CA certificate file for TLS (implies TLS)")
    group.add_argument("--mqtt-version", choices=["auto", "5", "3.1.1"], default=default("auto"),
                       help="MQTT protocol version (default auto: v5, else 3.1.1)")


def mqtt_options(broker: str, client_id: str, username: str | None = None, password: str | None = None,
                 tls_ca: Path | None = None, protocol: ProtocolChoice = "auto") -> MqttOptions:
    if password is None:
        password = os.environ.get(PASSWORD_ENV)
    return MqttOptions(BrokerUrl.parse(broker), client_id, username, password, tls_ca, protocol=protocol)


def stop_on_signals() -> threading.Event:
    """An event set by SIGINT or SIGTERM, so a service stops cleanly (offline status, closed session)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop
