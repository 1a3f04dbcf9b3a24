"""The device's side of the model downlink, without I/O: what a global model or a delta makes of the model it
holds, and whether it needs the full-model topic.

A device follows the delta topic always and the full-model topic only while it
needs a full model: it holds none (new, or a new artifact), the coordinator
publishes no deltas (``GlobalHeader.delta_codec`` is ``none``), or it fell
behind (a delta it could not use, a task for a version it does not hold).
Once it holds a full model again it leaves the full-model topic, so a device
one version behind downloads only the delta. docs/PROTOCOL.md section 5.12.

Every check of a delta that needs only its header runs before its tensors are
parsed, so a refused delta never allocates anything at the size it claims.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from edge_runtime.codecs import FLOAT32, UNKNOWN_CODEC, get_codec
from edge_runtime.errors import ProtocolError, WeightsError
from edge_runtime.manifest import WeightSpec
from edge_runtime.protocol import (
    BAD_TENSORS,
    DOWNLINK_CODECS,
    MALFORMED,
    NO_DELTAS,
    NON_FINITE,
    DeltaHeader,
    GlobalHeader,
    add_delta,
    check_size,
    decode_header,
    decode_tensors,
    tensor_payload_limit,
    weights_sha256,
)
from edge_runtime.weights import Weights, check_weights, weights_from_bytes

# Why a device does not use a delta, besides edge_runtime.protocol's reasons (malformed, oversized, wrong_protocol,
# bad_tensors, non_finite: the rebuilt weights hold NaN or Inf) and unknown_codec; it logs the reason and takes the
# full model.
NO_BASE = "no_base"  # it holds no model, or not the delta's base version
HASH_MISMATCH = "hash_mismatch"  # the rebuilt weights do not hash to the header's sha256


class GlobalModel(NamedTuple):
    """The global model a device holds: ``deltas``, whether the coordinator publishes the next versions as deltas;
    ``downloaded``, the bytes the message that brought this version had (a delta's when one was applied)."""

    version: int
    weights: Weights
    deltas: bool
    downloaded: int


@dataclass(frozen=True)
class Target:
    """What a model must fit: the loaded artifact's id and travelling weights."""

    artifact_id: str
    specs: tuple[WeightSpec, ...]

    @property
    def parameter_count(self) -> int:
        return sum(spec.size for spec in self.specs)


class DeltaRefused(ProtocolError):
    """A delta the device cannot use; ``version`` is the version it was for (the full model brings it)."""

    def __init__(self, reason: str, problem: str, version: int) -> None:
        super().__init__(reason, problem)
        self.version = version


def wants_full(held: GlobalModel | None, behind: bool) -> bool:
    """Whether the device needs the full-model topic: it holds no model, the coordinator sends no deltas, or it fell
    behind (``behind``) and waits for a full model."""
    return held is None or not held.deltas or behind


def read_global(payload: bytes, target: Target) -> GlobalModel | None:
    """The global model in ``payload``; None if it is another artifact's. Raises ``ProtocolError`` or
    ``WeightsError`` saying what is wrong (a ``sha256`` in the header must match the tensors)."""
    header, tensors = decode_tensors(payload, GlobalHeader, tensor_payload_limit(target.parameter_count))
    if header.artifact_id != target.artifact_id:
        return None
    weights = check_weights(tensors, target.specs)
    if header.sha256 and weights_sha256(weights, target.specs) != header.sha256:
        raise ProtocolError(HASH_MISMATCH, f"global model version {header.version} does not hash to its sha256")
    return GlobalModel(header.version, weights, header.delta_codec != NO_DELTAS, len(payload))


def read_delta(payload: bytes, target: Target, held: GlobalModel | None) -> GlobalModel | None:
    """The model ``held`` plus the delta in ``payload``, checked against the header's hash.

    None when the delta changes nothing here: another artifact's, or a version the device already holds or has
    passed. Raises ``DeltaRefused`` (a ``ProtocolError`` with the reason) when the device cannot use it; everything
    the header decides is checked before the tensors are parsed.
    """
    header = _delta_header(payload, target)
    if header.artifact_id != target.artifact_id or (held is not None and header.version <= held.version):
        return None
    if header.codec not in DOWNLINK_CODECS:
        raise DeltaRefused(UNKNOWN_CODEC, f"codec {header.codec!r} is not a downlink codec "
                                          f"({', '.join(DOWNLINK_CODECS)})", header.version)
    codec = get_codec(header.codec)
    try:
        check_size(payload, codec.payload_limit(target.parameter_count))
    except ProtocolError as exc:
        raise DeltaRefused(exc.reason, f"{exc.problem} (codec {codec.name})", header.version) from None
    if held is None or held.version != header.base_version:
        holding = "no model" if held is None else f"version {held.version}"
        raise DeltaRefused(NO_BASE, f"delta from version {header.base_version} to {header.version}, the device holds "
                                    f"{holding}", header.version)
    weights = _rebuild(payload, header, target, held)
    return GlobalModel(header.version, weights, True, len(payload))


def _delta_header(payload: bytes, target: Target) -> DeltaHeader:
    """The delta's header, refused with its framing reason; the size is first checked against the largest delta
    any downlink codec makes (float32's)."""
    try:
        return decode_header(payload, DeltaHeader, FLOAT32.payload_limit(target.parameter_count))
    except ProtocolError as exc:
        raise DeltaRefused(exc.reason, exc.problem, -1) from None


def _rebuild(payload: bytes, header: DeltaHeader, target: Target, held: GlobalModel) -> Weights:
    """``held`` plus the decoded delta, refused unless every value is finite and the result hashes to ``sha256``."""
    try:
        tensors = weights_from_bytes(payload)
    except WeightsError as exc:
        raise DeltaRefused(MALFORMED, exc.problem, header.version) from None
    try:
        delta = get_codec(header.codec).decode(tensors, target.specs, header.seed)
    except WeightsError as exc:
        raise DeltaRefused(BAD_TENSORS, str(exc), header.version) from None
    weights = add_delta(held.weights, delta, target.specs)
    if not all(np.all(np.isfinite(value)) for value in weights.values()):
        raise DeltaRefused(NON_FINITE, f"version {held.version} plus the delta holds NaN or Inf", header.version)
    if weights_sha256(weights, target.specs) != header.sha256:
        raise DeltaRefused(HASH_MISMATCH, f"version {held.version} plus the delta does not hash to version "
                                          f"{header.version}'s sha256", header.version)
    return weights
