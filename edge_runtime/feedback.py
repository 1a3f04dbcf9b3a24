"""Error feedback: what a biased codec dropped from one update is added to the device's next one.

With a biased codec (``Codec.feedback``: sign, rotated-sign, topk) a device
keeps a residual ``r`` per artifact, in float64, and for each update ``x``
(clipped, after the injected stages) sends ``encode(clip(x + r))`` and keeps
``r' = (x + r) - decoded``. So what was sent plus the residual always equals
the sum of the updates (Karimireddy et al. 2019; Lin et al. 2018 for top-k).
The re-clip keeps what travels within the task's bound, so the coordinator's
norm check is unchanged; what it cuts off stays in the residual.

Feedback runs after the stages, not before: local noise a stage adds is then
inside what the residual carries forward (post-processing of what was
released), never subtracted from a later update. Unbiased codecs (float32,
float16, int8, int4) leave the residual alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from edge_runtime.codecs import Codec, Encoded
from edge_runtime.manifest import WeightSpec
from edge_runtime.updates import clip
from edge_runtime.weights import Weights


@dataclass(frozen=True)
class FedBack:
    """The encoding of one update and the residual to keep after it is sent (None: the codec is unbiased and the
    previous residual, if any, stays as it was)."""

    encoded: Encoded
    residual: Weights | None


def zeros(specs: tuple[WeightSpec, ...]) -> Weights:
    return {spec.name: np.zeros(spec.shape, np.float64) for spec in specs}


def encode_with_feedback(codec: Codec, update: Mapping[str, np.ndarray], residual: Mapping[str, np.ndarray] | None,
                         specs: tuple[WeightSpec, ...], seed: int, bound: float) -> FedBack:
    """Encode ``update`` (already within ``bound``) with ``codec``, folding in and renewing ``residual`` if the codec
    is biased; a missing residual is zero."""
    if not codec.feedback:
        return FedBack(codec.encode(update, specs, seed, bound), None)
    previous = residual if residual is not None else zeros(specs)
    corrected = {name: np.asarray(value, np.float64) + previous[name] for name, value in update.items()}
    sent, _ = clip({name: value.astype(np.float32) for name, value in corrected.items()}, bound)
    encoded = codec.encode(sent, specs, seed, bound)
    kept = {name: value - encoded.decoded[name].astype(np.float64) for name, value in corrected.items()}
    return FedBack(encoded, kept)
