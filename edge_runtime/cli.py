"""The ``edgefl`` command: one entry point, one module per group of subcommands.

Each module listed in ``COMMAND_MODULES`` exposes ``register(subparsers)``
and imports nothing heavy at module level, so ``edgefl --help`` and the
device-side commands run without TensorFlow.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence

from edge_runtime.errors import EdgeflError

COMMAND_MODULES = (
    "model_export.cli",
    "edge_runtime.train_cli",
    "edge_runtime.device_cli",
    "coordinator.cli",
    "coordinator.broker_cli",
    "coordinator.broker_config_cli",
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


# What native libraries write to stderr on their own at start-up, below Python's logging: absl's preamble and its
# log lines (TensorFlow's oneDNN, CUDA and cuInit messages), and LiteRT's note on its CPU delegate.
NATIVE_LOG_LINE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                             r"|[IWEF]\d{4} [\d:.]+ +\d+ [\w.-]+:\d+\] .*"
                             r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.")


def show_progress(*loggers: str) -> None:
    """Let these loggers' INFO records through at the default level: a command's progress, said without ``-v``."""
    for name in loggers:
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)


@contextlib.contextmanager
def native_logs_hidden(hide: bool = True) -> Iterator[None]:
    """Hide the lines native libraries log to file descriptor 2 while the block runs (``NATIVE_LOG_LINE``).

    Their start-up lines bypass Python's logging, and absl's come before any setting can quiet them. The
    block's stderr goes to a temporary file; afterwards every other line is written back, and every line if
    the block raised. Meant for short, single-threaded blocks (an import, building an interpreter): what is
    written to stderr meanwhile appears when the block ends.
    """
    if not hide:
        yield
        return
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to redirect
        yield
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        raised = True
        try:
            yield
            raised = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode(errors="replace").splitlines(keepends=True)
            kept = [line for line in lines if raised or not NATIVE_LOG_LINE.fullmatch(line.rstrip("\r\n"))]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
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
