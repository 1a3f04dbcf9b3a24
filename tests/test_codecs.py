"""The update codecs: round trips, the norm slack each declares, payload limits, refusals; and a float16 round."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from coordinator.rounds import BAD_TENSORS, NORM_EXCEEDED, OpenRound, RoundPlan
from coordinator.server_state import ServerState
from coordinator.strategies.fedavg import FedAvg
from edge_runtime.codecs import CODEC_NAMES, FLOAT16, FLOAT32, get_codec
from edge_runtime.errors import ProtocolError, WeightsError
from edge_runtime.manifest import WeightSpec
from edge_runtime.protocol import UpdateHeader, decode_tensors, encode_tensors
from edge_runtime.updates import clip, l2_norm

SPECS = (WeightSpec("dense/kernel", (4, 3)), WeightSpec("dense/bias", (3,)))
PARAMETERS = 15


def update(seed: int = 0, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s.name: (rng.standard_normal(s.shape) * scale).astype(np.float32) for s in SPECS}


def test_the_registry_names_each_codec_and_refuses_an_unknown_one() -> None:
    assert CODEC_NAMES == ("float32", "float16", "int8", "int4", "sign", "rotated-sign", "topk:FRACTION",
                           "topk:FRACTION+VALUES")
    assert get_codec("float16") is FLOAT16
    with pytest.raises(ProtocolError, match=r"codec 'int3' is not known; expected one of float32, float16, int8"):
        get_codec("int3")


def test_float32_sends_the_bytes_it_was_given() -> None:
    value = update()
    encoded = FLOAT32.encode(value).tensors
    assert all(encoded[n].tobytes() == value[n].tobytes() for n in value)
    decoded = FLOAT32.decode(encoded, SPECS)
    assert all(decoded[n].tobytes() == value[n].tobytes() for n in value)


def test_float16_halves_the_tensors_and_rounds_each_value_to_nearest() -> None:
    value = {"dense/kernel": np.full((4, 3), 1.0 + 2.0**-12, np.float32),  # halfway: rounds to even, 1.0
             "dense/bias": np.array([0.1, -65504.0, 2.0**-24], np.float32)}
    encoded = FLOAT16.encode(value).tensors
    assert {n: t.dtype for n, t in encoded.items()} == {n: np.dtype(np.float16) for n in value}
    decoded = FLOAT16.decode(encoded, SPECS)
    assert all(t.dtype == np.float32 for t in decoded.values())
    assert np.all(decoded["dense/kernel"] == 1.0)
    assert decoded["dense/bias"].tolist() == [np.float32(np.float16(0.1)), -65504.0, 2.0**-24]


def test_float16_refuses_a_value_it_cannot_represent_naming_the_tensor() -> None:
    with pytest.raises(WeightsError, match=r"'dense/bias'.*float16's range"):
        FLOAT16.encode({"dense/kernel": np.zeros((4, 3), np.float32), "dense/bias": np.array([7e4, 0, 0], np.float32)})


@pytest.mark.parametrize("tensors", [
    {"dense/kernel": np.zeros((4, 3), np.float32), "dense/bias": np.zeros(3, np.float32)},  # float32 for float16
    {"dense/kernel": np.zeros((4, 3), np.float16)},  # missing
    {"dense/kernel": np.zeros((12,), np.float16), "dense/bias": np.zeros(3, np.float16)},  # flattened
])
def test_float16_decode_refuses_what_it_does_not_send(tensors: dict[str, np.ndarray]) -> None:
    with pytest.raises(WeightsError):
        FLOAT16.decode(tensors, SPECS)


@pytest.mark.parametrize("codec", [FLOAT32, FLOAT16], ids=lambda c: c.name)
@pytest.mark.parametrize("seed", range(20))
def test_a_clipped_update_always_decodes_within_the_declared_norm(codec: object, seed: int) -> None:
    bound = 0.5
    scale = 10.0 ** (seed % 7 - 5)  # from tiny (subnormal in float16) to far above the bound
    clipped, _ = clip(update(seed, scale), bound)
    decoded = codec.decode(codec.encode(clipped).tensors, SPECS)  # type: ignore[attr-defined]
    assert l2_norm(decoded) <= codec.max_norm(bound, PARAMETERS)  # type: ignore[attr-defined]


def test_payload_limits_follow_the_codec() -> None:
    assert FLOAT32.payload_limit(1000) == 4000 + 65536
    assert FLOAT16.payload_limit(1000) == 2000 + 65536
    clipped, norm = clip(update(), 1.0)
    header = UpdateHeader("d", "t", 1, 0, 5, 0.5, norm, "float16")
    assert len(encode_tensors(header, FLOAT16.encode(clipped).tensors)) <= FLOAT16.payload_limit(PARAMETERS)


def test_the_norm_slack_is_tight_enough_to_refuse_a_scaled_update() -> None:
    assert FLOAT16.max_norm(1.0, 1) == pytest.approx(1.0 + 2.0**-11 + 1e-5 + 2.0**-24)
    assert FLOAT16.max_norm(1.0, 10**6) < 1.001  # a million parameters: still a tenth of a percent


def plan(codec: str) -> RoundPlan:
    return RoundPlan(1, "t", 0, frozenset({"a", "b"}), 2, 2, 1, 1.0, math.inf, codec=codec)


def test_a_float16_round_decodes_before_it_checks_and_aggregates_in_float32() -> None:
    start = {s.name: np.zeros(s.shape, np.float32) for s in SPECS}
    current = OpenRound(plan("float16"), ServerState("ab" * 32, "fedavg", start), SPECS, FedAvg())
    clipped, norm = clip(update(1), 1.0)
    header = UpdateHeader("a", "t", 1, 0, 3, 0.5, norm, "float16")
    _, wire = decode_tensors(encode_tensors(header, FLOAT16.encode(clipped).tensors), UpdateHeader, 10**6)
    assert current.offer_update("a", True, header, wire) is None
    too_long = FLOAT16.encode({n: v * np.float32(1.01) for n, v in clipped.items()}).tensors
    assert current.offer_update("b", True, replace(header, device_id="b"), too_long) == NORM_EXCEEDED
    assert current.offer_update("b", True, replace(header, device_id="b"), clipped) == BAD_TENSORS  # float32 sent
    outcome = current.close("deadline")
    assert outcome.state is not None
    for name, value in outcome.state.weights.items():
        assert value.dtype == np.float32
        np.testing.assert_array_equal(value, clipped[name].astype(np.float16).astype(np.float32))
