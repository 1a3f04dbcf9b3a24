"""``edgefl fleet``: emulate a fleet of devices on this machine; a progress bar and one line per round."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from coordinator.pipeline_args import add_pipeline_arguments
from device_profiles.attacks import ATTACK_KINDS
from device_profiles.fleet_config import (
    DAY_SECONDS_PER_DEVICE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_FILTERS,
    DEFAULT_LR,
    DEFAULT_PARTITION,
    DEFAULT_TEST_FRACTION,
    MAX_DEVICES_PER_PROCESS,
    MIN_DAY_SECONDS,
    NORMALIZE,
    FleetConfig,
    build_fleet_config,
)
from edge_runtime.argtypes import int_list, positive_float, positive_int

DEFAULTS = FleetConfig()


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "fleet", help="emulate a fleet of heterogeneous devices on this machine (real agents and coordinator)",
        description="Partition a dataset over N emulated devices with profiles (speed, network, battery, "
                    "availability by hour, drop-out), run the real device agent for each against a broker "
                    "(embedded by default) and the real coordinator, on one simulated clock. Writes a run folder: "
                    "rounds.jsonl, partition.npz, devices.json, summary.json, report.png. Every option can also "
                    "be set in a TOML file (--config) under the same name; flags win over the file.")
    p.add_argument("--config", type=Path, help="TOML file with any of the options below")
    fleet = p.add_argument_group("fleet")
    fleet.add_argument("--devices", type=positive_int, help=f"emulated devices ({DEFAULTS.devices})")
    fleet.add_argument("--dataset", help="digits, breast_cancer, wine, a .npz/.csv file, or a folder of per-device "
                                         f"files ({DEFAULTS.dataset})")
    fleet.add_argument("--partition", help="iid, dirichlet:ALPHA, shards:K or quantity:SIGMA "
                                           f"({DEFAULT_PARTITION}); not for a folder of per-device files")
    fleet.add_argument("--profiles", help="profile mix: NAME:WEIGHT,... or mixed (the default: phones, Pis and "
                                          "gateways)")
    fleet.add_argument("--profile-file", type=Path, help="TOML file of your own device profiles (added to the "
                                                         "catalog)")
    fleet.add_argument("--policy", type=Path, help="eligibility policy file for every device (default: charging, "
                                                   "unmetered, idle 10 min)")
    fleet.add_argument("--min-examples", type=positive_int, help=f"examples per device at least "
                                                                 f"({DEFAULTS.min_examples})")
    fleet.add_argument("--test-fraction", type=positive_float, help="held-out share the coordinator evaluates "
                                                                    f"({DEFAULT_TEST_FRACTION}; of every file of "
                                                                    "a folder)")
    fleet.add_argument("--test-data", type=Path, help="a .npz/.csv test set of its own, evaluated after every "
                                                      "commit; then nothing is held out of the devices' data")
    fleet.add_argument("--label-column", help=f"label column of a .csv ({DEFAULTS.label_column})")
    fleet.add_argument("--attack", metavar="KIND:FRACTION",
                       help=f"make that fraction of the devices hostile, KIND one of {', '.join(ATTACK_KINDS)} "
                            "(none)")
    fleet.add_argument("--local-noise-multiplier", type=positive_float, metavar="Z",
                       help="local DP: every device adds Gaussian noise of Z x the clip bound to its update "
                            "(docs/PRIVACY.md; none)")
    model = p.add_argument_group("model")
    model.add_argument("--artifact", type=Path, help="an artifact folder written by `edgefl export`, checked "
                                                     "against the data, instead of one exported from the options "
                                                     "below")
    model.add_argument("--model", choices=["mlp", "cnn"], help="model family (default: cnn for images, mlp for "
                                                               "anything else)")
    model.add_argument("--hidden", type=int_list, help="dense hidden sizes, e.g. 64,32 (mlp 64; cnn none)")
    model.add_argument("--filters", type=int_list, help="cnn: 3x3 conv filters per block "
                                                        f"({','.join(map(str, DEFAULT_FILTERS))})")
    model.add_argument("--batch-size", type=positive_int, help=f"training batch size ({DEFAULT_BATCH_SIZE})")
    model.add_argument("--lr", type=positive_float, help=f"device learning rate, SGD ({DEFAULT_LR}; with "
                                                         "--artifact, the artifact's)")
    model.add_argument("--momentum", type=float, help="SGD momentum (0.0)")
    model.add_argument("--normalize", choices=NORMALIZE, help="standard: the model standardizes each feature by "
                                                              "the training split's mean and std; none: inputs as "
                                                              "they are (standard)")
    rounds = p.add_argument_group("rounds")
    rounds.add_argument("--rounds", type=positive_int, help=f"rounds ({DEFAULTS.rounds})")
    rounds.add_argument("--fraction", type=positive_float, help="goal = this fraction of eligible devices "
                                                                f"({DEFAULTS.fraction})")
    rounds.add_argument("--min-clients", type=positive_int, help=f"goal at least ({DEFAULTS.min_clients})")
    rounds.add_argument("--min-reports", type=positive_int, help=f"commit with at least ({DEFAULTS.min_reports})")
    rounds.add_argument("--over-select", type=positive_float, help=f"select goal x this ({DEFAULTS.over_select})")
    rounds.add_argument("--round-timeout", type=positive_float,
                        help="round deadline in seconds of the coordinator's clock: simulated with --speedup S "
                             "(600), real with max (5)")
    rounds.add_argument("--round-interval", type=float,
                        help="simulated seconds from one round's start to the next's, 0: back to back "
                             f"({DEFAULTS.round_interval:g})")
    rounds.add_argument("--local-epochs", type=positive_int, help=f"epochs per round ({DEFAULTS.local_epochs})")
    rounds.add_argument("--clip-norm", type=positive_float, help=f"L2 bound of updates ({DEFAULTS.clip_norm:g})")
    rounds.add_argument("--eval-every", type=int, help="federated evaluation every K rounds, 0: never "
                                                       f"({DEFAULTS.eval_every})")
    add_pipeline_arguments(p)
    running = p.add_argument_group("running")
    running.add_argument("--broker", help="embedded (an amqtt broker in its own process) or mqtt://HOST[:PORT] "
                                          "(e.g. Mosquitto)")
    running.add_argument("--federation", help=f"federation name, the topic prefix ({DEFAULTS.federation})")
    running.add_argument("--speedup", help="simulated seconds per real second, e.g. 60, or max: no simulated "
                                           f"waiting at all ({DEFAULTS.speedup})")
    running.add_argument("--day-seconds", type=positive_float,
                         help=f"with --speedup max, real seconds per simulated day (default {DAY_SECONDS_PER_DEVICE:g} "
                              f"per device, at least {MIN_DAY_SECONDS:g})")
    running.add_argument("--start-hour", type=float, help=f"simulated UTC hour the run starts at "
                                                              f"({DEFAULTS.start_hour:g})")
    running.add_argument("--processes", type=positive_int,
                         help=f"worker processes for the devices ({DEFAULTS.processes}; at least one per "
                              f"{MAX_DEVICES_PER_PROCESS} devices)")
    running.add_argument("--shard", help="i/n: run the i-th of n slices of the devices; shard 1 runs the "
                                         f"coordinator, all share --broker ({DEFAULTS.shard})")
    running.add_argument("--seed", type=int, help="seed of the split, partition, profiles and "
                                                         f"selection ({DEFAULTS.seed})")
    running.add_argument("--out", type=Path, help=f"run folder ({DEFAULTS.out})")
    running.add_argument("--backend", choices=["ai_edge_litert", "tflite_runtime", "tensorflow"],
                         help="force a TFLite backend on the devices")
    running.add_argument("--no-progress", action="store_true", help="no progress bar (the round lines remain)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from device_profiles.fleet import run_fleet
    from edge_runtime.broker_args import stop_on_signals

    options = {name: value for name, value in vars(args).items()
               if name not in ("config", "command", "handler", "verbose", "no_progress")}
    config = build_fleet_config(args.config, options)
    if not args.verbose:  # refused late updates and interrupted tasks are part of a fleet's life: counted, not shouted
        logging.getLogger("coordinator").setLevel(logging.ERROR)
    bars: list[Any] = []  # the bar appears with the first round, after the preparation's messages

    def on_round(line: dict[str, Any]) -> None:
        if not bars:
            bars.append(tqdm(total=config.rounds, unit="round", desc="fleet", file=sys.stderr,
                             disable=args.no_progress, initial=line["round"] - 1))
        bars[0].write(round_text(line), file=sys.stdout)
        bars[0].update(1)

    def note(text: str) -> None:
        (bars[0].write if bars else print)(f"fleet: {text}", file=sys.stderr)

    try:  # SIGTERM or Ctrl-C end the run cleanly: devices offline, broker stopped, summary of the rounds held
        summary = run_fleet(config, on_round=on_round, note=note, stop=stop_on_signals())
    finally:
        for bar in bars:
            bar.close()
    accuracy, best = summary.final_accuracy, summary.best_accuracy
    print(f"fleet: {summary.committed}/{summary.rounds} rounds committed, final test accuracy "
          f"{'-' if accuracy is None else f'{accuracy:.4f}'} (best {'-' if best is None else f'{best:.4f}'}), "
          f"{summary.simulated_time_s / 3600:.1f} simulated h in {summary.wall_time_s:.0f} s; "
          f"run folder {config.out}", file=sys.stderr)
    moved = summary.traffic
    if moved.bytes_up:
        mix = ", ".join(f"{name} {n}" for name, n in moved.codec_mix.items())
        print(f"fleet: updates {moved.bytes_up / 1e6:.2f} MB up ({mix}; {moved.compression:.1f}x smaller than "
              f"float32), {moved.bytes_down / 1e6:.2f} MB down to the selected devices", file=sys.stderr)
    return 0 if summary.completed or not config.runs_coordinator else 1


def round_text(line: dict[str, Any]) -> str:
    test = line.get("test")
    accuracy = f"{test['accuracy']:.4f}" if test else "-"
    return (f"round {line['round']:>3} {line['status']:<9} {line['sim_hour']:05.2f}h  eligible {line['eligible']:>4}"
            f"  selected {line['selected']:>3}  reported {line['reported']:>3}  dropped {line['dropped']:>2}"
            f"  interrupted {line['interrupted']:>2}  acc {accuracy}  {line['duration_s']:.1f}s")
