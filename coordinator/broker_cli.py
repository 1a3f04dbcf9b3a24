"""``edgefl broker``: an embedded MQTT 3.1.1 broker for a laptop without Mosquitto, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from coordinator.broker import DEFAULT_HOST, DEFAULT_PORT, EmbeddedBroker
from edge_runtime.broker_args import stop_on_signals


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 0..65535, got {value}")
    return value


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("broker", help="run an embedded MQTT broker (no Mosquitto needed)",
                              description="Run an in-process MQTT 3.1.1 broker (amqtt) with anonymous access "
                                          "until Ctrl-C or SIGTERM. For a laptop; use Mosquitto for a fleet. "
                                          'Needs pip install "edgefl[broker]".')
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (%(default)s; 0.0.0.0 for devices on the network)")
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT, help="TCP port (%(default)s; 0 picks a free one)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not getattr(args, "verbose", 0):
        # amqtt warns about every MQTT v5 CONNECT it refuses, and edgefl's clients try v5 before 3.1.1.
        logging.getLogger("amqtt").setLevel(logging.ERROR)
    stop = stop_on_signals()
    with EmbeddedBroker(args.host, args.port) as broker:
        print(f"embedded MQTT 3.1.1 broker on {broker.url} (Ctrl-C to stop)", flush=True)
        while not stop.wait(0.5):
            pass
    return 0
