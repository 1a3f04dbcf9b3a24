"""The class of a device's link, from its signals: what its status advertises as ``link``.

A provider that knows the class says so in ``Signals.link`` (a signals file,
an emulated device's profile; only such a provider can say ``constrained``,
which no operating system reports). Otherwise the class follows the network
the policy already reads: a metered network is ``cellular`` (mobile data, a
phone's hotspot, a USB-tethered phone), else the default route's interface
name says ``wifi`` (wl...), ``wired`` (eth..., en..., br...) or ``cellular``
(wwan..., ppp..., rmnet..., ccmni...); anything else is unknown (``""``).
"""

from __future__ import annotations

from edge_runtime.signals.base import Signals

WIFI_NAMES = ("wl",)
WIRED_NAMES = ("eth", "en", "br")
CELLULAR_NAMES = ("ww", "ppp", "rmnet", "ccmni", "usb", "rndis", "bnep")


def link_class(signals: Signals) -> str:
    """``wired``, ``wifi``, ``cellular``, ``constrained``, or ``""`` when the signals do not tell."""
    if signals.link is not None:
        return signals.link
    if signals.network == "offline" or (signals.network is None and signals.interface is None):
        return ""
    if signals.network == "metered":
        return "cellular"
    name = signals.interface or ""
    for prefixes, link in ((WIFI_NAMES, "wifi"), (CELLULAR_NAMES, "cellular"), (WIRED_NAMES, "wired")):
        if name.startswith(prefixes):
            return link
    return ""
