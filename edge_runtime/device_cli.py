"""``edgefl device``: run the device agent until stopped; ``edgefl device status``: why it is (not) training."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Any

from edge_runtime.agent import AgentConfig, DeviceAgent
from edge_runtime.argtypes import positive_float, positive_int, probability
from edge_runtime.broker_args import add_broker_arguments, mqtt_options, stop_on_signals
from edge_runtime.cache import default_cache_dir
from edge_runtime.cli import show_progress
from edge_runtime.data import DEFAULT_LABEL_COLUMN
from edge_runtime.errors import DataError, PolicyError
from edge_runtime.local_dp import DEFAULT_LOCAL_DELTA
from edge_runtime.mqtt import Backoff, ConnectCancelled
from edge_runtime.policy import AlwaysEligible, EligibilityPolicy, Scheduler
from edge_runtime.policy_file import Policy, load_policy
from edge_runtime.protocol import Topics, check_name
from edge_runtime.signals import SignalReader, system_reader

DEFAULT_NICE = 10


def default_threads() -> int:
    """Half the cores (at least one): training leaves the owner's foreground work room."""
    return max(1, (os.cpu_count() or 1) // 2)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("device", help="run the device agent: train when the coordinator asks and the policy "
                                             "allows",
                              description="Connect to the broker, fetch and verify the model, and train on local "
                                          "data whenever the coordinator selects this device and its eligibility "
                                          "policy allows. Runs until SIGINT or SIGTERM. `edgefl device status` "
                                          "shows the signals and the policy's decision instead.")
    p.add_argument("--device-id", help="this device's id; also its MQTT client id (required)")
    p.add_argument("--data", type=Path, help="local training data: .npz (x, y) or .csv (required)")
    p.add_argument("--label-column", default=DEFAULT_LABEL_COLUMN, help="label column of a .csv (%(default)s)")
    p.add_argument("--cache-dir", type=Path, help="where artifacts are cached (default ~/.cache/edgefl/device/ID)")
    p.add_argument("--threads", type=positive_int, default=default_threads(),
                   help="interpreter threads (default: half the cores, here %(default)s)")
    p.add_argument("--nice", type=int, default=DEFAULT_NICE, choices=range(20), metavar="N",
                   help="lower the process's CPU priority by N, 0-19, added to the niceness it starts with "
                        "(%(default)s)")
    p.add_argument("--backend", choices=["ai_edge_litert", "tflite_runtime", "tensorflow"],
                   help="force a TFLite backend (default: first installed, or $EDGEFL_TFLITE_BACKEND)")
    privacy = p.add_argument_group("local differential privacy (docs/PRIVACY.md, \"Local DP\")")
    privacy.add_argument("--local-noise-multiplier", type=positive_float, metavar="Z",
                         help="add Gaussian noise of Z x the task's clip bound to every value of the update before it "
                              "leaves the device (default: none)")
    privacy.add_argument("--local-delta", type=probability, default=DEFAULT_LOCAL_DELTA,
                         help="the delta this device's local epsilon is reported at (%(default)g)")
    _add_policy_arguments(p)
    add_broker_arguments(p)
    p.add_argument("--connect-timeout", type=positive_float, metavar="SECONDS",
                   help="give up (exit 2) when the broker cannot be reached for this long at start; default: retry "
                        "with backoff until stopped")
    p.set_defaults(handler=run, device_parser=p)

    actions = p.add_subparsers(dest="device_action", metavar="{status}")
    s = actions.add_parser("status", help="print the signals, the policy's decision and its reasons",
                           description="Read this machine's signals (or --signals FILE), apply the policy, and "
                                       "print every signal, the decision and its reasons: why a device is or is "
                                       "not training. Exits with 0 when the device is eligible, 1 when not.")
    # Given before or after `status`, the same options mean the same (SUPPRESS keeps the earlier value).
    _add_policy_arguments(s, default=argparse.SUPPRESS)
    s.add_argument("--cache-dir", type=Path, default=argparse.SUPPRESS,
                   help="the disk whose free space counts (default ~/.cache/edgefl/device)")
    s.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    s.set_defaults(handler=status)


def _add_policy_arguments(p: argparse.ArgumentParser, default: Any = None) -> None:
    p.add_argument("--policy", type=Path, default=default,
                   help="eligibility policy, TOML (default: no constraints)")
    p.add_argument("--signals", type=Path, default=default,
                   help="read signals from this JSON file instead of the machine (re-read when it changes; "
                        "needs --policy)")


def build_policy(policy_file: Path | None, signals_file: Path | None, disk: Path) -> EligibilityPolicy:
    if policy_file is None:
        if signals_file is not None:
            raise PolicyError(signals_file, "", "--signals needs --policy: without a policy no signal is consulted")
        return AlwaysEligible()
    policy = load_policy(policy_file)
    return Scheduler(policy, _reader(policy, signals_file, disk))


def _reader(policy: Policy, signals_file: Path | None, disk: Path) -> SignalReader:
    return system_reader(disk, policy.metered_interfaces, policy.unmetered_interfaces, signals_file)


def run(args: argparse.Namespace) -> int:
    for flag, value in (("--device-id", args.device_id), ("--data", args.data)):
        if value is None:
            args.device_parser.error(f"{flag} is required to run the agent (or use `edgefl device status`)")
    device_id = check_name(args.device_id, "--device-id")
    cache_dir = args.cache_dir or default_cache_dir(device_id)
    stop = stop_on_signals()
    retry = Backoff(give_up_after_s=args.connect_timeout, stop=stop)  # a broker down at start is waited for
    config = AgentConfig(
        device_id=device_id,
        data=args.data,
        mqtt=mqtt_options(args.broker, device_id, args.username, None, args.tls_ca, args.mqtt_version, retry),
        cache_dir=cache_dir,
        topics=Topics(args.federation),
        label_column=args.label_column,
        backend=args.backend,
        num_threads=args.threads,
        local_noise=args.local_noise_multiplier or 0.0,
        local_delta=args.local_delta,
    )
    if not args.data.is_file():
        raise DataError(args.data, "no such file; expected a .npz (x, y) or .csv training file")
    policy = build_policy(args.policy, args.signals, cache_dir)
    show_progress("edge_runtime.agent", "edge_runtime.mqtt")  # connected, model received, tasks, eligibility
    if args.nice:
        os.nice(args.nice)  # the whole process, so the interpreter's worker threads inherit it
    with contextlib.suppress(ConnectCancelled):  # SIGTERM before the broker was ever reached
        DeviceAgent(config, policy).run(stop)
    return 0


def status(args: argparse.Namespace) -> int:
    """Exit status 0 when the policy would let the device train, 1 when it would not."""
    from edge_runtime.device_status import print_status

    disk = args.cache_dir or default_cache_dir("")
    policy = load_policy(args.policy) if args.policy else None
    reader = _reader(policy or Policy(), args.signals, disk)
    return 0 if print_status(reader, policy, args.policy, as_json=args.json) else 1
