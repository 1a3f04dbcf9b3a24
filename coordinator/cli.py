"""``edgefl coordinator``: run federated rounds over MQTT; a line per round on stdout.

On a terminal the line is short and for people (``coordinator.report.human_line``); with ``--json``, or when
stdout is a pipe or a file, it is the round's JSON line as ``rounds.jsonl`` has it. Why a round waits for
devices goes to stderr. ``--metrics-port`` serves Prometheus metrics (``coordinator.metrics``).
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path
from typing import Any

from coordinator.config import build_config
from coordinator.pipeline_args import add_pipeline_arguments
from coordinator.report import human_line
from edge_runtime.argtypes import positive_float, positive_int
from edge_runtime.broker_args import add_broker_arguments, stop_on_signals
from edge_runtime.cli import show_progress
from edge_runtime.mqtt import Backoff, ConnectCancelled

CLI_ONLY = ("config", "command", "handler", "verbose", "json", "metrics_port", "metrics_host")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "coordinator", help="run federated rounds: select devices, aggregate their updates (--strategy)",
        description="Select a fraction of the eligible devices each round, collect their clipped updates until the "
                    "goal count or the deadline, and commit the strategy's aggregate when enough arrived. Every option "
                    "but the output ones can also be set in a TOML file (--config) under the same name, e.g. "
                    "round-timeout = 30; flags win over the file.")
    p.add_argument("--config", type=Path, help="TOML file with any of the options below")
    p.add_argument("--artifact", type=Path, help="artifact folder written by `edgefl export` (required)")
    p.add_argument("--state-dir", type=Path, help="checkpoints and rounds.jsonl go here (required)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --state-dir")
    rounds = p.add_argument_group("rounds")
    rounds.add_argument("--rounds", type=positive_int, help="rounds to hold, abandoned ones included (10)")
    rounds.add_argument("--fraction", type=positive_float, help="goal = this fraction of eligible devices (0.1)")
    rounds.add_argument("--min-clients", type=positive_int, help="goal is at least this many devices (2)")
    rounds.add_argument("--over-select", type=positive_float, help="select goal x this many devices (1.3)")
    rounds.add_argument("--min-reports", type=positive_int, help="commit only with this many updates (2)")
    rounds.add_argument("--round-timeout", type=positive_float, help="deadline of a round, seconds (60)")
    rounds.add_argument("--expect-devices", type=positive_int,
                        help="before the first round, wait (up to --round-timeout) until this many devices report "
                             "holding the model")
    rounds.add_argument("--round-interval", type=float, help="a round starts at least this many seconds after the "
                                                             "previous one started (0: back to back)")
    rounds.add_argument("--seed", type=int, help="seed of the device selection (0)")
    training = p.add_argument_group("training")
    training.add_argument("--local-epochs", type=positive_int, help="epochs each device trains per round (1)")
    training.add_argument("--lr", type=positive_float, help="device learning rate (default: the manifest's)")
    training.add_argument("--clip-norm", type=positive_float, help="L2 bound on each device's update (5.0)")
    training.add_argument("--max-payload", type=positive_int, help="refuse larger updates, bytes "
                                                                   "(default: model size + 64 KiB)")
    add_pipeline_arguments(p)
    evaluation = p.add_argument_group("evaluation")
    evaluation.add_argument("--eval-every", type=int, help="federated evaluation every K rounds, 0: never (5)")
    evaluation.add_argument("--test-data", type=Path, help="held-out .npz/.csv evaluated after every commit")
    add_broker_arguments(p, defaults=False)
    p.add_argument("--connect-timeout", type=positive_float, metavar="SECONDS",
                   help="give up (exit 2) when the broker cannot be reached for this long at start; default: retry "
                        "with backoff until stopped")
    output = p.add_argument_group("output (command line only)")
    output.add_argument("--json", action="store_true",
                        help="print each round's JSON line, as rounds.jsonl has it (the default when stdout is not "
                             "a terminal; on one, a short line per round)")
    output.add_argument("--metrics-port", type=positive_int, metavar="PORT",
                        help="serve Prometheus metrics at http://HOST:PORT/metrics (needs prometheus-client, in the "
                             "coordinator extra)")
    output.add_argument("--metrics-host", default="0.0.0.0", metavar="HOST",
                        help="address the metrics listen on (%(default)s: every interface)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from coordinator.metrics import CoordinatorMetrics
    from coordinator.server import Coordinator

    options = {name: value for name, value in vars(args).items() if name not in CLI_ONLY}
    options["mqtt_version"] = options.pop("mqtt_version", None)
    config = build_config(args.config, options)
    metrics = CoordinatorMetrics() if args.metrics_port is not None else None
    as_json = args.json or not sys.stdout.isatty()
    stop = stop_on_signals()
    retry = Backoff(give_up_after_s=config.connect_timeout, stop=stop)  # a broker down at start is waited for
    coordinator = Coordinator(config, on_round=partial(print_line, as_json=as_json, rounds=config.rounds),
                              on_wait=_print_wait, metrics=metrics, retry=retry)
    print(f"coordinator: artifact {coordinator.artifact_id[:12]} ({coordinator.artifact.manifest.model_name}), "
          f"rounds {coordinator.state.next_round}..{config.rounds}, broker {config.broker}, "
          f"federation {config.federation}", file=sys.stderr)
    show_progress("edge_runtime.mqtt")  # connected, or why not and when it tries again
    try:
        if metrics is not None:
            metrics.serve(args.metrics_port, args.metrics_host)
            print(f"coordinator: metrics at http://{args.metrics_host}:{args.metrics_port}/metrics", file=sys.stderr)
        state = coordinator.run(stop)
    except ConnectCancelled:
        print(f"coordinator: stopped before the broker {config.broker} was reached", file=sys.stderr)
        return 0
    finally:
        if metrics is not None:
            metrics.close()
    print(f"coordinator: {state.committed_rounds} rounds committed, model version {state.model_version}; "
          f"checkpoint in {config.state_dir}", file=sys.stderr)
    return 0


def print_line(line: dict[str, Any], *, as_json: bool, rounds: int) -> None:
    """A round line on stdout: its JSON, or the short line for people."""
    print(json.dumps(line) if as_json else human_line(line, rounds), flush=True)


def _print_wait(reason: str) -> None:
    print(f"coordinator: {reason}", file=sys.stderr, flush=True)
