"""What native libraries print on stderr at start-up, below Python's logging, hidden unless asked for.

TensorFlow's absl preamble and its oneDNN/CUDA/cuInit lines, and LiteRT's
note on its CPU delegate, are written straight to file descriptor 2 and no
setting quiets all of them. ``native_logs_hidden`` catches them around a
short block; ``first_interpreter`` does so around the first interpreter a
process builds (LiteRT notes its delegate once per process). ``show(True)``
(``edgefl -v``) lets them through.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_shown = False
_first_lock = threading.Lock()
_first_built = False


def show(shown: bool) -> None:
    """Whether native start-up lines are shown in this process (``edgefl -v``)."""
    global _shown
    _shown = shown


# What native libraries write to stderr on their own at start-up, below Python's logging: absl's preamble and its
# log lines (TensorFlow's oneDNN, CUDA and cuInit messages), and LiteRT's note on its CPU delegate.
NATIVE_LOG_LINE = re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
                             r"|[IWEF]\d{4} [\d:.]+ +\d+ [\w.-]+:\d+\] .*"
                             r"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.")



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


def first_interpreter(build: Callable[[], T]) -> T:
    """``build()``; the first call in a process with native lines hidden (unless shown), under a lock, so that
    threads building interpreters at once never redirect stderr together. Later calls just build: LiteRT
    prints its note once per process."""
    global _first_built
    if _first_built or _shown:
        return build()
    with _first_lock:
        if _first_built:
            return build()
        with native_logs_hidden():
            result = build()
        _first_built = True
        return result
