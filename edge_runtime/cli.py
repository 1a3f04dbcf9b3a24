"""The ``edgefl`` command: one entry point, one module per group of subcommands.

Each module listed in ``COMMAND_MODULES`` exposes ``register(subparsers)``
and imports nothing heavy at module level, so ``edgefl --help`` and the
device-side commands run without TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import sys
from collections.abc import Sequence

from edge_runtime import native_logs
from edge_runtime.errors import EdgeflError

COMMAND_MODULES = (
    "model_export.cli",
    "edge_runtime.train_cli",
    "edge_runtime.device_cli",
    "coordinator.cli",
    "coordinator.broker_cli",
    "coordinator.broker_config_cli",
    "coordinator.dp_plan_cli",
    "device_profiles.fleet_cli",
    "device_profiles.report_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefl",
        description="On-device federated learning: export builtin-only TFLite training artifacts, train on devices.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def _version() -> str:
    try:
        return importlib.metadata.version("edgefl")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def show_progress(*loggers: str) -> None:
    """Let these loggers' INFO records through at the default level: a command's progress, said without ``-v``."""
    for name in loggers:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    native_logs.show(args.verbose > 0)
    try:
        code: int = args.handler(args)
    except EdgeflError as exc:
        print(f"edgefl {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
