"""Device signals: power, CPU, user activity, temperature, network, memory and disk.

``system_reader`` picks the providers for the platform this runs on (Linux
through psutil, /proc and /sys; Android through Termux:API); ``FileSignals``
reads them from a JSON file instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edge_runtime.signals.base import SIGNAL_NAMES, SignalProvider, SignalReader, Signals, describe
from edge_runtime.signals.file import FileSignals, parse_signals
from edge_runtime.signals.link import link_class
from edge_runtime.signals.termux import TermuxProvider, on_termux

__all__ = ["SIGNAL_NAMES", "FileSignals", "SignalProvider", "SignalReader", "Signals", "describe", "link_class",
           "parse_signals", "system_reader"]


def system_reader(disk_path: Path, metered: Sequence[str] = (), unmetered: Sequence[str] = (),
                  signals_file: Path | None = None) -> SignalReader:
    """The reader for this machine, or for ``signals_file`` when one is given.

    On Termux, Termux:API supplies power, battery and Wi-Fi (it wins over the
    route table, and replaces psutil's battery, which Android hides from apps).
    """
    if signals_file is not None:
        return SignalReader([FileSignals(signals_file)], metered, unmetered)
    # psutil comes with the device extra; the coordinator imports this package without it.
    from edge_runtime.signals.linux import (
        CpuProvider,
        LogindProvider,
        NetworkProvider,
        PowerProvider,
        ResourcesProvider,
        TemperatureProvider,
    )

    providers: list[SignalProvider] = [CpuProvider(), LogindProvider(), TemperatureProvider(), NetworkProvider(),
                                       ResourcesProvider(disk_path)]
    # Android hides the battery from apps, where psutil would report mains power: never use it there.
    providers.append(TermuxProvider() if on_termux() else PowerProvider())
    return SignalReader(providers, metered, unmetered)
