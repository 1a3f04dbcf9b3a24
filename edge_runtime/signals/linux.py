"""Signals of a Linux machine (a Raspberry Pi, a gateway, a laptop), read through psutil, /proc and /sys.

Parsing is kept apart from reading, so the formats of /proc/net/route, nmcli
and loginctl are tested on recorded outputs.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import psutil

from edge_runtime.signals.base import Network, Power, Signals
from edge_runtime.signals.command import run_command

MB = 1024 * 1024
# Power and the route are re-read at the check after every training step, but no more often than this:
# reading them costs little, yet the system calls between steps slowed a small CNN's steps by about a
# fifth (bench/bench_policy.py). A step longer than this still sees a change at the very next check.
FAST_REFRESH_S = 0.05


# -- power ----------------------------------------------------------------------------------------

class PowerProvider:
    """Battery level and charging from psutil; a machine without a battery is on mains power."""

    name = "psutil battery"
    refresh_s = FAST_REFRESH_S

    def read(self) -> Signals:
        battery = psutil.sensors_battery()
        if battery is None:
            return Signals(power="mains")
        plugged = battery.power_plugged
        power: Power | None = None if plugged is None else ("charging" if plugged else "battery")
        return Signals(power=power, battery_percent=float(battery.percent))


# -- CPU and load -----------------------------------------------------------------------------------

class CpuProvider:
    """Other processes' CPU use over the time since the last read, and the 1-minute load average."""

    name = "psutil cpu"
    refresh_s = 1.0  # a CPU share over less than a second is noise
    first_window_s = 0.5

    def __init__(self) -> None:
        self._self = psutil.Process()
        self._cores = psutil.cpu_count() or 1
        self._primed_at = time.monotonic()
        psutil.cpu_percent(None)
        self._self.cpu_percent(None)

    def read(self) -> Signals:
        wait = self.first_window_s - (time.monotonic() - self._primed_at)
        if wait > 0:
            time.sleep(wait)  # only the first read after start-up: the first share needs a window
        total = psutil.cpu_percent(None)
        own = self._self.cpu_percent(None) / self._cores
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        return Signals(cpu_percent=max(0.0, total - own), load_1m=load)


# -- temperature ------------------------------------------------------------------------------------

def thermal_zone_celsius(root: Path = Path("/sys/class/thermal")) -> float | None:
    """The hottest ``thermal_zone*/temp`` (millidegrees), as a Raspberry Pi exposes its SoC temperature."""
    values = []
    for zone in sorted(root.glob("thermal_zone*/temp")):
        try:
            values.append(int(zone.read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            continue
    return max(values) if values else None


class TemperatureProvider:
    name = "psutil sensors / thermal zones"
    refresh_s = 5.0

    def read(self) -> Signals:
        readings: dict[str, list[Any]] = getattr(psutil, "sensors_temperatures", dict)()
        values = [t.current for entries in readings.values() for t in entries if t.current is not None]
        return Signals(temperature_c=max(values) if values else thermal_zone_celsius())


# -- memory and disk --------------------------------------------------------------------------------

class ResourcesProvider:
    """Available memory and free disk space where the device keeps its artifacts."""

    name = "psutil memory / disk"
    refresh_s = 5.0

    def __init__(self, disk_path: Path) -> None:
        self.disk_path = disk_path

    def read(self) -> Signals:
        path = self.disk_path
        while not path.exists() and path != path.parent:
            path = path.parent  # the cache folder may not exist yet: measure the disk it will be on
        return Signals(free_memory_mb=psutil.virtual_memory().available / MB,
                       free_disk_mb=shutil.disk_usage(path).free / MB)


# -- user activity (logind) -------------------------------------------------------------------------

def parse_loginctl_sessions(text: str) -> list[str]:
    """Session ids from ``loginctl list-sessions --no-legend`` (first column)."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def parse_loginctl_session(text: str) -> dict[str, str]:
    """``key=value`` lines of ``loginctl show-session ID -p ...``."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def user_idle_seconds(sessions: Iterable[dict[str, str]], now: float, booted_at: float) -> float:
    """How long every user session has been idle; since boot when nobody is logged in.

    A session with ``IdleHint=no`` is active (0 s). Otherwise its idle time
    starts at ``IdleSinceHint`` (microseconds since the epoch).
    """
    idle = now - booted_at
    for props in sessions:
        if props.get("Class", "user") != "user":
            continue
        if props.get("IdleHint") != "yes":
            return 0.0
        since = int(props.get("IdleSinceHint", "0") or 0) / 1e6
        idle = min(idle, max(0.0, now - since)) if since > 0 else idle
    return idle


class LogindProvider:
    """User idle time from systemd-logind's IdleHint; unknown where logind is not running."""

    name = "logind IdleHint"
    refresh_s = 5.0

    def __init__(self, command: Callable[[Sequence[str]], str | None] = run_command) -> None:
        self._command = command

    def read(self) -> Signals:
        listing = self._command(["loginctl", "list-sessions", "--no-legend"])
        if listing is None:
            return Signals()
        sessions = []
        for session in parse_loginctl_sessions(listing):
            shown = self._command(["loginctl", "show-session", session, "-p", "IdleHint", "-p", "IdleSinceHint",
                                   "-p", "Class"])
            if shown is not None:
                sessions.append(parse_loginctl_session(shown))
        return Signals(user_idle_s=user_idle_seconds(sessions, time.time(), psutil.boot_time()))


# -- network ----------------------------------------------------------------------------------------

# Name prefixes of interfaces (classic and systemd "predictable" names).
METERED_NAMES = ("wwan", "ww", "ppp", "rmnet", "ccmni", "usb", "rndis", "bnep")
UNMETERED_NAMES = ("wlan", "wl", "eth", "en", "br")
# Drivers of USB links to a phone or a cellular modem (tethering shows up as enx... or usb0).
METERED_DRIVERS = frozenset({"rndis_host", "cdc_ether", "cdc_ncm", "cdc_mbim", "ipheth", "qmi_wwan",
                             "huawei_cdc_ncm", "option"})


def parse_default_route(route_v4: str, route_v6: str = "") -> str | None:
    """The interface of the default route with the lowest metric, from /proc/net/route and ipv6_route."""
    best: tuple[int, str] | None = None
    for line in route_v4.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[1] == "00000000" and cols[7] == "00000000" and int(cols[3], 16) & 1:
            candidate = (int(cols[6]), cols[0])
            best = candidate if best is None or candidate < best else best
    for line in route_v6.splitlines():
        cols = line.split()
        if len(cols) >= 10 and set(cols[0]) == {"0"} and cols[1] == "00" and cols[9] != "lo" \
                and int(cols[8], 16) & 1:
            candidate = (int(cols[5], 16), cols[9])
            best = candidate if best is None or candidate < best else best
    return best[1] if best else None


def parse_nmcli_device(text: str) -> tuple[str | None, Network | None]:
    """``(type, metered)`` from ``nmcli -t -f GENERAL.TYPE,GENERAL.METERED device show IFACE``.

    NetworkManager's metered value is ``yes``, ``no``, either with
    ``(guessed)``, or ``unknown``.
    """
    props = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    kind = props.get("GENERAL.TYPE") or None
    metered = props.get("GENERAL.METERED", "unknown").split(" ")[0]
    network: Network | None = "metered" if metered == "yes" else "unmetered" if metered == "no" else None
    return kind, network


def classify_interface(name: str, driver: str | None) -> Network | None:
    if driver in METERED_DRIVERS:
        return "metered"
    if name.startswith(METERED_NAMES):
        return "metered"
    if name.startswith(UNMETERED_NAMES):
        return "unmetered"
    return None


class NetworkProvider:
    """Metered or unmetered, for the interface that carries the default route.

    In order: NetworkManager's metered property (nmcli), the USB driver of a
    tethered phone or modem, then the interface's name. The policy's interface
    overrides are applied on top by the ``SignalReader``.
    """

    name = "default route"
    refresh_s = FAST_REFRESH_S  # nmcli answers are cached per interface, longer

    def __init__(self, command: Callable[[Sequence[str]], str | None] = run_command, proc: Path = Path("/proc/net"),
                 sys_net: Path = Path("/sys/class/net"), nmcli_cache_s: float = 30.0) -> None:
        self._command, self._proc, self._sys = command, proc, sys_net
        self._cache_s = nmcli_cache_s
        self._classified: dict[str, tuple[float, Network | None]] = {}

    def read(self) -> Signals:
        interface = parse_default_route(_read(self._proc / "route"))
        if interface is None:  # IPv6-only, or offline
            interface = parse_default_route("", _read(self._proc / "ipv6_route"))
        if interface is None:
            return Signals(network="offline")
        return Signals(network=self.classify(interface), interface=interface)

    def classify(self, interface: str) -> Network | None:
        """Cached per interface for ``nmcli_cache_s``: a new default route is classified at once."""
        now = time.monotonic()
        cached = self._classified.get(interface)
        if cached is None or now - cached[0] > self._cache_s:
            cached = (now, self._network_manager(interface) or classify_interface(interface, self._driver(interface)))
            self._classified[interface] = cached
        return cached[1]

    def _network_manager(self, interface: str) -> Network | None:
        text = self._command(["nmcli", "-t", "-f", "GENERAL.TYPE,GENERAL.METERED", "device", "show", interface])
        return parse_nmcli_device(text)[1] if text else None

    def _driver(self, interface: str) -> str | None:
        link = self._sys / interface / "device" / "driver"
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def _read(path: Path) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""
