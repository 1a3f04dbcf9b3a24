"""Fuzzing every codec's update payload through the coordinator's path, and every downlink delta through the
device's: a mutated payload is accepted (within the norm bound; a delta rebuilding exactly its version) or refused
by reason; no other exception escapes, and nothing is allocated beyond the payload limit."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from coordinator.downlink import compress
from coordinator.rounds import OpenRound, RoundPlan, task_seed
from coordinator.server_state import ServerState
from coordinator.strategies.fedavg import FedAvg
from edge_runtime.codecs import get_codec
from edge_runtime.errors import ProtocolError
from edge_runtime.manifest import WeightSpec
from edge_runtime.model_sync import GlobalModel, Target, read_delta
from edge_runtime.protocol import DeltaHeader, UpdateHeader, decode_tensors, encode_tensors
from edge_runtime.updates import clip

SPECS = (WeightSpec("conv/kernel", (3, 3, 1, 4)), WeightSpec("dense/kernel", (36, 10)), WeightSpec("dense/bias", (10,)))
N = 36 + 360 + 10
CODECS = ["float32", "float16", "int8", "int4", "sign", "rotated-sign", "topk:0.1", "topk:0.05+int8", "topk:0.1+sign"]
MUTATIONS = 300


def payload(name: str, bound: float) -> bytes:
    rng = np.random.default_rng(0)
    value, norm = clip({s.name: rng.standard_normal(s.shape).astype(np.float32) for s in SPECS}, bound)
    header = UpdateHeader("a", "t", 1, 0, 3, 0.5, norm, name)
    return encode_tensors(header, get_codec(name).encode(value, SPECS, task_seed(0, 1, "a"), bound).tensors)


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    out = bytearray(data)
    kind = rng.integers(4)
    if kind == 0:  # flip bytes anywhere
        for _ in range(int(rng.integers(1, 6))):
            out[int(rng.integers(len(out)))] ^= int(rng.integers(1, 256))
    elif kind == 1:  # flip bytes in the tensor data only (after the safetensors header)
        start = 8 + int.from_bytes(out[:8], "little")
        for _ in range(int(rng.integers(1, 6))):
            out[int(rng.integers(start, len(out)))] = int(rng.integers(256))
    elif kind == 2:  # truncate or extend
        cut = int(rng.integers(len(out)))
        return bytes(out[:cut]) if rng.integers(2) else bytes(out) + bytes(cut % 64)
    else:  # rewrite a digit of the header's JSON (offsets, shapes, dtypes, metadata)
        end = 8 + int.from_bytes(out[:8], "little")
        digits = [i for i in range(8, min(end, len(out))) if chr(out[i]).isdigit()]
        if digits:
            out[digits[int(rng.integers(len(digits)))]] = ord(str(int(rng.integers(10))))
    return bytes(out)


@pytest.mark.parametrize("name", CODECS)
def test_mutated_payloads_are_accepted_within_the_bound_or_refused_by_reason(name: str) -> None:
    bound, codec = 1.0, get_codec(name)
    limit = codec.payload_limit(N)
    original = payload(name, bound)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    start = {s.name: np.zeros(s.shape, np.float32) for s in SPECS}
    outcomes: dict[str, int] = {}
    for _ in range(MUTATIONS):
        data = mutate(original, rng)
        current = OpenRound(RoundPlan(1, "t", 0, frozenset({"a"}), 1, 1, 1, bound, math.inf, codec=name),
                            ServerState("ab" * 32, "fedavg", start), SPECS, FedAvg())
        try:
            header, tensors = decode_tensors(data, UpdateHeader, limit)
        except ProtocolError as exc:
            outcomes[exc.reason] = outcomes.get(exc.reason, 0) + 1
            continue
        reason = current.offer_update("a", True, header, tensors) if header.device_id == "a" else "identity"
        outcomes[reason or "accepted"] = outcomes.get(reason or "accepted", 0) + 1
        if reason is None:
            outcome = current.close("goal")
            assert outcome.state is not None
            assert all(np.all(np.isfinite(v)) for v in outcome.state.weights.values())
    assert sum(outcomes.values()) == MUTATIONS
    assert outcomes.get("malformed", 0) > 0 and len(outcomes) >= 3  # the mutations reach several checks


@pytest.mark.parametrize("name", ["float32", "float16", "int8", "int4"])
def test_mutated_deltas_rebuild_the_published_model_or_are_refused_by_reason(name: str) -> None:
    """A device's side of the downlink: a mutated delta either rebuilds exactly the version its header names, or is
    refused with a ProtocolError and a reason; nothing else escapes."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    base = {s.name: rng.standard_normal(s.shape).astype(np.float32) for s in SPECS}
    target_weights = {k: (v + rng.standard_normal(v.shape).astype(np.float32) * np.float32(0.01))
                      for k, v in base.items()}
    found = compress(base, target_weights, SPECS, get_codec(name), 11)
    assert found is not None
    header = DeltaHeader(1, 1, "ab" * 32, 0, found.codec, 11, found.sha256)
    original = encode_tensors(header, found.tensors)
    target = Target("ab" * 32, SPECS)
    held = GlobalModel(0, base, True, 0)
    outcomes: dict[str, int] = {}
    for _ in range(MUTATIONS):
        try:
            rebuilt = read_delta(mutate(original, rng), target, held)
        except ProtocolError as exc:
            outcomes[exc.reason] = outcomes.get(exc.reason, 0) + 1
            continue
        if rebuilt is not None:
            assert all(rebuilt.weights[s.name].tobytes() == found.weights[s.name].tobytes() for s in SPECS)
        kind = "used" if rebuilt is not None else "ignored"
        outcomes[kind] = outcomes.get(kind, 0) + 1
    assert outcomes.get("malformed", 0) > 0 and len(outcomes) >= 3
