"""Signals of an Android device through Termux:API (the Termux:API app and the ``termux-api`` package).

``termux-battery-status`` and ``termux-wifi-connectioninfo`` print JSON; the
parsers below turn it into signals and refuse output that is not the
documented shape. Each command goes through Android's activity manager and
takes a noticeable fraction of a second, so the provider re-reads every few
seconds rather than between training steps.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from edge_runtime.errors import SignalError
from edge_runtime.signals.base import Power, Signals
from edge_runtime.signals.command import run_command

CHARGING_STATUSES = frozenset({"CHARGING", "FULL"})


def on_termux() -> bool:
    """Whether this process runs inside Termux with the Termux:API commands installed."""
    return "com.termux" in os.environ.get("PREFIX", "") and shutil.which("termux-battery-status") is not None


def _object(text: str, command: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SignalError(command, f"output is not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(value, dict):
        raise SignalError(command, f"expected a JSON object, got {type(value).__name__}")
    return value


def parse_battery_status(text: str) -> Signals:
    """Power, battery level and battery temperature from ``termux-battery-status``.

    The phone is charging when ``plugged`` names a charger (``PLUGGED_AC``,
    ``PLUGGED_USB``, ``PLUGGED_WIRELESS``) and ``status`` is ``CHARGING`` or
    ``FULL``; plugged into a charger that does not charge (``NOT_CHARGING``)
    still drains the battery, so it counts as on battery.
    """
    data = _object(text, "termux-battery-status")
    plugged, status = data.get("plugged"), data.get("status")
    if not isinstance(plugged, str) or not isinstance(status, str):
        raise SignalError("termux-battery-status", f"expected string fields plugged and status, got {plugged!r} "
                                                   f"and {status!r}")
    power: Power = "charging" if plugged != "UNPLUGGED" and status in CHARGING_STATUSES else "battery"
    percent = data.get("percentage")
    temperature = data.get("temperature")  # a number, or a string in some versions ("22.3")
    return Signals(power=power,
                   battery_percent=float(percent) if isinstance(percent, (int, float)) else None,
                   temperature_c=_number(temperature))


def parse_wifi_connectioninfo(text: str) -> Signals:
    """Unmetered while associated with a Wi-Fi network, otherwise metered (mobile data) or offline.

    Termux:API cannot see whether Android itself marks the Wi-Fi network as
    metered (a phone hotspot); the policy's ``metered-interfaces = ["wlan0"]``
    covers that.
    """
    data = _object(text, "termux-wifi-connectioninfo")
    state = data.get("supplicant_state")
    if not isinstance(state, str):
        raise SignalError("termux-wifi-connectioninfo", f"expected a string supplicant_state, got {state!r}")
    connected = state == "COMPLETED" and data.get("ip") not in (None, "", "0.0.0.0")
    return Signals(network="unmetered", interface="wlan0") if connected else Signals(network="metered")


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


class TermuxProvider:
    """Battery, charging, battery temperature and Wi-Fi state of an Android phone through Termux:API."""

    name = "termux-api"
    refresh_s = 10.0

    def __init__(self, command: Callable[[Sequence[str]], str | None] = run_command) -> None:
        self._command = command

    def read(self) -> Signals:
        result = Signals()
        battery = self._command(["termux-battery-status"])
        if battery is not None:
            result = result.merged(parse_battery_status(battery))
        wifi = self._command(["termux-wifi-connectioninfo"])
        if wifi is not None:
            result = result.merged(parse_wifi_connectioninfo(wifi))
        return result
