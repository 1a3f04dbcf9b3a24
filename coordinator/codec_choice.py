"""Which codec a selected device's task names: one for every device (``--codec NAME``), or one by the device's link
(``--codec auto``), from a table the configuration may override (``[codec-table]``; docs/COMPRESSION.md).

Pure: a device's status in, its codec out, or why it cannot take part (it does not encode the codec it would
need). Such a device is left out of selection; the waiting reason counts it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

from coordinator.options import want
from edge_runtime.codecs import DEFAULT_CODEC, codec_problem
from edge_runtime.protocol import LINK_CLASSES, DeviceStatus, encodes

AUTO = "auto"
UNKNOWN_LINK = "unknown"  # the table's entry for a device that names no link class, or one this release lacks


@dataclass(frozen=True)
class CodecTable:
    """Link class -> codec, for ``--codec auto``. The defaults, from the fastest link to the slowest:"""

    wired: str = "float16"  # bytes are cheap: half of float32's, at a rounding error (2^-11) far below SGD's noise
    wifi: str = "float16"  # tens of Mbit/s and unmetered: the same trade as wired
    cellular: str = "int8"  # metered: a quarter of float32's bytes, unbiased, no residual kept on the device
    constrained: str = "rotated-sign"  # under 1 Mbit/s up: ~1 bit a value, unbiased, no residual on the device
    unknown: str = "int8"  # a link the device does not name: as if metered

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            problem = codec_problem(value)
            want(problem is None, f"codec-table.{f.name}", f"a codec name ({problem}; docs/COMPRESSION.md)", value)

    @classmethod
    def with_overrides(cls, pairs: Iterable[tuple[str, str]]) -> CodecTable:
        """The default table with ``pairs`` (link class, codec name) replacing its entries; an unknown link class or
        codec name is refused naming its key (``codec-table.satellite``)."""
        keys = (*LINK_CLASSES, UNKNOWN_LINK)
        overrides = dict(pairs)
        for link in overrides:
            want(link in keys, f"codec-table.{link}", f"a link class: one of {', '.join(keys)}", "an unknown key")
        return cls(**overrides)

    def for_link(self, link: str) -> str:
        """The codec for a device whose status names ``link`` (``""`` or a class not in the table: ``unknown``)."""
        return str(getattr(self, link)) if link in LINK_CLASSES else self.unknown

    def codecs(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(getattr(self, f.name) for f in fields(self)))


@dataclass(frozen=True)
class Choice:
    """A device's codec for a round, or None and why it cannot take part (``cannot encode int8``)."""

    codec: str | None
    reason: str = ""


def choose_codec(configured: str, table: CodecTable, status: DeviceStatus) -> Choice:
    """``configured``: ``auto`` or a codec name. With ``auto``, the table's codec for the device's link, or float32
    when the device does not encode that one."""
    if configured != AUTO:
        return Choice(configured) if encodes(configured, status.codecs) else Choice(None, f"cannot encode {configured}")
    wanted = table.for_link(status.link)
    for codec in (wanted, DEFAULT_CODEC):
        if encodes(codec, status.codecs):
            return Choice(codec)
    return Choice(None, f"cannot encode {wanted} or {DEFAULT_CODEC}")


def round_codecs(configured: str, table: CodecTable) -> tuple[str, ...]:
    """Every codec a round's tasks may name: what the coordinator's payload limit must allow for."""
    return tuple(dict.fromkeys((*table.codecs(), DEFAULT_CODEC))) if configured == AUTO else (configured,)

