"""Running a platform command for a signal: its output, or nothing, never an exception."""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Sequence

log = logging.getLogger(__name__)
COMMAND_TIMEOUT_S = 3.0


def run_command(argv: Sequence[str]) -> str | None:
    """A command's stdout, or ``None`` when it is missing, fails or hangs (the signal is then unknown)."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("%s: %s", argv[0], exc)
        return None
    if done.returncode != 0:
        log.debug("%s exited with %d: %s", argv[0], done.returncode, done.stderr.strip()[:200])
        return None
    return done.stdout
