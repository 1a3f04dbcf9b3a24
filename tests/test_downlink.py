"""The compressed downlink: the coordinator's delta arithmetic, the wire, the device's use of a delta and its fall-back
to the full model, and a federation that follows the deltas through a real broker.

Values are multiples of 1/64 where a result is checked by hand (exact in float32 and float16).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from coordinator.config import CoordinatorConfig, build_config
from coordinator.downlink import compress, downlink_codec, downlink_seed
from coordinator.errors import ConfigError
from coordinator.machine import Effect, Line, Now, Publish, RoundMachine, Save
from coordinator.pipeline_args import add_pipeline_arguments
from coordinator.server_state import ServerState
from device_profiles.fleet_config import FleetConfig
from edge_runtime.codecs import FLOAT16, FLOAT32, UNKNOWN_CODEC, get_codec
from edge_runtime.data import Dataset
from edge_runtime.errors import ProtocolError
from edge_runtime.manifest import WeightSpec
from edge_runtime.model_sync import (
    BAD_TENSORS,
    HASH_MISMATCH,
    NO_BASE,
    NON_FINITE,
    DeltaRefused,
    GlobalModel,
    Target,
    read_delta,
    read_global,
    wants_full,
)
from edge_runtime.protocol import (
    MALFORMED,
    OVERSIZED,
    DeltaHeader,
    DeviceStatus,
    GlobalHeader,
    Topics,
    TrainTask,
    UpdateHeader,
    add_delta,
    decode,
    decode_header,
    decode_tensors,
    encode,
    encode_tensors,
    weights_sha256,
)
from edge_runtime.weights import Weights
from tests.conftest import FederationFiles
from tests.federation_tools import offline_agent

AID = "ab" * 32
SPECS = (WeightSpec("w", (2,)), WeightSpec("b", (1,)))
TARGET = Target(AID, SPECS)


def f32(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


def model(version: int, w: tuple[float, float], b: float, deltas: bool = True) -> GlobalModel:
    return GlobalModel(version, {"w": f32(*w), "b": f32(b)}, deltas, 0)


# --- the hash and the addition, by hand ------------------------------------------------------------


def test_weights_sha256_is_the_float32_little_endian_bytes_in_manifest_order() -> None:
    weights = {"b": f32(-2.0), "w": f32(1.0, 0.5)}  # mapping order is not manifest order
    wire = struct.pack("<3f", 1.0, 0.5, -2.0)  # w then b, as SPECS lists them
    assert wire == bytes.fromhex("0000803f 0000003f 000000c0")
    assert weights_sha256(weights, SPECS) == hashlib.sha256(wire).hexdigest()
    assert weights_sha256({"w": f32(1.0, 0.5), "b": f32(2.0)}, SPECS) != weights_sha256(weights, SPECS)
    assert weights_sha256({"w": f32(0.0, 0.5), "b": f32(-2.0)}, SPECS) != weights_sha256(
        {"w": f32(-0.0, 0.5), "b": f32(-2.0)}, SPECS)  # bits, not values


def test_add_delta_is_one_float32_addition_per_value() -> None:
    out = add_delta({"w": f32(1.0, -1.0), "b": f32(0.5)}, {"w": f32(0.25, 1 / 64), "b": f32(-0.5)}, SPECS)
    assert out["w"].dtype == np.float32 and out["w"].tolist() == [1.25, -1 + 1 / 64] and out["b"].tolist() == [0.0]
    tiny = add_delta({"w": f32(1.0, 0.0), "b": f32(0.0)}, {"w": f32(2.0**-30, 0.0), "b": f32(0.0)}, SPECS)
    assert tiny["w"][0] == np.float32(1.0)  # rounded in float32, as a device does


# --- the coordinator's side --------------------------------------------------------------------------


def test_downlink_seed_is_reproducible_per_version() -> None:
    expected = int.from_bytes(hashlib.sha256(b"7/downlink/3").digest()[:4], "little")
    assert downlink_seed(7, 3) == expected
    assert len({downlink_seed(7, v) for v in range(1, 50)}) == 49 and downlink_seed(8, 3) != expected


@pytest.mark.parametrize("name", ["float32", "float16", "int8", "int4"])
def test_downlink_codecs_are_the_unbiased_ones(name: str) -> None:
    codec = downlink_codec(name)
    assert codec is not None and codec.name == name and not codec.feedback
    assert downlink_codec("none") is None


@pytest.mark.parametrize(("name", "why"), [("sign", "biased"), ("rotated-sign", "biased"), ("topk:0.1", "biased"),
                                           ("topk:0.1+int8", "biased"), ("int16", "not known"), ("", "not known")])
def test_other_codecs_are_refused_for_the_downlink_saying_why(name: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        downlink_codec(name)
    with pytest.raises(ConfigError) as refused:
        CoordinatorConfig(Path("a"), Path("s"), downlink_codec=name)
    assert refused.value.key == "downlink-codec" and why in refused.value.expected


def test_the_option_from_flags_toml_and_the_fleet(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_pipeline_arguments(parser)
    assert parser.parse_args(["--downlink-codec", "int4"]).downlink_codec == "int4"
    assert parser.parse_args([]).downlink_codec is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--downlink-codec", "sign"])
    (tmp_path / "c.toml").write_text('downlink-codec = "float16"\n')
    config = build_config(tmp_path / "c.toml", {"artifact": Path("a"), "state_dir": Path("s")})
    assert config.downlink_codec == "float16"
    assert CoordinatorConfig(Path("a"), Path("s")).downlink_codec == "none"
    fleet = FleetConfig(downlink_codec="int8").coordinator_config(Path("a"), Path("s"), None, "mqtt://h", "auto", 1.0)
    assert fleet.downlink_codec == "int8"
    with pytest.raises(ConfigError, match="downlink-codec"):
        FleetConfig(downlink_codec="sign")


def test_compress_with_float32_and_exact_values_gives_the_target() -> None:
    previous, target = {"w": f32(1.0, -1.0), "b": f32(0.5)}, {"w": f32(1.5, -0.75), "b": f32(0.5)}
    found = compress(previous, target, SPECS, FLOAT32, 11)
    assert found is not None and (found.codec, found.seed) == ("float32", 11)
    assert found.weights["w"].tolist() == [1.5, -0.75] and found.weights["b"].tolist() == [0.5]
    assert found.tensors["w"].tolist() == [0.5, 0.25] and found.tensors["b"].tolist() == [0.0]
    assert found.sha256 == weights_sha256(target, SPECS)


def test_compress_with_float16_rounds_the_delta_not_the_model() -> None:
    previous, target = {"w": f32(1.0, 8.0), "b": f32(0.0)}, {"w": f32(1.0 + 1 / 3, 8.0), "b": f32(0.0)}
    found = compress(previous, target, SPECS, FLOAT16, 0)
    assert found is not None and found.tensors["w"].dtype == np.float16
    third = float(np.float16(np.float32(1 + 1 / 3) - np.float32(1.0)))  # 0.333251953125: 11 significant bits
    assert found.weights["w"].tolist() == [float(np.float32(1.0) + np.float32(third)), 8.0]


def test_compress_with_int8_keeps_values_on_its_levels_and_rounds_the_others_to_a_neighbour() -> None:
    # scale = (127/64) / 127 = 1/64: every multiple of 1/64 is a level, 0.5/64 goes to 0 or 1/64.
    previous = {"w": f32(0.0, 1.0), "b": f32(2.0)}
    target = {"w": f32(127 / 64, 1.0 - 5 / 64), "b": f32(2.0 + 0.5 / 64)}
    values = set()
    for seed in range(40):
        found = compress(previous, target, SPECS, get_codec("int8"), seed)
        assert found is not None
        assert found.weights["w"].tolist() == [127 / 64, 1.0 - 5 / 64]
        assert found.weights["b"][0] in (np.float32(2.0), np.float32(2.0 + 1 / 64))
        values.add(float(found.weights["b"][0]))
        assert found.tensors["q"].tolist()[:2] == [127, -5] and found.tensors["scales"].tolist() == [1 / 64]
    assert len(values) == 2  # both neighbours occur: the rounding is stochastic, seeded


def test_a_delta_beyond_float16_travels_in_float32() -> None:
    previous, target = {"w": f32(0.0, 0.0), "b": f32(0.0)}, {"w": f32(1e5, 0.25), "b": f32(0.0)}
    found = compress(previous, target, SPECS, FLOAT16, 0)
    assert found is not None and found.codec == "float32" and found.weights["w"].tolist() == [1e5, 0.25]


def test_a_delta_that_overflows_float32_is_not_made() -> None:
    previous, target = {"w": f32(3e38, 0.0), "b": f32(0.0)}, {"w": f32(-3e38, 0.0), "b": f32(0.0)}
    assert compress(previous, target, SPECS, get_codec("int8"), 0) is None


# --- the machine: what a commit publishes and checkpoints ---------------------------------------------

BIG = (WeightSpec("w", (300,)), WeightSpec("b", (3,)))  # crosses int8/int4's block of 256
TOPICS = Topics("down")
DEVICES = ("d1", "d2", "d3")


def at(t: float) -> Now:
    return Now(clock=1000.0 + t, real=t, wall=1.7e9 + t)


def machine(downlink: str, strategy: str = "fedavg", **changes: Any) -> tuple[RoundMachine, Weights]:
    rng = np.random.default_rng(1)
    start = {"w": rng.standard_normal(300).astype(np.float32), "b": rng.standard_normal(3).astype(np.float32)}
    config = CoordinatorConfig(Path("artifact"), Path("state"), federation="down", rounds=3, fraction=0.5,
                               min_clients=2, min_reports=2, over_select=1.5, eval_every=0, downlink_codec=downlink,
                               strategy=strategy, seed=5, **changes)
    strategy_ = config.build_strategy()
    ids = iter(f"task-{i}" for i in range(100))
    state = ServerState(AID, strategy_.name, start, strategy_.init(start))
    return RoundMachine(config, state, strategy_, BIG, b"bundle", payload_limit=10**6, task_lr=0.05,
                        new_id=lambda: next(ids)), start


def published(effects: list[Effect]) -> list[tuple[str, bytes]]:
    return [(e.topic, e.payload) for e in effects if isinstance(e, Publish)]


def tasks_in(effects: list[Effect]) -> dict[str, TrainTask]:
    return {topic.split("/")[-2]: decode(payload, TrainTask) for topic, payload in published(effects)
            if topic.endswith("/task") and payload}


def an_update(task: TrainTask, device: str, seed: int) -> tuple[str, bytes]:
    rng = np.random.default_rng(seed)
    tensors = {"w": (rng.standard_normal(300) * 0.01).astype(np.float32),
               "b": (rng.standard_normal(3) * 0.01).astype(np.float32)}
    header = UpdateHeader(device, task.task_id, task.round, task.model_version, 10, 1.0, 0.1)
    return TOPICS.update(device), encode_tensors(header, tensors)


def run_rounds(m: RoundMachine, rounds: int) -> list[Effect]:
    out = m.start(at(0))
    for device in DEVICES:
        m.receive(TOPICS.status(device), encode(DeviceStatus(device, True, True, artifact_id=AID)), at(0.1))
    step = m.tick(at(1.5))
    out += step
    t = 2.0
    for number in range(rounds):
        sent = tasks_in(step)
        step = []
        for i, device in enumerate(sorted(sent)[:2]):
            step += m.receive(*an_update(sent[device], device, 10 * number + i), at(t))
            t += 0.1
        out += step
    return out


def test_start_clears_the_retained_delta_and_names_the_downlink_in_the_global_header() -> None:
    m, start = machine("int8")
    first = published(m.start(at(0)))
    assert [topic for topic, _ in first][:3] == [TOPICS.artifact, TOPICS.delta_model, TOPICS.global_model]
    assert first[1][1] == b""
    header = decode_header(first[2][1], GlobalHeader, 10**6)
    assert (header.version, header.delta_codec, header.sha256) == (0, "int8", weights_sha256(start, BIG))
    assert decode_header(published(machine("none")[0].start(at(0)))[2][1], GlobalHeader, 10**6).delta_codec == "none"


def test_without_a_downlink_codec_a_commit_publishes_the_strategy_s_weights_and_no_delta() -> None:
    m, _ = machine("none")
    effects = run_rounds(m, 1)
    topics = [topic for topic, _ in published(effects)]
    assert topics.count(TOPICS.delta_model) == 1  # only the clearing at start
    save = next(e for e in effects if isinstance(e, Save)).state
    full = [p for t, p in published(effects) if t == TOPICS.global_model][-1]
    assert decode_tensors(full, GlobalHeader, 10**6)[1]["w"].tobytes() == save.weights["w"].tobytes()


@pytest.mark.parametrize("codec", ["float16", "int8", "int4"])
def test_a_device_rebuilds_every_version_bit_for_bit_from_the_deltas(codec: str) -> None:
    m, _ = machine(codec)
    effects = run_rounds(m, 3)
    messages = published(effects)
    fulls = [p for t, p in messages if t == TOPICS.global_model]
    deltas = [p for t, p in messages if t == TOPICS.delta_model and p]
    saves = [e.state for e in effects if isinstance(e, Save)]
    assert len(fulls) == 4 and len(deltas) == 3 and len(saves) == 3
    target = Target(AID, BIG)
    held = read_global(fulls[0], target)
    assert held is not None
    for version, (delta, full, save) in enumerate(zip(deltas, fulls[1:], saves, strict=True), start=1):
        assert messages.index((TOPICS.delta_model, delta)) < messages.index((TOPICS.global_model, full))
        header = decode_header(delta, DeltaHeader, 10**6)
        assert (header.version, header.base_version, header.codec, header.seed) == (
            version, version - 1, codec, downlink_seed(5, version))
        assert len(delta) < get_codec(codec).payload_limit(303) and len(delta) < len(full)
        rebuilt = read_delta(delta, target, held)
        published_full = read_global(full, target)
        assert rebuilt is not None and published_full is not None and rebuilt.version == published_full.version
        for spec in BIG:  # the device's model, the published full model and the checkpoint: the same bits
            assert rebuilt.weights[spec.name].tobytes() == published_full.weights[spec.name].tobytes()
            assert save.weights[spec.name].tobytes() == rebuilt.weights[spec.name].tobytes()
        held = rebuilt


def test_the_delta_s_rounding_enters_the_model_but_not_the_strategy_s_state() -> None:
    exact, start = machine("none", strategy="fedavgm")
    rounded, _ = machine("int4", strategy="fedavgm")
    plain = next(e.state for e in run_rounds(exact, 1) if isinstance(e, Save))
    quantized = next(e.state for e in run_rounds(rounded, 1) if isinstance(e, Save))
    assert plain.strategy_state.keys() == quantized.strategy_state.keys() and plain.strategy_state
    for name in plain.strategy_state:  # the server momentum is the strategy's, untouched
        assert plain.strategy_state[name].tobytes() == quantized.strategy_state[name].tobytes()
    # int4 moves each value by less than one level, at most the largest change of its block over 7
    error = np.abs(quantized.weights["w"] - plain.weights["w"])
    change = np.abs(plain.weights["w"] - start["w"])
    assert 0 < float(np.max(error)) <= float(np.max(change)) / 7 * (1 + 1e-5)


# --- the device's side: a delta, used or refused --------------------------------------------------------


def delta_payload(base: GlobalModel, new: Weights, codec: str = "int8", seed: int = 3, **changes: Any) -> bytes:
    """The delta base -> new as the coordinator makes it; ``changes`` override header fields."""
    found = compress(base.weights, new, SPECS, get_codec(codec), seed)
    assert found is not None
    fields = {"version": base.version + 1, "round": base.version + 1, "artifact_id": AID,
              "base_version": base.version, "codec": found.codec, "seed": seed, "sha256": found.sha256, **changes}
    return encode_tensors(DeltaHeader(**fields), found.tensors)


HELD = model(4, (1.0, -1.0), 0.5)
NEXT = {"w": f32(1.25, -1.0 + 3 / 64), "b": f32(0.5 - 1 / 64)}


def test_a_delta_on_the_version_held_gives_the_next_one() -> None:
    fresh = read_delta(delta_payload(HELD, NEXT, "float32"), TARGET, HELD)
    assert fresh is not None and (fresh.version, fresh.deltas) == (5, True)
    assert fresh.weights["w"].tolist() == [1.25, -1.0 + 3 / 64] and fresh.weights["b"].tolist() == [0.5 - 1 / 64]
    assert fresh.downloaded == len(delta_payload(HELD, NEXT, "float32"))


def test_a_delta_for_another_artifact_or_a_version_already_held_changes_nothing() -> None:
    assert read_delta(delta_payload(HELD, NEXT, artifact_id="cd" * 32), TARGET, HELD) is None
    assert read_delta(delta_payload(HELD, NEXT), TARGET, HELD._replace(version=5)) is None
    assert read_delta(delta_payload(HELD, NEXT), TARGET, HELD._replace(version=9)) is None


@pytest.fixture
def no_tensor_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fails the test if the delta's tensors are parsed (anything allocated at the sizes the payload claims)."""
    def refuse(*args: object) -> None:
        raise AssertionError("the tensors were parsed")
    monkeypatch.setattr("edge_runtime.model_sync.weights_from_bytes", refuse)


def claims_a_huge_tensor(header: DeltaHeader) -> bytes:
    """A delta payload whose header claims a tensor of 10^9 int8 values, with none of its bytes."""
    metadata = {"protocol": "1", **{k: v if isinstance(v, str) else json.dumps(v)
                                    for k, v in header.__dict__.items()}}
    table = {"__metadata__": metadata, "q": {"dtype": "I8", "shape": [10**9], "data_offsets": [0, 10**9]}}
    raw = json.dumps(table).encode()
    return struct.pack("<Q", len(raw)) + raw


@pytest.mark.usefixtures("no_tensor_parsing")
@pytest.mark.parametrize(("held", "problem"), [(HELD._replace(version=3), "holds version 3"),
                                               (HELD._replace(version=2), "holds version 2"),
                                               (None, "holds no model")], ids=["behind", "further", "none"])
def test_a_delta_for_a_base_the_device_does_not_hold_is_refused_before_its_tensors_are_read(
        held: GlobalModel | None, problem: str) -> None:
    for payload in (delta_payload(HELD, NEXT),
                    claims_a_huge_tensor(DeltaHeader(5, 5, AID, 4, "int8", 0, "0" * 64))):
        with pytest.raises(DeltaRefused) as refused:
            read_delta(payload, TARGET, held)
        assert (refused.value.reason, refused.value.version) == (NO_BASE, 5) and problem in refused.value.problem
        assert "from version 4 to 5" in refused.value.problem


@pytest.mark.usefixtures("no_tensor_parsing")
@pytest.mark.parametrize(("changes", "reason", "words"), [
    ({"base_version": 5}, MALFORMED, "base version"),  # a base the coordinator never published: not below it
    ({"base_version": 7}, MALFORMED, "base version"),
    ({"base_version": -1}, MALFORMED, "base version"),
    ({"seed": 2**32}, MALFORMED, "seed"),
    ({"sha256": "A" * 64}, MALFORMED, "sha256"),
    ({"sha256": "abc"}, MALFORMED, "sha256"),
    ({"codec": "sign"}, UNKNOWN_CODEC, "not a downlink codec"),
    ({"codec": "topk:0.1"}, UNKNOWN_CODEC, "not a downlink codec"),
    ({"codec": "bogus"}, UNKNOWN_CODEC, "not a downlink codec"),
], ids=["base=version", "base>version", "base<0", "seed", "sha256-case", "sha256-short", "sign", "topk", "bogus"])
def test_a_delta_whose_header_is_wrong_is_refused_before_its_tensors_are_read(
        changes: dict[str, Any], reason: str, words: str) -> None:
    fields = {"version": 5, "round": 5, "artifact_id": AID, "base_version": 4, "codec": "int8", "seed": 0,
              "sha256": "0" * 64}
    metadata = {"protocol": "1", "kind": "delta", **{k: v if isinstance(v, str) else json.dumps(v)
                                                     for k, v in {**fields, **changes}.items()}}
    raw = json.dumps({"__metadata__": metadata, "q": {"dtype": "I8", "shape": [10**9],
                                                      "data_offsets": [0, 10**9]}}).encode()
    with pytest.raises(DeltaRefused) as refused:
        read_delta(struct.pack("<Q", len(raw)) + raw, TARGET, HELD)
    assert refused.value.reason == reason and words in refused.value.problem


@pytest.mark.usefixtures("no_tensor_parsing")
def test_a_delta_larger_than_its_codec_sends_is_refused_unread() -> None:
    payload = delta_payload(HELD, NEXT, "int4")
    limit = get_codec("int4").payload_limit(TARGET.parameter_count)
    padded = with_padding(payload, limit + 1 - len(payload))
    with pytest.raises(DeltaRefused) as refused:
        read_delta(padded, TARGET, HELD)
    assert refused.value.reason == OVERSIZED and "int4" in refused.value.problem
    huge = b"\0" * (FLOAT32.payload_limit(TARGET.parameter_count) + 1)
    with pytest.raises(DeltaRefused) as refused:
        read_delta(huge, TARGET, HELD)
    assert refused.value.reason == OVERSIZED


def with_padding(payload: bytes, extra: int) -> bytes:
    """``payload`` with ``extra`` spaces more in its JSON header (still a valid message)."""
    (length,) = struct.unpack("<Q", payload[:8])
    header = payload[8: 8 + length] + b" " * extra
    return struct.pack("<Q", len(header)) + header + payload[8 + length:]


def tampered(payload: bytes, **tensors: np.ndarray) -> bytes:
    """``payload`` with its metadata kept and its tensors replaced or added."""
    header, original = decode_tensors(payload, DeltaHeader, 10**6)
    return encode_tensors(header, {**original, **tensors})


def int8_delta() -> bytes:
    return delta_payload(HELD, NEXT, "int8")


@pytest.mark.parametrize(("payload", "reason", "words"), [
    (lambda: tampered(int8_delta(), scales=f32(np.nan)), BAD_TENSORS, "NaN"),
    (lambda: tampered(int8_delta(), scales=f32(-1.0)), BAD_TENSORS, "negative"),
    (lambda: tampered(int8_delta(), q=np.array([1, 2], np.int8)), BAD_TENSORS, "expected int8[3]"),
    (lambda: tampered(int8_delta(), q=np.array([1, 2, 3], np.int16)), BAD_TENSORS, "expected int8[3]"),
    (lambda: tampered(int8_delta(), q=np.array([-128, 0, 0], np.int8)), BAD_TENSORS, "level"),
    (lambda: tampered(int8_delta(), extra=f32(0.0)), BAD_TENSORS, "sends tensors"),
    (lambda: encode_tensors(decode_header(int8_delta(), DeltaHeader, 10**6),
                            {"q": np.zeros(3, np.int8)}), BAD_TENSORS, "sends tensors"),
    (lambda: tampered(delta_payload(HELD, NEXT, "int4"), q=np.array([0x88, 0x80], np.uint8)), BAD_TENSORS,
     "nibble 0"),
    (lambda: tampered(delta_payload(HELD, NEXT, "float16"), w=np.array([np.nan, 0], np.float16)), BAD_TENSORS,
     "NaN"),
    (lambda: tampered(delta_payload(HELD, NEXT, "float16"), w=np.zeros(3, np.float16)), BAD_TENSORS, "shape"),
    (lambda: tampered(delta_payload(HELD, NEXT, "float16"), w=np.zeros(2, np.float32)), BAD_TENSORS, "dtype"),
    (lambda: int8_delta()[:-3], MALFORMED, ""),
    (lambda: encode_tensors(GlobalHeader(5, 5, AID), NEXT), MALFORMED, "'global'"),
    (lambda: b"\x10\0\0\0\0\0\0\0{not json}      ", MALFORMED, "not JSON"),
], ids=["nan-scale", "negative-scale", "short-q", "q-dtype", "q-beyond-levels", "extra-tensor", "missing-scales",
        "int4-nibble-0", "float16-nan", "float16-shape", "float16-dtype", "truncated", "a-global", "not-json"])
def test_a_malformed_delta_is_refused_with_the_reason(payload: Any, reason: str, words: str) -> None:
    with pytest.raises(DeltaRefused) as refused:
        read_delta(payload(), TARGET, HELD)
    assert refused.value.reason == reason and words in str(refused.value), refused.value


def test_a_delta_that_does_not_hash_to_its_header_is_refused() -> None:
    honest = int8_delta()
    assert read_delta(tampered(honest), TARGET, HELD) is not None  # re-encoded unchanged: still fine
    header, tensors = decode_tensors(honest, DeltaHeader, 10**6)
    with pytest.raises(DeltaRefused) as refused:  # another hash in the header
        read_delta(encode_tensors(DeltaHeader(**{**header.__dict__, "sha256": "f" * 64}), tensors), TARGET, HELD)
    assert refused.value.reason == HASH_MISMATCH and refused.value.version == 5
    q = decode_tensors(honest, DeltaHeader, 10**6)[1]["q"].copy()
    q[2] = q[2] - 1 if q[2] > -127 else q[2] + 1  # one level off: still a valid delta, another model
    with pytest.raises(DeltaRefused) as refused:
        read_delta(tampered(honest, q=q), TARGET, HELD)
    assert refused.value.reason == HASH_MISMATCH
    with pytest.raises(DeltaRefused) as refused:  # the right delta on a base that differs by one bit
        base = HELD._replace(weights={"w": f32(1.0, -1.0), "b": np.nextafter(f32(0.5), f32(1.0))})
        read_delta(honest, TARGET, base)
    assert refused.value.reason == HASH_MISMATCH


def test_a_delta_that_overflows_the_model_is_refused() -> None:
    held = model(4, (3e38, 0.0), 0.0)
    payload = encode_tensors(DeltaHeader(5, 5, AID, 4, "float32", 0, "0" * 64),
                             {"w": f32(3e38, 0.0), "b": f32(0.0)})
    with pytest.raises(DeltaRefused) as refused:
        read_delta(payload, TARGET, held)
    assert refused.value.reason == NON_FINITE


def test_a_global_model_is_checked_against_its_hash_when_it_has_one() -> None:
    weights = {"w": f32(1.0, 2.0), "b": f32(3.0)}
    good = encode_tensors(GlobalHeader(2, 2, AID, weights_sha256(weights, SPECS), "int8"), weights)
    fresh = read_global(good, TARGET)
    assert fresh is not None and (fresh.version, fresh.deltas, fresh.downloaded) == (2, True, len(good))
    old = read_global(encode_tensors(GlobalHeader(2, 2, AID), weights), TARGET)  # a coordinator before deltas
    assert old is not None and old.deltas is False
    assert read_global(encode_tensors(GlobalHeader(2, 2, "cd" * 32), weights), TARGET) is None
    with pytest.raises(ProtocolError) as refused:
        read_global(encode_tensors(GlobalHeader(2, 2, AID, "0" * 64, "int8"), weights), TARGET)
    assert refused.value.reason == HASH_MISMATCH


def test_delta_header_round_trip_and_hand_written_metadata() -> None:
    header = DeltaHeader(version=5, round=6, artifact_id=AID, base_version=4, codec="int8", seed=4294967295,
                         sha256="0123456789abcdef" * 4)
    payload = encode_tensors(header, {"q": np.zeros(3, np.int8), "scales": f32(0.0)})
    (length,) = struct.unpack("<Q", payload[:8])
    assert json.loads(payload[8: 8 + length])["__metadata__"] == {
        "protocol": "1", "kind": "delta", "version": "5", "round": "6", "artifact_id": AID, "base_version": "4",
        "codec": "int8", "seed": "4294967295", "sha256": "0123456789abcdef" * 4}
    assert decode_tensors(payload, DeltaHeader, 10**6)[0] == header


@pytest.mark.parametrize(("held", "behind", "expected"), [
    (None, False, True),  # new: no model
    (model(3, (0, 0), 0, deltas=False), False, True),  # the coordinator sends no deltas
    (model(3, (0, 0), 0), True, True),  # a delta failed, or a task for another version
    (model(3, (0, 0), 0), False, False),  # holds a model and deltas follow: the delta topic only
])
def test_which_model_topic_a_device_needs(held: GlobalModel | None, behind: bool, expected: bool) -> None:
    assert wants_full(held, behind) is expected


# --- the agent's decisions, with a connection that only records -------------------------------------------


@pytest.fixture
def device(federation_files: FederationFiles, tmp_path: Path) -> Iterator[Any]:
    agent = offline_agent(federation_files, tmp_path / "cache", Topics("unit"))
    yield agent
    agent._stop.set()


def device_specs(agent: Any) -> tuple[WeightSpec, ...]:
    specs: tuple[WeightSpec, ...] = agent._model.artifact.manifest.federated
    return specs


def full_message(agent: Any, version: int, weights: Weights, delta_codec: str = "int8") -> bytes:
    specs = device_specs(agent)
    header = GlobalHeader(version, version, agent._model.artifact_id, weights_sha256(weights, specs), delta_codec)
    return encode_tensors(header, weights)


def delta_message(agent: Any, base: Weights, version: int, new: Weights, **changes: Any) -> tuple[bytes, Weights]:
    specs = device_specs(agent)
    found = compress(base, new, specs, get_codec("int8"), version)
    assert found is not None
    fields = {"version": version, "round": version, "artifact_id": agent._model.artifact_id,
              "base_version": version - 1, "codec": "int8", "seed": version, "sha256": found.sha256, **changes}
    return encode_tensors(DeltaHeader(**fields), found.tensors), found.weights


def nudged(weights: Weights, by: float) -> Weights:
    return {name: (value + np.float32(by)).astype(np.float32) for name, value in weights.items()}


def test_the_agent_follows_deltas_after_a_full_model_and_falls_back_on_a_bad_one(device: Any) -> None:
    topics, conn = device.topics, device._conn
    start = {spec.name: np.zeros(spec.shape, np.float32) for spec in device_specs(device)}
    assert topics.global_model in conn.subscribed  # a new device takes the full model
    device._handle(topics.global_model, full_message(device, 0, start))
    assert device._global.version == 0 and topics.global_model not in conn.subscribed  # deltas follow
    assert topics.delta_model in conn.subscribed

    payload, v1 = delta_message(device, start, 1, nudged(start, 1 / 64))
    device._handle(topics.delta_model, payload)
    assert device._global.version == 1 and device._global_bytes == len(payload)
    assert all(device._global.weights[n].tobytes() == v1[n].tobytes() for n in v1)
    assert topics.global_model not in conn.subscribed and device.stats.deltas_applied == 1
    assert decode(conn.published[-1][1], DeviceStatus).model_version == 1  # the status says which version it holds

    bad, v2 = delta_message(device, v1, 2, nudged(v1, 1 / 32), sha256="0" * 64)
    device._handle(topics.delta_model, bad)  # a hash mismatch: keep version 1, fetch the full model
    assert device._global.version == 1 and topics.global_model in conn.subscribed
    assert device.stats.deltas_refused == 1
    full = full_message(device, 2, v2)
    device._handle(topics.global_model, full)
    assert device._global.version == 2 and topics.global_model not in conn.subscribed
    assert device._global_bytes == len(full) + len(bad)  # both were downloaded for version 2

    skipped, _ = delta_message(device, nudged(v2, 1.0), 4, nudged(v2, 2.0))  # version 3 was missed
    device._handle(topics.delta_model, skipped)
    assert device._global.version == 2 and topics.global_model in conn.subscribed


def test_the_agent_keeps_the_full_model_when_no_deltas_come_or_the_broker_refuses_them(device: Any) -> None:
    topics, conn = device.topics, device._conn
    start = {spec.name: np.zeros(spec.shape, np.float32) for spec in device_specs(device)}
    device._handle(topics.global_model, full_message(device, 0, start, delta_codec="none"))
    assert device._global.version == 0 and topics.global_model in conn.subscribed
    conn.granted_topics.discard(topics.delta_model)  # an ACL written before the deltas
    device._handle(topics.global_model, full_message(device, 1, start))
    assert device._global.version == 1 and topics.global_model in conn.subscribed


def test_a_task_for_a_version_the_device_does_not_hold_fetches_the_full_model(device: Any) -> None:
    topics, conn = device.topics, device._conn
    start = {spec.name: np.zeros(spec.shape, np.float32) for spec in device_specs(device)}
    device._handle(topics.global_model, full_message(device, 5, start))
    assert topics.global_model not in conn.subscribed
    # A coordinator started again from version 0 (its retained delta cleared): the task waits for the full model.
    task = TrainTask("t-1", 1, 0, device._model.artifact_id, time.time() + 60, 1, 0.05, 5.0, 1)
    device._newest_task = task.task_id
    device._handle(topics.task("u1"), encode(task))
    assert device._waiting == task and topics.global_model in conn.subscribed
    assert not any(topic == topics.report("u1") for topic, _ in conn.published)  # not reported failed


def test_a_delta_that_catches_up_with_a_waiting_task_ends_the_full_model_fetch(device: Any) -> None:
    """A task for version 1 overtook version 1's delta: the device asks for the full model, but the delta arrives
    first, brings it to version 1, starts the task, and the device goes back to following only the deltas."""
    topics, conn = device.topics, device._conn
    start = {spec.name: np.zeros(spec.shape, np.float32) for spec in device_specs(device)}
    device._handle(topics.global_model, full_message(device, 0, start))
    task = TrainTask("t-1", 2, 1, device._model.artifact_id, time.time() + 60, 1, 0.05, 5.0, 1)
    device._newest_task = task.task_id
    device._handle(topics.task("u1"), encode(task))
    assert device._waiting == task and topics.global_model in conn.subscribed
    payload, _ = delta_message(device, start, 1, nudged(start, 1 / 64))
    device._handle(topics.delta_model, payload)
    assert device._global.version == 1 and device._waiting is None
    assert topics.global_model not in conn.subscribed
    assert any(topic == topics.update("u1") for topic, _ in conn.published)  # the task ran on version 1


# --- a federation through the real broker --------------------------------------------------------------


@dataclass
class Running:
    agent: Any
    stop: threading.Event
    thread: threading.Thread


@pytest.mark.broker
@pytest.mark.usefixtures("stop_processes")
def test_a_federation_with_an_int8_downlink_follows_the_deltas(federation_files: FederationFiles, tmp_path: Path,
                                                                federation: str) -> None:
    from edge_runtime.agent import AgentConfig, DeviceAgent
    from edge_runtime.broker_args import mqtt_options
    from tests.federation_tools import SYSTEM_BROKER, LineReader, Watcher, coordinator_command, start, wait_until

    topics = Topics(federation)
    fleet: list[Running] = []
    for i in range(3):
        data = np.load(federation_files.devices[i])
        config = AgentConfig(f"d{i}", Dataset(data["x"], data["y"]),
                             mqtt_options(SYSTEM_BROKER, f"{federation}-d{i}"), tmp_path / f"cache-{i}",
                             topics, num_threads=1)
        agent, stop = DeviceAgent(config), threading.Event()
        thread = threading.Thread(target=agent.run, args=(stop,), daemon=True)
        thread.start()
        fleet.append(Running(agent, stop, thread))
    watcher = Watcher(SYSTEM_BROKER, [topics.global_model])
    try:
        for device in fleet:
            assert device.agent.ready.wait(30)
        coord = start(coordinator_command(federation_files, tmp_path, federation, SYSTEM_BROKER, "--rounds", "3",
                                          "--fraction", "1", "--min-clients", "3", "--min-reports", "2",
                                          "--over-select", "1", "--round-timeout", "30", "--eval-every", "0",
                                          "--downlink-codec", "int8", "--expect-devices", "3"),
                      tmp_path / "coordinator.log")
        reader = LineReader(coord)
        lines = [reader.next(90) for _ in range(3)]
        assert coord.wait(30) == 0
        assert [line["status"] for line in lines] == ["committed"] * 3, lines
        wait_until(lambda: all(d.agent._global is not None and d.agent._global.version == 3 for d in fleet), 30,
                   "every device to hold version 3")
        final = watcher.wait_for(topics.global_model, lambda p: decode_header(p, GlobalHeader, 10**7).version == 3)
        _, published_weights = decode_tensors(final, GlobalHeader, 10**7)
        for device in fleet:
            stats = device.agent.stats
            assert stats.deltas_applied == 3 and stats.deltas_refused == 0, stats
            assert stats.full_model_bytes == len(final)  # the full model once, at start (all versions are one size)
            assert stats.delta_bytes < 0.35 * stats.full_model_bytes * 3  # int8: a quarter of the bytes, and a header
            assert device.agent._global_bytes < 0.35 * len(final)  # what the last version cost to download
            for name, value in published_weights.items():  # the same bits as the published full model
                assert device.agent._global.weights[name].tobytes() == value.tobytes()
    finally:
        watcher.close()
        for device in fleet:
            device.stop.set()
        for device in fleet:
            device.thread.join(15)


@pytest.mark.broker
def test_a_connection_subscribes_and_unsubscribes_while_it_runs(federation: str) -> None:
    from edge_runtime.broker_args import mqtt_options
    from edge_runtime.mqtt import MqttConnection
    from tests.federation_tools import SYSTEM_BROKER, Watcher, wait_until

    topics = Topics(federation)
    got: list[tuple[str, bytes]] = []
    watcher = Watcher(SYSTEM_BROKER)
    watcher.publish(topics.global_model, b"full 1", retain=True)
    conn = MqttConnection(mqtt_options(SYSTEM_BROKER, f"{federation}-conn"), [(topics.delta_model, 1)],
                          lambda topic, payload: got.append((topic, payload)))
    try:
        conn.start()
        assert conn.subscribed.wait(10) and conn.granted(topics.delta_model)
        assert not conn.granted(topics.global_model)
        conn.subscribe(topics.global_model)  # the broker sends the retained message at once
        wait_until(lambda: (topics.global_model, b"full 1") in got, 10, "the retained full model")
        wait_until(lambda: conn.granted(topics.global_model), 10, "the SUBACK")
        assert dict(conn.subscriptions) == {topics.delta_model: 1, topics.global_model: 1}
        conn.unsubscribe(topics.global_model)
        assert not conn.granted(topics.global_model)
        conn.flush()
        time.sleep(0.3)  # the UNSUBSCRIBE reaches the broker before the next publish
        watcher.publish(topics.global_model, b"full 2", retain=True)
        watcher.publish(topics.delta_model, b"delta 2", retain=True)
        wait_until(lambda: (topics.delta_model, b"delta 2") in got, 10, "the delta")
        assert (topics.global_model, b"full 2") not in got
    finally:
        conn.close()
        watcher.close()


def test_bytes_down_count_the_delta_for_a_device_whose_status_holds_the_version_before() -> None:
    m, _ = machine("int8", round_interval=100.0)
    effects = run_rounds(m, 1)  # round 1 commits version 1; round 2 waits for the interval
    messages = published(effects)
    delta = [p for t, p in messages if t == TOPICS.delta_model and p][-1]
    full = [p for t, p in messages if t == TOPICS.global_model][-1]
    held = dict(zip(DEVICES, (1, 0, -1), strict=True))  # applied the delta; about to; new (or away)
    for device, version in held.items():
        m.receive(TOPICS.status(device), encode(DeviceStatus(device, True, True, artifact_id=AID,
                                                             model_version=version)), at(50.0))
    step = m.tick(at(200.0))
    sent = tasks_in(step)
    task_bytes = {device: len(p) for t, p in published(step) if t.endswith("/task") and p
                  for device in [t.split("/")[-2]]}
    expected = sum(task_bytes[d] + (len(delta) if held[d] in (0, 1) else len(full)) for d in sent)
    line = None
    for i, device in enumerate(sorted(sent)[:2]):
        for effect in m.receive(*an_update(sent[device], device, 90 + i), at(201.0 + i)):
            line = effect.line if isinstance(effect, Line) else line
    assert line is not None and line["round"] == 2
    assert line["bytes_down"] == expected
    assert {held[d] for d in sent} == {1, 0, -1}  # all three cases were counted
