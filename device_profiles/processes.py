"""The child processes of a fleet run: the embedded broker and the device workers."""

from __future__ import annotations

import ctypes
import logging
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from coordinator.broker import free_port
from device_profiles.errors import FleetError

log = logging.getLogger(__name__)
_PR_SET_PDEATHSIG = 1  # prctl(2)


def launch(args: Sequence[str], log_file: Path) -> subprocess.Popen[bytes]:
    """``python ARGS`` with its output in ``log_file``; on Linux it gets SIGTERM if this process dies."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as out:
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=_terminate_with_parent)


# Looked up here, not in the child: between fork and exec only the simplest calls are safe.
_PRCTL = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None


def _terminate_with_parent() -> None:  # in the child, between fork and exec
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def start_embedded_broker(log_file: Path, timeout_s: float = 20.0) -> tuple[subprocess.Popen[bytes], str]:
    """``edgefl broker`` in its own process (its own core and GIL), on a free port; returns it and its URL."""
    port = free_port()
    proc = launch(["-m", "edge_runtime.cli", "broker", "--port", str(port)], log_file)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise FleetError(f"the embedded broker exited with code {proc.returncode}; see {log_file} "
                             "(it needs the broker extra: pip install 'edgefl[broker]')")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return proc, f"mqtt://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    stop_all([proc])
    raise FleetError(f"the embedded broker did not listen on port {port} within {timeout_s:g} s; see {log_file}")


def stop_all(procs: Sequence[subprocess.Popen[bytes]], timeout_s: float = 60.0) -> None:
    """SIGTERM every process, wait for them together, SIGKILL what is still running at the end."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("process %d did not stop within %g s; killing it", proc.pid, timeout_s)
            proc.kill()
            proc.wait()
