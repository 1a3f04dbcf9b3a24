"""Update codecs: how a clipped update travels between a device and the coordinator. Part of the wire protocol.

A codec is named in the training task and in the update's header; the device
encodes after clipping (and after error feedback), the coordinator decodes
before any other check. Each codec declares the payload size it can produce
(the coordinator refuses anything larger unread) and the largest L2 norm a
device that clipped to a bound can make it decode to (the coordinator's norm
check allows exactly that). docs/PROTOCOL.md section 5.11 gives each wire format.

Names, as in ``--codec`` and the task's ``codec`` field:

- ``float32``, ``float16``: every tensor whole (``dense``).
- ``int8``, ``int4``: unbiased stochastic rounding, a float32 scale per block
  of 256 values (``quantized``).
- ``sign``: one bit per value and a scale per block of 1024; ``rotated-sign``:
  the same after a seeded randomized Hadamard rotation (``signs``).
- ``topk:FRACTION``: the largest FRACTION of the values by magnitude, as
  indices and float32 values; ``topk:FRACTION+VALUES`` encodes the values with
  one of ``COMPOSABLE`` instead (``topk:0.01+int8``) (``topk``).

Every codec but ``float32``, ``float16``, ``int8``, ``int4`` and ``rotated-sign`` is biased; the
device keeps what such a codec dropped and adds it to its next update
(``Codec.feedback``, ``edge_runtime.feedback``).
"""

from __future__ import annotations

import functools
import re

from edge_runtime.codecs.base import HEADER_BYTES, Codec, Encoded, VectorCodec
from edge_runtime.codecs.dense import FLOAT16, FLOAT32, DenseCodec, DenseValues
from edge_runtime.codecs.flat import FlatCodec
from edge_runtime.codecs.quantized import Quantized
from edge_runtime.codecs.signs import RotatedSigns, Signs
from edge_runtime.codecs.topk import TopK
from edge_runtime.errors import ProtocolError

UNKNOWN_CODEC = "unknown_codec"
DEFAULT_CODEC = FLOAT32.name
INT8, INT4 = Quantized(8), Quantized(4)
# The whole-update codecs, by name; topk:FRACTION[+VALUES] is parsed.
VECTORS: dict[str, VectorCodec] = {"int8": INT8, "int4": INT4, "sign": Signs(), "rotated-sign": RotatedSigns()}
# What topk may encode its kept values with (a rotation would mix the kept values with each other: allowed but
# pointless, so not offered).
COMPOSABLE: dict[str, VectorCodec] = {"float32": DenseValues("float32"), "float16": DenseValues("float16"),
                                      "int8": INT8, "int4": INT4, "sign": Signs()}
CODEC_NAMES = ("float32", "float16", *VECTORS, "topk:FRACTION", "topk:FRACTION+VALUES")
_TOPK = re.compile(r"topk:([0-9.eE+-]+?)(?:\+([a-z0-9-]+))?")


@functools.lru_cache(maxsize=64)
def get_codec(name: str) -> Codec:
    """The codec called ``name``; an unknown or malformed name is a ``ProtocolError`` saying what is expected."""
    if name in (FLOAT32.name, FLOAT16.name):
        return FLOAT32 if name == FLOAT32.name else FLOAT16
    if name in VECTORS:
        vector = VECTORS[name]
        return FlatCodec(name, vector)
    match = _TOPK.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise ProtocolError(UNKNOWN_CODEC, f"codec {name!r} is not known; expected one of {', '.join(CODEC_NAMES)}")
    fraction = _fraction(match.group(1), name)
    values = match.group(2) or "float32"
    if values not in COMPOSABLE:
        raise ProtocolError(UNKNOWN_CODEC, f"codec {name!r}: topk cannot encode its values with {values!r}; "
                                           f"expected one of {', '.join(COMPOSABLE)}")
    canonical = f"topk:{fraction:g}" + (f"+{values}" if match.group(2) else "")
    if canonical != name:
        raise ProtocolError(UNKNOWN_CODEC, f"codec {name!r} is not in canonical form; write {canonical!r}")
    return FlatCodec(canonical, TopK(fraction, COMPOSABLE[values]))


def _fraction(text: str, name: str) -> float:
    try:
        fraction = float(text)
    except ValueError:
        fraction = float("nan")
    if not 0.0 < fraction < 1.0:
        raise ProtocolError(UNKNOWN_CODEC, f"codec {name!r}: the kept fraction {text!r} must be a number in (0, 1), "
                                           "e.g. topk:0.01")
    return fraction


def codec_problem(name: str) -> str | None:
    """Why ``name`` is not a codec name (None if it is one): for configuration checks."""
    try:
        get_codec(name)
    except ProtocolError as exc:
        return exc.problem
    return None


def codec_name(text: str) -> str:
    """``text`` if it names a codec (for argparse and configuration checks); else ``ValueError`` saying why."""
    try:
        return get_codec(text).name
    except ProtocolError as exc:
        raise ValueError(exc.problem) from exc


__all__ = ["CODEC_NAMES", "COMPOSABLE", "DEFAULT_CODEC", "FLOAT16", "FLOAT32", "HEADER_BYTES", "INT4", "INT8",
           "UNKNOWN_CODEC", "Codec", "DenseCodec", "Encoded", "FlatCodec", "VectorCodec", "codec_name", "codec_problem",
           "get_codec"]
