"""``edgefl device``: run the device agent against a broker until stopped."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edge_runtime.agent import AgentConfig, DeviceAgent
from edge_runtime.argtypes import positive_int
from edge_runtime.broker_args import add_broker_arguments, mqtt_options, stop_on_signals
from edge_runtime.cache import default_cache_dir
from edge_runtime.data import DEFAULT_LABEL_COLUMN
from edge_runtime.errors import DataError
from edge_runtime.protocol import Topics, check_name


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("device", help="run the device agent: train when the coordinator asks",
                              description="Connect to the broker, fetch and verify the model, and train on local "
                                          "data whenever the coordinator selects this device. Runs until SIGINT "
                                          "or SIGTERM.")
    p.add_argument("--device-id", required=True, help="this device's id; also its MQTT client id")
    p.add_argument("--data", required=True, type=Path, help="local training data: .npz (x, y) or .csv")
    p.add_argument("--label-column", default=DEFAULT_LABEL_COLUMN, help="label column of a .csv (%(default)s)")
    p.add_argument("--cache-dir", type=Path, help="where artifacts are cached (default ~/.cache/edgefl/device/ID)")
    p.add_argument("--threads", type=positive_int, help="interpreter threads (default: the runtime's)")
    p.add_argument("--backend", choices=["ai_edge_litert", "tflite_runtime", "tensorflow"],
                   help="force a TFLite backend (default: first installed, or $EDGEFL_TFLITE_BACKEND)")
    add_broker_arguments(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    device_id = check_name(args.device_id, "--device-id")
    config = AgentConfig(
        device_id=device_id,
        data=args.data,
        mqtt=mqtt_options(args.broker, device_id, args.username, args.password, args.tls_ca, args.mqtt_version),
        cache_dir=args.cache_dir or default_cache_dir(device_id),
        topics=Topics(args.federation),
        label_column=args.label_column,
        backend=args.backend,
        num_threads=args.threads,
    )
    if not config.data.is_file():
        raise DataError(config.data, "no such file; expected a .npz (x, y) or .csv training file")
    DeviceAgent(config).run(stop_on_signals())
    return 0
