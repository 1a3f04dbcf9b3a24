"""Signal providers: recorded platform outputs parse to the right signals; the file provider re-reads on change."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge_runtime.errors import SignalError
from edge_runtime.signals import FileSignals, SignalReader, Signals, system_reader
from edge_runtime.signals.linux import (
    LogindProvider,
    NetworkProvider,
    classify_interface,
    parse_default_route,
    parse_nmcli_device,
    thermal_zone_celsius,
    user_idle_seconds,
)
from edge_runtime.signals.termux import TermuxProvider, parse_battery_status, parse_wifi_connectioninfo
from tests.conftest import write_signals

RECORDED = Path(__file__).parent / "data" / "signals"


def recorded(name: str) -> str:
    return (RECORDED / name).read_text()


# -- Termux:API --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "power", "percent", "temperature"), [
    ("termux-battery-charging.json", "charging", 76.0, 31.5),
    ("termux-battery-unplugged.json", "battery", 85.0, 22.3),  # temperature as a string in older versions
    ("termux-battery-not-charging.json", "battery", 64.0, 47.9),  # plugged in but not charging: drains
])
def test_termux_battery_status(name: str, power: str, percent: float, temperature: float) -> None:
    signals = parse_battery_status(recorded(name))
    assert (signals.power, signals.battery_percent, signals.temperature_c) == (power, percent, temperature)


@pytest.mark.parametrize(("name", "network", "interface"), [
    ("termux-wifi-connected.json", "unmetered", "wlan0"),
    ("termux-wifi-disconnected.json", "metered", None),
])
def test_termux_wifi_connectioninfo(name: str, network: str, interface: str | None) -> None:
    signals = parse_wifi_connectioninfo(recorded(name))
    assert (signals.network, signals.interface) == (network, interface)


@pytest.mark.parametrize(("text", "match"), [
    ("not json", "not JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"plugged": 1, "status": "CHARGING"}', "plugged and status"),
])
def test_termux_battery_refuses_other_output(text: str, match: str) -> None:
    with pytest.raises(SignalError, match=match):
        parse_battery_status(text)


def test_termux_wifi_refuses_output_without_state() -> None:
    with pytest.raises(SignalError, match="supplicant_state"):
        parse_wifi_connectioninfo('{"ip": "10.0.0.2"}')


def test_termux_provider_runs_both_commands() -> None:
    outputs = {"termux-battery-status": recorded("termux-battery-unplugged.json"),
               "termux-wifi-connectioninfo": recorded("termux-wifi-disconnected.json")}
    signals = TermuxProvider(command=lambda argv: outputs[argv[0]]).read()
    assert (signals.power, signals.battery_percent, signals.network) == ("battery", 85.0, "metered")


def test_termux_provider_without_the_app_knows_nothing() -> None:
    assert TermuxProvider(command=lambda argv: None).read() == Signals()


# -- network ------------------------------------------------------------------------------------------

def test_default_route_lowest_metric_wins() -> None:
    assert parse_default_route(recorded("route-wifi-and-lte.txt")) == "wlan0"
    assert parse_default_route(recorded("route-lte-only.txt")) == "wwan0"
    assert parse_default_route(recorded("route-no-default.txt")) is None
    assert parse_default_route(recorded("route-container.txt")) == "eth0"


def test_default_route_from_ipv6_only() -> None:
    assert parse_default_route(recorded("route-no-default.txt"), recorded("ipv6-route-default-usb0.txt")) == "usb0"


@pytest.mark.parametrize(("name", "kind", "network"), [
    ("nmcli-wifi.txt", "wifi", "unmetered"),
    ("nmcli-tethered-phone.txt", "ethernet", "metered"),
    ("nmcli-gsm.txt", "gsm", "metered"),
    ("nmcli-unknown.txt", "ethernet", None),
])
def test_nmcli_metered_property(name: str, kind: str, network: str | None) -> None:
    assert parse_nmcli_device(recorded(name)) == (kind, network)


@pytest.mark.parametrize(("interface", "driver", "network"), [
    ("wlan0", None, "unmetered"), ("wlp3s0", None, "unmetered"), ("eth0", None, "unmetered"),
    ("enp0s31f6", None, "unmetered"), ("wwan0", None, "metered"), ("wwp0s20f0u6", None, "metered"),
    ("ppp0", None, "metered"), ("rmnet_data0", None, "metered"), ("usb0", None, "metered"),
    ("enx0a1b2c3d4e5f", "rndis_host", "metered"),  # an Android phone's USB tethering
    ("enx0a1b2c3d4e5f", "ipheth", "metered"),  # an iPhone's
    ("enx0a1b2c3d4e5f", "r8152", "unmetered"),  # a USB Ethernet adapter
    ("tun0", None, None),
])
def test_interface_classification(interface: str, driver: str | None, network: str | None) -> None:
    assert classify_interface(interface, driver) == network


def _fake_proc(tmp_path: Path, route: str) -> Path:
    (tmp_path / "route").write_text(recorded(route))
    return tmp_path


def test_network_provider_prefers_network_manager(tmp_path: Path) -> None:
    calls: list[Sequence[str]] = []

    def nmcli(argv: Sequence[str]) -> str:
        calls.append(argv)
        return recorded("nmcli-tethered-phone.txt")

    provider = NetworkProvider(command=nmcli, proc=_fake_proc(tmp_path, "route-wifi-and-lte.txt"), sys_net=tmp_path)
    assert provider.read() == Signals(network="metered", interface="wlan0")  # NetworkManager says metered
    provider.read()
    assert len(calls) == 1, "nmcli's answer is cached per interface"
    assert calls[0][-1] == "wlan0"


def test_network_provider_without_network_manager(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, "route-lte-only.txt")
    assert NetworkProvider(command=lambda argv: None, proc=proc, sys_net=tmp_path).read() == \
        Signals(network="metered", interface="wwan0")
    (tmp_path / "route").write_text(recorded("route-no-default.txt"))
    assert NetworkProvider(command=lambda argv: None, proc=proc, sys_net=tmp_path).read().network == "offline"


def test_network_provider_reads_the_usb_driver(tmp_path: Path) -> None:
    (tmp_path / "route").write_text(recorded("route-no-default.txt"))
    (tmp_path / "ipv6_route").write_text(recorded("ipv6-route-default-usb0.txt").replace("usb0", "enx02ab"))
    driver = tmp_path / "drivers" / "rndis_host"
    driver.mkdir(parents=True)
    (tmp_path / "enx02ab" / "device").mkdir(parents=True)
    os.symlink(driver, tmp_path / "enx02ab" / "device" / "driver")
    provider = NetworkProvider(command=lambda argv: None, proc=tmp_path, sys_net=tmp_path)
    assert provider.read() == Signals(network="metered", interface="enx02ab")


def test_reader_applies_interface_overrides() -> None:
    class Wifi:
        name, refresh_s = "wifi", 0.0

        def read(self) -> Signals:
            return Signals(network="unmetered", interface="wlan0")

    assert SignalReader([Wifi()], metered=["wlan"]).read().network == "metered"
    assert SignalReader([Wifi()], unmetered=["wwan"]).read().network == "unmetered"


# -- user activity and temperature ----------------------------------------------------------------------

def test_logind_user_idle() -> None:
    outputs = {"list-sessions": recorded("loginctl-sessions.txt")}
    shown = iter([recorded("loginctl-session-idle.txt"), recorded("loginctl-session-greeter.txt")])

    def loginctl(argv: Sequence[str]) -> str:
        return outputs.get(argv[1]) or next(shown)

    signals = LogindProvider(command=loginctl).read()
    assert signals.user_idle_s is not None and signals.user_idle_s > 0


def test_user_idle_arithmetic() -> None:
    idle = {"IdleHint": "yes", "IdleSinceHint": "1000000000", "Class": "user"}  # idle since t = 1000 s
    active = {"IdleHint": "no", "Class": "user"}
    assert user_idle_seconds([idle], now=1600.0, booted_at=0.0) == 600.0
    assert user_idle_seconds([idle, active], now=1600.0, booted_at=0.0) == 0.0
    assert user_idle_seconds([], now=1600.0, booted_at=100.0) == 1500.0  # nobody logged in: idle since boot
    assert user_idle_seconds([{"IdleHint": "no", "Class": "greeter"}], now=1600.0, booted_at=100.0) == 1500.0


def test_logind_missing_means_unknown() -> None:
    assert LogindProvider(command=lambda argv: None).read().user_idle_s is None


def test_thermal_zones(tmp_path: Path) -> None:
    for zone, millidegrees in (("thermal_zone0", "48312"), ("thermal_zone1", "51200\n")):
        (tmp_path / zone).mkdir()
        (tmp_path / zone / "temp").write_text(millidegrees)
    assert thermal_zone_celsius(tmp_path) == 51.2
    assert thermal_zone_celsius(tmp_path / "none") is None


# -- the signals file -------------------------------------------------------------------------------

def test_signals_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "signals.json"
    write_signals(path, power="charging", battery_percent=80, network="unmetered")
    provider = FileSignals(path)
    assert provider.read() == Signals(power="charging", battery_percent=80.0, network="unmetered")
    write_signals(path, power="battery", battery_percent=79.5)
    assert provider.read() == Signals(power="battery", battery_percent=79.5)


@pytest.mark.parametrize(("content", "match"), [
    ('{"charging": true}', "unknown signal 'charging'"),
    ('{"power": "solar"}', "power: expected one of mains, charging, battery"),
    ('{"battery_percent": 140}', "battery_percent: expected a number from 0 to 100"),
    ('{"temperature_c": "hot"}', "temperature_c: expected a finite number"),
    ('{"network": "wifi"}', "network: expected one of unmetered, metered, offline"),
    ('["power"]', "expected a JSON object"),
    ('{"power": ', "not JSON"),
])
def test_bad_signals_file(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "signals.json"
    path.write_text(content)
    with pytest.raises(SignalError, match=match):
        FileSignals(path).read()


def test_missing_signals_file(tmp_path: Path) -> None:
    with pytest.raises(SignalError, match="cannot read the signals file"):
        FileSignals(tmp_path / "absent.json").read()


def test_reader_caches_slow_providers() -> None:
    now = [0.0]

    class Counting:
        name, refresh_s = "slow", 5.0
        reads = 0

        def read(self) -> Signals:
            Counting.reads += 1
            return Signals(temperature_c=40.0 + Counting.reads)

    reader = SignalReader([Counting()], clock=lambda: now[0])
    assert reader.read().temperature_c == 41.0
    now[0] = 4.9
    assert reader.read().temperature_c == 41.0
    now[0] = 5.0
    assert reader.read().temperature_c == 42.0
    assert reader.sources() == {"temperature_c": "slow"}


def test_this_machine() -> None:
    """The real providers run here: power and memory are known on any Linux machine."""
    signals = system_reader(Path.home()).read()
    assert signals.power in ("mains", "charging", "battery")
    assert signals.free_memory_mb is not None and signals.free_memory_mb > 0
    assert signals.free_disk_mb is not None and signals.cpu_percent is not None
