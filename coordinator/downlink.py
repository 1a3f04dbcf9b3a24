"""The delta downlink's arithmetic on the coordinator: no I/O.

With a downlink codec, a committed round does not publish the strategy's
weights as they are: the new global model is the previous one plus the
*decoded* delta, ``add_delta(previous, decode(encode(target - previous)))``,
the same float32 additions a device makes. So the full model published next
to the delta is bit for bit what a device that applies the delta holds, and
the checkpoint holds exactly that model too.

The codec's rounding of the delta therefore enters the global model (unbiased
for int8 and int4, which round stochastically; to nearest for float16). The
strategy's own state (server optimizer moments, momentum) is left as the
strategy computed it. Biased codecs are not allowed here: without error
feedback on the coordinator their error would accumulate round after round.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from coordinator.selection import derived_seed
from edge_runtime.codecs import FLOAT32, Codec, get_codec
from edge_runtime.errors import ProtocolError, WeightsError
from edge_runtime.manifest import WeightSpec
from edge_runtime.protocol import DOWNLINK_CODECS, NO_DELTAS, add_delta, weights_sha256
from edge_runtime.weights import Weights

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Downlink:
    """A committed version as it travels: ``weights`` (what the full model and the checkpoint hold), their
    ``sha256``, and the delta from the previous version: its wire ``tensors``, ``codec`` and ``seed``."""

    weights: Weights
    sha256: str
    tensors: Weights
    codec: str
    seed: int


def downlink_codec(name: str) -> Codec | None:
    """The codec named by the ``downlink-codec`` option (None for ``none``); ``ValueError`` saying why for any
    name but ``none`` and ``DOWNLINK_CODECS``."""
    if name == NO_DELTAS:
        return None
    allowed = f"the downlink takes {NO_DELTAS}, {', '.join(DOWNLINK_CODECS)}"
    try:
        codec = get_codec(name)
    except ProtocolError:
        raise ValueError(f"codec {name!r} is not known; {allowed}") from None
    if codec.feedback or codec.name not in DOWNLINK_CODECS:
        raise ValueError(f"codec {name!r} is biased, and without error feedback on the coordinator the global model "
                         f"would drift; {allowed}")
    return codec


def downlink_seed(seed: int, version: int) -> int:
    """The stochastic rounding seed of version ``version``'s delta, reproducible from the configured seed (the
    same after ``--resume``): the first 4 bytes, little-endian, of sha256(``"<seed>/downlink/<version>"``)."""
    return derived_seed(seed, "downlink", version)


def compress(previous: Mapping[str, np.ndarray], target: Mapping[str, np.ndarray], specs: tuple[WeightSpec, ...],
             codec: Codec, seed: int) -> Downlink | None:
    """Version ``previous`` -> ``target`` as a delta in ``codec``, and the weights a device rebuilds from it.

    A difference ``codec`` cannot carry (float16 beyond +-65504) travels in float32 instead. None when not even
    that gives finite weights (the commit then publishes ``target`` in full, without a delta).
    """
    with np.errstate(over="ignore"):  # an overflow is refused below, as weights that are not finite
        difference = {spec.name: (np.asarray(target[spec.name], np.float32)
                                  - np.asarray(previous[spec.name], np.float32)).astype(np.float32) for spec in specs}
    for candidate in (codec, FLOAT32) if codec.name != FLOAT32.name else (codec,):
        try:
            encoded = candidate.encode(difference, specs, seed, math.inf)
        except WeightsError as exc:
            log.warning("the global model's delta cannot travel in %s: %s", candidate.name, exc)
            continue
        weights = add_delta(previous, encoded.decoded, specs)
        if all(np.all(np.isfinite(value)) for value in weights.values()):
            return Downlink(weights, weights_sha256(weights, specs), dict(encoded.tensors), candidate.name, seed)
    log.warning("the global model's delta does not give finite weights; publishing the model in full only")
    return None
