"""``edgefl report RUN_FOLDER``: draw a finished fleet run's ``report.png`` again, with a baseline if asked."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge_runtime.argtypes import positive_int


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report", help="draw a finished edgefl fleet run's report.png again, with a baseline if asked",
        description="Redraw RUN_FOLDER/report.png from the run's rounds.jsonl and summary.json. --central trains "
                    "the run's own artifact on its whole training split (data/train.npz) with the device runtime "
                    "and draws its accuracy on data/test.npz as a baseline; --baseline draws an accuracy you give. "
                    "Either is kept in baseline.json, and drawn again by later redraws.")
    p.add_argument("folder", type=Path, metavar="RUN_FOLDER", help="the run folder (edgefl fleet --out)")
    baseline = p.add_mutually_exclusive_group()
    baseline.add_argument("--central", type=positive_int, metavar="EPOCHS",
                          help="train centrally for EPOCHS epochs for the baseline (a few seconds for digits)")
    baseline.add_argument("--baseline", type=_accuracy, metavar="ACCURACY", help="a baseline accuracy in [0, 1]")
    p.add_argument("--baseline-label", metavar="TEXT",
                   help="what the baseline is, in the legend (default: how it was made)")
    p.add_argument("--seed", type=int, default=0, help="--central: the shuffling seed (%(default)s)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from device_profiles.errors import FleetError
    from device_profiles.report import Baseline, central_baseline, run_report
    from device_profiles.run_folder import RunFolder, add_to_record, check_writable

    folder = RunFolder(args.folder)
    if not (folder.rounds.is_file() and folder.summary.is_file()):
        raise FleetError(f"{folder.root} lacks {folder.rounds.name} or {folder.summary.name}; expected the "
                         "folder of a finished edgefl fleet run (its --out)")
    given = args.central is not None or args.baseline is not None
    if args.baseline_label is not None and not given:
        raise FleetError("--baseline-label names a baseline; expected --central or --baseline with it")
    written = [folder.report, folder.baseline] if given else [folder.report]
    for path in written:  # before a central baseline's training, not after
        check_writable(folder, path)
    try:
        if given:
            baseline = (central_baseline(folder, args.central, args.seed) if args.central is not None
                        else Baseline(args.baseline, "given baseline"))
            replace(baseline, label=args.baseline_label or baseline.label).write(folder.baseline)
        run_report(folder)
    finally:
        add_to_record(folder, [path for path in written if path.exists()])
    drawn = Baseline.read(folder.baseline) if folder.baseline.exists() else None
    print(f"wrote {folder.report}" + (f" with {drawn.label}: {drawn.accuracy:.4f}" if drawn else ""))
    return 0


def _accuracy(text: str) -> float:
    from device_profiles.report import Baseline

    try:
        return Baseline(float(text), "given baseline").accuracy  # the one check of a baseline's accuracy
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an accuracy in [0, 1], got {text!r}") from None
