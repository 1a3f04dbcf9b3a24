"""Signals from a JSON file, re-read whenever it changes: for tests, demos and emulated devices.

The file holds one object whose keys are signal names
(``{"power": "battery", "battery_percent": 42, "network": "metered"}``); a
signal left out is unknown. Replace the file atomically (write a temporary
file, then rename it over this one) so a reader never sees half of it.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from edge_runtime.errors import SignalError
from edge_runtime.signals.base import LINK_VALUES, NETWORK_VALUES, POWER_VALUES, SIGNAL_NAMES, Signals

RANGES = {"battery_percent": (0.0, 100.0), "cpu_percent": (0.0, 100.0)}
TEXT_CHOICES = {"power": POWER_VALUES, "network": NETWORK_VALUES, "link": LINK_VALUES}


def parse_signals(data: Any, source: object) -> Signals:
    """Validate a signals object (as loaded from JSON) and build the reading."""
    if not isinstance(data, dict):
        raise SignalError(source, f"expected a JSON object of signals, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SIGNAL_NAMES))
    if unknown:
        raise SignalError(source, f"unknown signal {unknown[0]!r}; expected some of: {', '.join(SIGNAL_NAMES)}")
    values: dict[str, Any] = {}
    for f in fields(Signals):
        value = data.get(f.name)
        if value is None:
            continue
        if f.name in TEXT_CHOICES:
            if value not in TEXT_CHOICES[f.name]:
                raise SignalError(source, f"{f.name}: expected one of {', '.join(TEXT_CHOICES[f.name])} or null, "
                                          f"got {value!r}")
        elif f.name == "interface":
            if not isinstance(value, str) or not value:
                raise SignalError(source, f"interface: expected an interface name, got {value!r}")
        else:
            value = _number(f.name, value, source)
        values[f.name] = value
    return Signals(**values)


def _number(name: str, value: Any, source: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise SignalError(source, f"{name}: expected a finite number >= 0 or null, got {value!r}")
    low, high = RANGES.get(name, (0.0, math.inf))
    if not low <= value <= high:
        raise SignalError(source, f"{name}: expected a number from {low:g} to {high:g}, got {value!r}")
    return float(value)


class FileSignals:
    """Reads a signals file, and reads it again only when it has changed (checked at every read)."""

    name = "signals file"
    refresh_s = 0.0  # one stat() per read: cheap enough to check between training steps

    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = f"signals file {path}"
        self._stamp: tuple[int, int, int] | None = None
        self._signals = Signals()

    def read(self) -> Signals:
        try:
            st = self.path.stat()
        except OSError as exc:
            raise SignalError(self.path, f"cannot read the signals file: {exc.strerror}") from None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text())
            except (OSError, UnicodeDecodeError) as exc:
                raise SignalError(self.path, f"cannot read the signals file: {exc}") from None
            except json.JSONDecodeError as exc:
                raise SignalError(self.path, f"not JSON ({exc.msg} at line {exc.lineno})") from None
            self._signals, self._stamp = parse_signals(data, self.path), stamp
        return self._signals
