"""The wire protocol, with no broker: topics, JSON control messages, safetensors messages, artifact bundles.

Expected values are written out by hand (topic strings, wire JSON, safetensors metadata, sha256 digests);
every refusal is checked for ``ProtocolError`` and its stable ``reason`` code.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save

from edge_runtime.errors import EdgeRuntimeError, ProtocolError
from edge_runtime.protocol import (
    MALFORMED,
    MAX_CONTROL_BYTES,
    OVERSIZED,
    PROTOCOL_VERSION,
    WRONG_PROTOCOL,
    ArtifactHeader,
    CoordinatorState,
    DeviceStatus,
    EvaluateTask,
    EvaluationReport,
    GlobalHeader,
    TaskFailed,
    Topics,
    TrainTask,
    UpdateHeader,
    artifact_id,
    bundle_files,
    decode,
    decode_tensors,
    encode,
    encode_tensors,
    kind_of,
    unbundle_files,
)

AID = "ab" * 32
LIMIT = 1 << 20


def assert_refused(call: Callable[[], object], reason: str, *mentions: str) -> ProtocolError:
    """``call()`` raises ProtocolError with ``reason``, and its problem mentions every string of ``mentions``."""
    with pytest.raises(ProtocolError) as info:
        call()
    assert info.value.reason == reason, info.value.problem
    for text in mentions:
        assert text in info.value.problem
    return info.value


def test_reason_codes_and_error_class() -> None:
    assert (MALFORMED, OVERSIZED, WRONG_PROTOCOL) == ("malformed", "oversized", "wrong_protocol")
    assert PROTOCOL_VERSION == 1
    assert MAX_CONTROL_BYTES == 65536
    assert issubclass(ProtocolError, EdgeRuntimeError)
    error = ProtocolError(OVERSIZED, "too big", topic="edgefl/x/updates/d")
    assert (error.reason, error.problem, error.topic) == ("oversized", "too big", "edgefl/x/updates/d")
    assert str(error) == "edgefl/x/updates/d: too big"


# --- topics -------------------------------------------------------------------------------------


def test_topic_strings_of_a_federation() -> None:
    topics = Topics("lab-1")
    assert topics.root == "edgefl/lab-1"
    assert topics.artifact == "edgefl/lab-1/model/artifact"
    assert topics.global_model == "edgefl/lab-1/model/global"
    assert topics.coordinator == "edgefl/lab-1/coordinator/state"
    assert topics.status("pi-07") == "edgefl/lab-1/devices/pi-07/status"
    assert topics.task("pi-07") == "edgefl/lab-1/devices/pi-07/task"
    assert topics.update("pi-07") == "edgefl/lab-1/updates/pi-07"
    assert topics.report("pi-07") == "edgefl/lab-1/reports/pi-07"
    assert topics.secure_in("pi-07") == "edgefl/lab-1/secagg/pi-07"
    assert topics.secure_out("pi-07") == "edgefl/lab-1/devices/pi-07/secagg"
    assert topics.coordinator_subscriptions() == (
        ("edgefl/lab-1/devices/+/status", 0), ("edgefl/lab-1/updates/+", 1), ("edgefl/lab-1/reports/+", 1),
        ("edgefl/lab-1/secagg/+", 1),
    )
    assert topics.device_subscriptions("pi-07") == (
        ("edgefl/lab-1/model/artifact", 1), ("edgefl/lab-1/model/global", 1), ("edgefl/lab-1/model/delta", 1),
        ("edgefl/lab-1/coordinator/state", 1), ("edgefl/lab-1/devices/pi-07/task", 1),
        ("edgefl/lab-1/devices/pi-07/secagg", 1),
    )
    assert topics.sender("edgefl/lab-1/secagg/pi-07") == ("secagg", "pi-07")


def test_default_federation() -> None:
    assert Topics().root == "edgefl/default"
    assert Topics().update("a") == "edgefl/default/updates/a"


@pytest.mark.parametrize("name", ["a", "A.z_9-", "x" * 64, "..", "-"])
def test_valid_names(name: str) -> None:
    assert Topics(name).root == f"edgefl/{name}"
    assert Topics().status(name) == f"edgefl/default/devices/{name}/status"


BAD_NAMES = ["", "a/b", "a+b", "+", "#", "lab#", "x" * 65, "a b", "tab\t", "line\n", "é", "a\x00"]


@pytest.mark.parametrize("name", [*BAD_NAMES, 5, None], ids=repr)
def test_invalid_federation_is_refused(name: Any) -> None:
    assert_refused(lambda: Topics(name), MALFORMED, "federation name", repr(name))


@pytest.mark.parametrize("method", ["status", "task", "update", "report", "device_subscriptions"])
@pytest.mark.parametrize("device_id", BAD_NAMES, ids=repr)
def test_invalid_device_id_is_refused(method: str, device_id: str) -> None:
    assert_refused(lambda: getattr(Topics("lab"), method)(device_id), MALFORMED, "device id", repr(device_id))


@pytest.mark.parametrize(("topic", "expected"), [
    ("edgefl/lab/devices/pi-07/status", ("status", "pi-07")),
    ("edgefl/lab/updates/pi-07", ("update", "pi-07")),
    ("edgefl/lab/reports/pi-07", ("report", "pi-07")),
    ("edgefl/lab/reports/" + "x" * 64, ("report", "x" * 64)),
    # topics a device does not publish on, or that the coordinator publishes
    ("edgefl/lab/devices/pi-07/task", None),
    ("edgefl/lab/model/global", None),
    ("edgefl/lab/model/artifact", None),
    ("edgefl/lab/coordinator/state", None),
    # other federations and foreign topics
    ("edgefl/other/updates/pi-07", None),
    ("edgefl/lab-2/updates/pi-07", None),
    ("edgefl/la/updates/pi-07", None),
    ("other/lab/updates/pi-07", None),
    ("lab/updates/pi-07", None),
    ("$SYS/broker/uptime", None),
    ("", None),
    ("edgefl", None),
    ("edgefl/lab", None),
    ("edgefl/lab/", None),
    # malformed
    ("edgefl/lab/updates", None),
    ("edgefl/lab/updates/", None),
    ("edgefl/lab/updates/pi-07/", None),
    ("edgefl/lab/updates/pi-07/extra", None),
    ("edgefl/lab/updates/+", None),
    ("edgefl/lab/updates/a#", None),
    ("edgefl/lab/updates/" + "x" * 65, None),
    ("edgefl/lab/devices/pi-07", None),
    ("edgefl/lab/devices//status", None),
    ("edgefl/lab/devices/+/status", None),
    ("edgefl/lab/devices/pi-07/status/", None),
    ("edgefl/lab/devices/pi-07/status/x", None),
    ("edgefl/lab/update/pi-07", None),
    ("edgefl/lab/report/pi-07", None),
    ("edgefl/lab/device/pi-07/status", None),
    ("/edgefl/lab/updates/pi-07", None),
    ("edgefl//lab/updates/pi-07", None),
])
def test_sender(topic: str, expected: tuple[str, str] | None) -> None:
    assert Topics("lab").sender(topic) == expected


def test_sender_inverts_the_topic_builders() -> None:
    topics = Topics("lab.2")
    assert topics.sender(topics.status("d_1")) == ("status", "d_1")
    assert topics.sender(topics.update("d_1")) == ("update", "d_1")
    assert topics.sender(topics.report("d_1")) == ("report", "d_1")
    assert topics.sender(topics.task("d_1")) is None
    assert Topics("lab").sender(topics.update("d_1")) is None


# --- JSON control messages ----------------------------------------------------------------------

STATUS = DeviceStatus("pi-07", online=True, eligible=False, reasons=("battery", "metered"), examples=120,
                      artifact_id=AID, model_version=3, backend="ai_edge_litert", sent_at=1700000000.25,
                      codecs=("float32", "int8", "topk"), link="cellular")
TRAIN = TrainTask("t-4-pi-07", round=4, model_version=3, artifact_id=AID, deadline=1700000060.5, epochs=2,
                  lr=0.05, clip_norm=1.0, seed=-7, codec="float16", max_examples=512, mu=0.01)
EVALUATE = EvaluateTask("e-5", round=5, model_version=4, artifact_id=AID, deadline=1700000120.0)
FAILED = TaskFailed("pi-07", "t-4-pi-07", round=4, outcome="interrupted", reason="charger unplugged")
REPORT = EvaluationReport("pi-07", "e-5", round=5, model_version=4, examples=30, loss_sum=12.5, correct=27,
                          personalized_loss_sum=4.25, personalized_correct=29)
STATE = CoordinatorState(round=5, phase="evaluating", model_version=4, artifact_id=AID, updated_at=1700000100.125)

# Each message next to its wire form, written out by hand.
WIRE: list[tuple[Any, dict[str, Any]]] = [
    (STATUS, {"protocol": 1, "kind": "status", "device_id": "pi-07", "online": True, "eligible": False,
              "reasons": ["battery", "metered"], "examples": 120, "artifact_id": AID, "model_version": 3,
              "backend": "ai_edge_litert", "sent_at": 1700000000.25, "codecs": ["float32", "int8", "topk"],
              "link": "cellular"}),
    (TRAIN, {"protocol": 1, "kind": "train", "task_id": "t-4-pi-07", "round": 4, "model_version": 3,
             "artifact_id": AID, "deadline": 1700000060.5, "epochs": 2, "lr": 0.05, "clip_norm": 1.0, "seed": -7,
             "codec": "float16", "max_examples": 512, "mu": 0.01}),
    (EVALUATE, {"protocol": 1, "kind": "evaluate", "task_id": "e-5", "round": 5, "model_version": 4,
                "artifact_id": AID, "deadline": 1700000120.0}),
    (FAILED, {"protocol": 1, "kind": "failed", "device_id": "pi-07", "task_id": "t-4-pi-07", "round": 4,
              "outcome": "interrupted", "reason": "charger unplugged"}),
    (REPORT, {"protocol": 1, "kind": "evaluation", "device_id": "pi-07", "task_id": "e-5", "round": 5,
              "model_version": 4, "examples": 30, "loss_sum": 12.5, "correct": 27, "personalized_loss_sum": 4.25,
              "personalized_correct": 29}),
    (STATE, {"protocol": 1, "kind": "coordinator", "round": 5, "phase": "evaluating", "model_version": 4,
             "artifact_id": AID, "updated_at": 1700000100.125}),
]
WIRE_IDS = [kind_of(type(m)) for m, _ in WIRE]
ALL_CONTROL = tuple(type(m) for m, _ in WIRE)
REQUIRED = {
    DeviceStatus: ("device_id", "online", "eligible"),
    TrainTask: ("task_id", "round", "model_version", "artifact_id", "deadline", "epochs", "lr", "clip_norm", "seed"),
    EvaluateTask: ("task_id", "round", "model_version", "artifact_id", "deadline"),
    TaskFailed: ("device_id", "task_id", "round", "outcome", "reason"),
    EvaluationReport: ("device_id", "task_id", "round", "model_version", "examples", "loss_sum", "correct"),
    CoordinatorState: ("round", "phase", "model_version", "artifact_id", "updated_at"),
}


def wire(cls: type[Any], **changes: Any) -> bytes:
    """The hand-written wire form of ``cls``'s example, with ``changes`` (a value of ``...`` drops the key)."""
    body = dict(next(w for m, w in WIRE if type(m) is cls))
    for key, value in changes.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return json.dumps(body).encode()


def canonical(value: Any) -> str:
    """JSON text with sorted keys: unlike ``==`` on dicts, tells ``true`` from ``1`` and ``1.0`` from ``1``."""
    return json.dumps(value, sort_keys=True)


def test_kinds() -> None:
    assert [kind_of(c) for c in ALL_CONTROL] == ["status", "train", "evaluate", "failed", "evaluation", "coordinator"]
    assert [kind_of(c) for c in (UpdateHeader, GlobalHeader, ArtifactHeader)] == ["update", "global", "artifact"]


@pytest.mark.parametrize("cls", ALL_CONTROL, ids=WIRE_IDS)
def test_required_fields_are_the_documented_ones(cls: type[Any]) -> None:
    required = tuple(f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)
    assert required == REQUIRED[cls]


@pytest.mark.parametrize(("message", "expected"), WIRE, ids=WIRE_IDS)
def test_encode_writes_the_wire_form(message: Any, expected: dict[str, Any]) -> None:
    payload = encode(message)
    assert canonical(json.loads(payload)) == canonical(expected)
    assert payload.startswith(b'{"protocol":1,')
    assert payload == json.dumps(json.loads(payload), separators=(",", ":")).encode()  # compact separators


@pytest.mark.parametrize(("message", "body"), WIRE, ids=WIRE_IDS)
def test_decode_reads_the_wire_form(message: Any, body: dict[str, Any]) -> None:
    decoded = decode(json.dumps(body).encode(), type(message))
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize("message", [m for m, _ in WIRE], ids=WIRE_IDS)
def test_round_trip(message: Any) -> None:
    assert decode(encode(message), type(message)) == message
    assert decode(encode(message), ALL_CONTROL) == message


def test_round_trip_of_awkward_values() -> None:
    status = DeviceStatus("d", online=False, eligible=True, reasons=(), examples=0, artifact_id="",
                          backend="\u00e9\u4e2d\U0001f600 \"quoted\" \\ \n", sent_at=5e-324)
    assert decode(encode(status), DeviceStatus) == status
    failed = TaskFailed("d", "t", -1, "failed", "x" * 1024)
    assert decode(encode(failed), TaskFailed) == failed
    state = CoordinatorState(2**62, "finished", -(2**62), AID, 1.7976931348623157e308)
    assert decode(encode(state), CoordinatorState) == state


def test_defaults_fill_absent_optional_fields() -> None:
    payload = b'{"protocol":1,"kind":"status","device_id":"pi-07","online":false,"eligible":true}'
    decoded = decode(payload, DeviceStatus)
    assert decoded == DeviceStatus("pi-07", online=False, eligible=True)
    assert (decoded.reasons, decoded.examples, decoded.artifact_id, decoded.model_version) == ((), 0, "", -1)
    assert (decoded.backend, decoded.sent_at, decoded.codecs, decoded.link) == ("", 0.0, (), "")


def test_reasons_decode_to_a_tuple() -> None:
    decoded = decode(wire(DeviceStatus), DeviceStatus)
    assert decoded.reasons == ("battery", "metered")
    assert isinstance(decoded.reasons, tuple)


@pytest.mark.parametrize(("cls", "field", "value"), [
    (TrainTask, "lr", 1), (TrainTask, "deadline", 1700000060), (CoordinatorState, "updated_at", 0),
    (EvaluationReport, "loss_sum", 10**300),
])
def test_float_field_accepts_a_json_integer(cls: type[Any], field: str, value: int) -> None:
    decoded = getattr(decode(wire(cls, **{field: value}), cls), field)
    assert type(decoded) is float
    assert decoded == float(value)


def test_unknown_keys_are_ignored() -> None:
    payload = wire(TrainTask, priority="high", extra={"nested": [1, 2, None]}, round_hint=9.5)
    assert decode(payload, TrainTask) == TRAIN


def test_decode_accepts_any_kind_of_a_tuple() -> None:
    assert decode(encode(TRAIN), (TrainTask, EvaluateTask)) == TRAIN
    assert decode(encode(EVALUATE), (TrainTask, EvaluateTask)) == EVALUATE
    assert decode(encode(FAILED), (TaskFailed, EvaluationReport)) == FAILED


def test_limit_is_inclusive() -> None:
    payload = encode(STATE)
    assert decode(payload, CoordinatorState, limit=len(payload)) == STATE
    assert_refused(lambda: decode(payload, CoordinatorState, limit=len(payload) - 1), OVERSIZED,
                   str(len(payload)), str(len(payload) - 1))


def test_default_limit_is_64_kib() -> None:
    payload = encode(STATE)
    padded = payload[:-1] + b" " * (MAX_CONTROL_BYTES - len(payload)) + b"}"
    assert len(padded) == MAX_CONTROL_BYTES
    assert decode(padded, CoordinatorState) == STATE
    padded = payload[:-1] + b" " * (MAX_CONTROL_BYTES + 1 - len(payload)) + b"}"
    assert_refused(lambda: decode(padded, CoordinatorState), OVERSIZED, "65537", "65536")


@pytest.mark.parametrize("payload", [
    b"\xff" * (MAX_CONTROL_BYTES + 1),  # not UTF-8, but the size is checked first
    b"[" * (MAX_CONTROL_BYTES + 1),
    b"x" * (10 * MAX_CONTROL_BYTES),
], ids=["invalid-bytes", "brackets", "ten-times"])
def test_oversized_is_refused_before_parsing(payload: bytes) -> None:
    assert_refused(lambda: decode(payload, ALL_CONTROL), OVERSIZED)


@pytest.mark.parametrize("payload", [
    b"",
    b"   ",
    b"hello",
    b"{",
    b'{"protocol":1,}',
    b"{'protocol': 1}",
    b'{"protocol":1,"kind":"train"} trailing',
    b'\xef\xbb\xbf{"protocol":1,"kind":"status"}',  # UTF-8 byte order mark
    b'{"protocol":1,"kind":"\xff"}',  # not UTF-8
    b'{"protocol":1,"kind":"status","device_id":"\xc3"}',  # truncated UTF-8 sequence
    "{\"protocol\":1}".encode("utf-16"),
    b"[]",
    b'[{"protocol":1,"kind":"train"}]',
    b'"status"',
    b"1",
    b"null",
    b"true",
], ids=repr)
def test_not_a_json_object_is_malformed(payload: bytes) -> None:
    assert_refused(lambda: decode(payload, ALL_CONTROL), MALFORMED)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(("cls", "field"), [(CoordinatorState, "updated_at"), (TrainTask, "lr"), (TrainTask, "round")])
def test_nan_and_infinity_constants_are_malformed(constant: str, cls: type[Any], field: str) -> None:
    payload = wire(cls, **{field: 0}).replace(f'"{field}": 0'.encode(), f'"{field}": {constant}'.encode())
    assert constant.encode() in payload
    assert_refused(lambda: decode(payload, cls), MALFORMED, constant)


def test_nan_constant_in_an_unknown_key_is_malformed() -> None:
    payload = wire(TrainTask)[:-1] + b', "future": NaN}'
    assert_refused(lambda: decode(payload, TrainTask), MALFORMED)


@pytest.mark.parametrize("number", ["1e400", "-1e400"])
def test_float_overflowing_to_infinity_is_malformed(number: str) -> None:
    payload = wire(CoordinatorState, updated_at=0).replace(b'"updated_at": 0', f'"updated_at": {number}'.encode())
    assert_refused(lambda: decode(payload, CoordinatorState), MALFORMED, "'updated_at'")


@pytest.mark.parametrize("version", [..., 0, 2, -1, "1", None, [1], {"v": 1}, 1.5], ids=repr)
def test_missing_or_wrong_protocol_version(version: Any) -> None:
    assert_refused(lambda: decode(wire(TrainTask, protocol=version), TrainTask), WRONG_PROTOCOL, "protocol")


def test_protocol_is_checked_before_kind() -> None:
    assert_refused(lambda: decode(b'{"protocol":2,"kind":"future"}', TrainTask), WRONG_PROTOCOL, "2")
    assert_refused(lambda: decode(b'{"kind":"train"}', TrainTask), WRONG_PROTOCOL)


def test_boolean_protocol_version_is_refused() -> None:
    assert_refused(lambda: decode(wire(TrainTask, protocol=True), TrainTask), WRONG_PROTOCOL)


@pytest.mark.parametrize("kind", [..., "bogus", "", "TRAIN", "update", "global", "artifact", 5, None, ["train"],
                                  {"kind": "train"}], ids=repr)
def test_unknown_or_missing_kind_is_malformed(kind: Any) -> None:
    assert_refused(lambda: decode(wire(TrainTask, kind=kind), ALL_CONTROL), MALFORMED, "kind")


@pytest.mark.parametrize(("message", "expected", "names"), [
    (TRAIN, EvaluateTask, ["'train'", "evaluate"]),
    (EVALUATE, TrainTask, ["'evaluate'", "train"]),
    (STATUS, (TrainTask, EvaluateTask), ["'status'", "train", "evaluate"]),
    (STATE, (TaskFailed, EvaluationReport), ["'coordinator'", "failed", "evaluation"]),
    (REPORT, DeviceStatus, ["'evaluation'", "status"]),
    (FAILED, CoordinatorState, ["'failed'", "coordinator"]),
], ids=["train-as-evaluate", "evaluate-as-train", "status-as-task", "state-as-report", "report-as-status",
        "failed-as-state"])
def test_kind_outside_the_expected_set_is_malformed(message: Any, expected: Any, names: list[str]) -> None:
    assert_refused(lambda: decode(encode(message), expected), MALFORMED, *names)


@pytest.mark.parametrize(("cls", "field"), [(c, f) for c, names in REQUIRED.items() for f in names],
                         ids=lambda v: v if isinstance(v, str) else kind_of(v))
def test_missing_required_field_is_malformed(cls: type[Any], field: str) -> None:
    error = assert_refused(lambda: decode(wire(cls, **{field: ...}), cls), MALFORMED, repr(field), "missing")
    assert "kind" not in error.problem


@pytest.mark.parametrize(("cls", "field", "value"), [
    # bool where int is expected, and other non-integers
    (TrainTask, "round", True),
    (TrainTask, "epochs", False),
    (TrainTask, "round", 4.0),
    (TrainTask, "seed", "7"),
    (TrainTask, "model_version", None),
    (EvaluationReport, "examples", [30]),
    (EvaluationReport, "correct", {"n": 27}),
    # string or bool where float is expected
    (TrainTask, "lr", "0.05"),
    (TrainTask, "clip_norm", True),
    (EvaluationReport, "loss_sum", None),
    (CoordinatorState, "updated_at", [1.0]),
    # int or string where bool is expected
    (DeviceStatus, "online", 1),
    (DeviceStatus, "eligible", "false"),
    (DeviceStatus, "online", None),
    # not a list of strings
    (DeviceStatus, "reasons", ["battery", 1]),
    (DeviceStatus, "reasons", [["battery"]]),
    (DeviceStatus, "reasons", [None]),
    (DeviceStatus, "reasons", "battery"),
    (DeviceStatus, "reasons", {"battery": True}),
    (DeviceStatus, "reasons", None),
    # not a string, or longer than 1024 characters
    (DeviceStatus, "device_id", 7),
    (DeviceStatus, "backend", None),
    (TaskFailed, "reason", ["x"]),
    (TaskFailed, "reason", "x" * 1025),
    (TrainTask, "artifact_id", "a" * 2000),
    # Literal fields with a value outside the set
    (TaskFailed, "outcome", "crashed"),
    (TaskFailed, "outcome", "FAILED"),
    (TaskFailed, "outcome", ""),
    (TaskFailed, "outcome", None),
    (TaskFailed, "outcome", ["failed"]),
    (CoordinatorState, "phase", "paused"),
    (CoordinatorState, "phase", 1),
    (CoordinatorState, "phase", True),
], ids=repr)
def test_wrong_field_type_is_malformed(cls: type[Any], field: str, value: Any) -> None:
    assert_refused(lambda: decode(wire(cls, **{field: value}), cls), MALFORMED, repr(field))


def test_string_of_1024_characters_is_accepted() -> None:
    assert decode(wire(TaskFailed, reason="x" * 1024), TaskFailed).reason == "x" * 1024


@pytest.mark.parametrize(("cls", "field"), [(TrainTask, "round"), (CoordinatorState, "updated_at")])
def test_integer_beyond_float_range_is_malformed(cls: type[Any], field: str) -> None:
    assert_refused(lambda: decode(wire(cls, **{field: 10**400}), cls), MALFORMED, repr(field))


@pytest.mark.parametrize("payload", [b"[" * 50_000, b'{"a":' * 10_000, wire(TrainTask)[:-1] + b', "x":'
                                     + b"[" * 5_000 + b"]" * 5_000 + b"}"], ids=["array", "object", "extra-key"])
def test_deeply_nested_json_is_malformed(payload: bytes) -> None:
    assert len(payload) <= MAX_CONTROL_BYTES
    assert_refused(lambda: decode(payload, ALL_CONTROL), MALFORMED)


# --- safetensors messages -----------------------------------------------------------------------

UPDATE = UpdateHeader("pi-07", "t-4-pi-07", round=4, model_version=3, examples=120, train_loss=0.6931471805599453,
                      norm=2.5, codec="float16")
GLOBAL = GlobalHeader(version=4, round=4, artifact_id=AID)
UPDATE_METADATA = {"protocol": "1", "kind": "update", "device_id": "pi-07", "task_id": "t-4-pi-07", "round": "4",
                   "model_version": "3", "examples": "120", "train_loss": "0.6931471805599453", "norm": "2.5",
                   "codec": "float16"}
GLOBAL_METADATA = {"protocol": "1", "kind": "global", "version": "4", "round": "4", "artifact_id": AID}


def float32_tensors() -> dict[str, np.ndarray]:
    f32 = np.finfo(np.float32)
    special = [0.0, -0.0, 1.0, -1.5, float(f32.tiny), 1e-45, float(f32.max), -float(f32.max), np.inf, -np.inf]
    return {
        "dense_0_kernel": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32),
        "dense_0_bias": np.array(special, np.float32),
        "nan_payloads": np.array([0x7FC00000, 0x7FC00001, 0xFFC00000], np.uint32).view(np.float32),
        "empty": np.zeros((0, 5), np.float32),
    }


def assert_bit_exact(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for name, value in expected.items():
        assert actual[name].dtype == value.dtype, name
        assert actual[name].shape == value.shape, name
        assert actual[name].tobytes() == value.tobytes(), name


def split(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """A safetensors payload's JSON header and its data."""
    (length,) = struct.unpack("<Q", payload[:8])
    return json.loads(payload[8: 8 + length]), payload[8 + length:]


def join(header: Any, data: bytes) -> bytes:
    """A safetensors payload from a JSON header (padded to 8 bytes) and data."""
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def with_metadata(payload: bytes, **changes: Any) -> bytes:
    """``payload`` with its ``__metadata__`` changed (a value of ``...`` drops the key)."""
    header, data = split(payload)
    metadata = dict(header["__metadata__"])
    for key, value in changes.items():
        if value is ...:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    header["__metadata__"] = metadata
    return join(header, data)


def update_payload() -> bytes:
    return encode_tensors(UPDATE, float32_tensors())


def test_update_metadata_is_the_header_as_strings() -> None:
    header, _ = split(update_payload())
    assert header["__metadata__"] == UPDATE_METADATA
    assert (header["dense_0_kernel"]["dtype"], header["dense_0_kernel"]["shape"]) == ("F32", [3, 4])
    assert (header["empty"]["dtype"], header["empty"]["shape"]) == ("F32", [0, 5])


def test_global_metadata_is_the_header_as_strings() -> None:
    header, _ = split(encode_tensors(GLOBAL, {"w": np.ones(2, np.float32)}))
    metadata = {**GLOBAL_METADATA, "sha256": "", "delta_codec": "none"}  # the defaults of the downlink's fields
    assert header == {"__metadata__": metadata, "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(("header", "metadata"), [(UPDATE, UPDATE_METADATA), (GLOBAL, GLOBAL_METADATA)],
                         ids=["update", "global"])
def test_decode_reads_hand_written_metadata(header: Any, metadata: dict[str, str]) -> None:
    tensors = float32_tensors()
    table, data = split(save(tensors))  # tensors only, no __metadata__
    decoded, decoded_tensors = decode_tensors(join({"__metadata__": metadata, **table}, data), type(header), LIMIT)
    assert decoded == header
    assert_bit_exact(decoded_tensors, tensors)


@pytest.mark.parametrize("header", [UPDATE, GLOBAL], ids=["update", "global"])
def test_tensor_round_trip_is_bit_exact(header: Any) -> None:
    tensors = float32_tensors()
    decoded, decoded_tensors = decode_tensors(encode_tensors(header, tensors), type(header), LIMIT)
    assert type(decoded) is type(header)
    assert decoded == header
    assert_bit_exact(decoded_tensors, tensors)


def test_scalar_tensor_keeps_its_shape() -> None:
    _, tensors = decode_tensors(encode_tensors(GLOBAL, {"step": np.array(3.25, np.float32)}), GlobalHeader, LIMIT)
    assert tensors["step"].shape == ()


def test_tensor_message_without_tensors() -> None:
    assert decode_tensors(encode_tensors(GLOBAL, {}), GlobalHeader, LIMIT) == (GLOBAL, {})


@pytest.mark.parametrize("value", [0.1, 1 / 3, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, -0.0, 0.0,
                                   -12.75, 1e16 + 2, 9007199254740993.0], ids=repr)
def test_float_header_fields_round_trip_exactly(value: float) -> None:
    header = UpdateHeader("d", "t", 1, 1, 1, train_loss=value, norm=-value)
    decoded, _ = decode_tensors(encode_tensors(header, {}), UpdateHeader, LIMIT)
    assert struct.pack("<d", decoded.train_loss) == struct.pack("<d", value)
    assert struct.pack("<d", decoded.norm) == struct.pack("<d", -value)


@pytest.mark.parametrize("value", [0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63 - 1)], ids=repr)
def test_int_header_fields_round_trip_exactly(value: int) -> None:
    header = UpdateHeader("d", "t", round=value, model_version=-value, examples=value, train_loss=0.0, norm=0.0)
    decoded, _ = decode_tensors(encode_tensors(header, {}), UpdateHeader, LIMIT)
    assert (decoded.round, decoded.model_version, decoded.examples) == (value, -value, value)
    assert type(decoded.round) is int
    global_header = GlobalHeader(version=value, round=value, artifact_id="x")
    assert decode_tensors(encode_tensors(global_header, {}), GlobalHeader, LIMIT)[0] == global_header


def test_float_field_accepts_an_integer_in_metadata() -> None:
    decoded, _ = decode_tensors(with_metadata(update_payload(), train_loss="3", norm="0"), UpdateHeader, LIMIT)
    assert (decoded.train_loss, decoded.norm) == (3.0, 0.0)
    assert type(decoded.train_loss) is float


def test_unknown_metadata_keys_are_ignored() -> None:
    payload = with_metadata(update_payload(), future="{not json", hint="[1,2]")
    assert decode_tensors(payload, UpdateHeader, LIMIT)[0] == UPDATE


def test_tensor_limit_is_inclusive() -> None:
    payload = update_payload()
    assert decode_tensors(payload, UpdateHeader, len(payload))[0] == UPDATE
    assert_refused(lambda: decode_tensors(payload, UpdateHeader, len(payload) - 1), OVERSIZED, str(len(payload)))


@pytest.mark.parametrize("payload", [b"\xff" * 1025, b"\x00" * 1025, b"\xff" * 7 + b"\x00" * 2000],
                         ids=["ff", "zeros", "short-length"])
def test_oversized_tensor_payload_is_refused_before_parsing(payload: bytes) -> None:
    assert_refused(lambda: decode_tensors(payload, UpdateHeader, 1024), OVERSIZED)


CUTS: dict[str, Callable[[int, int], int]] = {
    "empty": lambda n, total: 0,
    "one-byte": lambda n, total: 1,
    "in-length": lambda n, total: 7,
    "length-only": lambda n, total: 8,
    "in-header": lambda n, total: 8 + n // 2,
    "header-minus-one": lambda n, total: 8 + n - 1,
    "header-only": lambda n, total: 8 + n,
    "at-data-start-plus-5": lambda n, total: 8 + n + 5,
    "in-data": lambda n, total: (8 + n + total) // 2,
    "last-byte-missing": lambda n, total: total - 1,
}


@pytest.mark.parametrize("header", [UPDATE, GLOBAL], ids=["update", "global"])
@pytest.mark.parametrize("cut", CUTS.values(), ids=list(CUTS))
def test_truncated_payload_is_malformed(header: Any, cut: Callable[[int, int], int]) -> None:
    payload = encode_tensors(header, float32_tensors())
    (length,) = struct.unpack("<Q", payload[:8])
    at = cut(length, len(payload))
    assert 0 <= at < len(payload)
    assert_refused(lambda: decode_tensors(payload[:at], type(header), LIMIT), MALFORMED)


@pytest.mark.parametrize("claim", [lambda n, total: total - 7, lambda n, total: total * 2, lambda n, total: 2**63,
                                   lambda n, total: 2**64 - 1], ids=["one-more", "double", "2**63", "max"])
def test_header_length_larger_than_payload_is_malformed(claim: Callable[[int, int], int]) -> None:
    payload = update_payload()
    (length,) = struct.unpack("<Q", payload[:8])
    forged = struct.pack("<Q", claim(length, len(payload))) + payload[8:]
    assert_refused(lambda: decode_tensors(forged, UpdateHeader, LIMIT), MALFORMED, "truncated")


@pytest.mark.parametrize("delta", [-1, -8, 1])
def test_header_length_off_by_some_is_malformed(delta: int) -> None:
    payload = update_payload()
    (length,) = struct.unpack("<Q", payload[:8])
    forged = struct.pack("<Q", length + delta) + payload[8:]
    assert_refused(lambda: decode_tensors(forged, UpdateHeader, LIMIT), MALFORMED)


def test_payload_without_metadata_is_malformed() -> None:
    payload = save(float32_tensors())
    assert "__metadata__" not in split(payload)[0]
    assert_refused(lambda: decode_tensors(payload, UpdateHeader, LIMIT), MALFORMED, "__metadata__")


@pytest.mark.parametrize("header", [
    {"__metadata__": {**GLOBAL_METADATA, "version": 4}},
    {"__metadata__": {**GLOBAL_METADATA, "round": None}},
    {"__metadata__": [GLOBAL_METADATA]},
    {"__metadata__": "protocol=1"},
    {"__metadata__": None},
    [{"__metadata__": GLOBAL_METADATA}],
    "__metadata__",
    None,
], ids=repr)
def test_metadata_that_is_not_a_string_mapping_is_malformed(header: Any) -> None:
    assert_refused(lambda: decode_tensors(join(header, b""), GlobalHeader, LIMIT), MALFORMED, "__metadata__")


@pytest.mark.parametrize("raw", [b"\xff\xfe{}    ", b"not json", b"{" * 8, b'{"__metadata__":{}} x'], ids=repr)
def test_header_that_is_not_json_is_malformed(raw: bytes) -> None:
    payload = struct.pack("<Q", len(raw)) + raw
    assert_refused(lambda: decode_tensors(payload, GlobalHeader, LIMIT), MALFORMED, "not JSON")


@pytest.mark.parametrize(("payload", "expected", "names"), [
    (encode_tensors(GLOBAL, {}), UpdateHeader, ["'global'", "'update'"]),
    (encode_tensors(UPDATE, {}), GlobalHeader, ["'update'", "'global'"]),
    (bundle_files({"manifest.json": b"{}"}, "manifest.json"), GlobalHeader, ["'artifact'", "'global'"]),
    (encode_tensors(GLOBAL, {}), ArtifactHeader, ["'global'", "'artifact'"]),
    (with_metadata(encode_tensors(UPDATE, {}), kind="status"), UpdateHeader, ["'status'"]),
    (with_metadata(encode_tensors(UPDATE, {}), kind="Update"), UpdateHeader, ["'Update'"]),
    (with_metadata(encode_tensors(UPDATE, {}), kind=""), UpdateHeader, ["''"]),
    (with_metadata(encode_tensors(UPDATE, {}), kind=...), UpdateHeader, ["None"]),
], ids=["global-as-update", "update-as-global", "artifact-as-global", "global-as-artifact", "control-kind",
        "wrong-case", "empty", "missing"])
def test_wrong_kind_is_malformed(payload: bytes, expected: type[Any], names: list[str]) -> None:
    assert_refused(lambda: decode_tensors(payload, expected, LIMIT), MALFORMED, "kind", *names)


@pytest.mark.parametrize("version", [..., "2", "0", "01", " 1", "1.0", "", "true"], ids=repr)
def test_wrong_protocol_in_metadata(version: Any) -> None:
    payload = with_metadata(encode_tensors(GLOBAL, {}), protocol=version)
    assert_refused(lambda: decode_tensors(payload, GlobalHeader, LIMIT), WRONG_PROTOCOL, "protocol")


def test_protocol_is_checked_before_kind_in_metadata() -> None:
    payload = with_metadata(encode_tensors(GLOBAL, {}), protocol="2", kind="future")
    assert_refused(lambda: decode_tensors(payload, UpdateHeader, LIMIT), WRONG_PROTOCOL)


@pytest.mark.parametrize(("field", "text"), [
    ("round", "abc"),
    ("round", ""),
    ("round", "4 5"),
    ("round", "NaN"),
    ("examples", "0x10"),
    ("norm", "Infinity"),
    ("norm", "-Infinity"),
    ("train_loss", "nan"),
    ("train_loss", "1,5"),
], ids=repr)
def test_metadata_number_that_is_not_json_is_malformed(field: str, text: str) -> None:
    payload = with_metadata(update_payload(), **{field: text})
    assert_refused(lambda: decode_tensors(payload, UpdateHeader, LIMIT), MALFORMED, repr(field), repr(text))


@pytest.mark.parametrize(("field", "text"), [
    ("round", "true"),
    ("examples", "false"),
    ("model_version", "4.0"),
    ("round", "1.5"),
    ("round", '"4"'),
    ("round", "null"),
    ("round", "[4]"),
    ("examples", '{"n": 1}'),
    ("norm", "true"),
    ("train_loss", '"0.5"'),
    ("norm", "1e400"),
    ("norm", "null"),
], ids=repr)
def test_metadata_json_of_the_wrong_type_is_malformed(field: str, text: str) -> None:
    payload = with_metadata(update_payload(), **{field: text})
    assert_refused(lambda: decode_tensors(payload, UpdateHeader, LIMIT), MALFORMED, repr(field))


def test_string_metadata_is_taken_verbatim() -> None:
    payload = with_metadata(update_payload(), device_id="123", task_id='"quoted"')
    decoded, _ = decode_tensors(payload, UpdateHeader, LIMIT)
    assert (decoded.device_id, decoded.task_id) == ("123", '"quoted"')


@pytest.mark.parametrize("field", ["device_id", "task_id", "round", "model_version", "examples", "train_loss", "norm"])
def test_missing_header_field_is_malformed(field: str) -> None:
    payload = with_metadata(update_payload(), **{field: ...})
    assert_refused(lambda: decode_tensors(payload, UpdateHeader, LIMIT), MALFORMED, repr(field), "missing")


def test_over_long_string_metadata_is_malformed() -> None:
    payload = with_metadata(encode_tensors(GLOBAL, {}), artifact_id="a" * 1025)
    assert_refused(lambda: decode_tensors(payload, GlobalHeader, LIMIT), MALFORMED, "'artifact_id'")


def test_tensor_table_inconsistent_with_data_is_malformed() -> None:
    header, data = split(encode_tensors(GLOBAL, {"w": np.ones(2, np.float32)}))
    header["w"]["shape"] = [3]
    assert_refused(lambda: decode_tensors(join(header, data), GlobalHeader, LIMIT), MALFORMED)
    header["w"] = {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}
    assert_refused(lambda: decode_tensors(join(header, data), GlobalHeader, LIMIT), MALFORMED)


@pytest.mark.parametrize("field", ["round", "norm"])
def test_metadata_integer_beyond_float_range_is_malformed(field: str) -> None:
    payload = with_metadata(update_payload(), **{field: "1" + "0" * 400})
    assert_refused(lambda: decode_tensors(payload, UpdateHeader, LIMIT), MALFORMED, repr(field))


def test_deeply_nested_safetensors_header_is_malformed() -> None:
    raw = b"[" * 50_000
    assert_refused(lambda: decode_tensors(struct.pack("<Q", len(raw)) + raw, GlobalHeader, LIMIT), MALFORMED)


def test_tensor_of_a_dtype_numpy_lacks_is_malformed() -> None:
    header = {"__metadata__": GLOBAL_METADATA, "w": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}
    assert_refused(lambda: decode_tensors(join(header, b"\x80\x3f\x00\x40"), GlobalHeader, LIMIT), MALFORMED)


# --- artifact bundles ---------------------------------------------------------------------------

MANIFEST = b"abc"
MANIFEST_ID = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc"), FIPS 180-2
FILES = {"manifest.json": MANIFEST, "model.tflite": bytes(range(256)) * 3 + b"\x00", "empty.bin": b"",
         "normalization.json": b'{"mean": [0.5]}'}


def test_artifact_id_is_the_sha256_of_the_manifest() -> None:
    assert artifact_id(MANIFEST) == MANIFEST_ID
    assert artifact_id(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_bundle_round_trip() -> None:
    header, files = unbundle_files(bundle_files(FILES, "manifest.json"), LIMIT)
    assert header == ArtifactHeader(MANIFEST_ID, "manifest.json")
    assert header.kind == "artifact"
    assert files == FILES
    assert all(type(content) is bytes for content in files.values())


def test_bundle_metadata_and_tensors() -> None:
    header, _ = split(bundle_files(FILES, "manifest.json"))
    assert header["__metadata__"] == {"protocol": "1", "kind": "artifact", "artifact_id": MANIFEST_ID,
                                      "manifest_file": "manifest.json"}
    assert {name: (entry["dtype"], entry["shape"]) for name, entry in header.items() if name != "__metadata__"} == {
        "manifest.json": ("U8", [3]), "model.tflite": ("U8", [769]), "empty.bin": ("U8", [0]),
        "normalization.json": ("U8", [15]),
    }


def test_bundle_limit() -> None:
    payload = bundle_files(FILES, "manifest.json")
    assert unbundle_files(payload, len(payload))[1] == FILES
    assert_refused(lambda: unbundle_files(payload, len(payload) - 1), OVERSIZED)
    assert_refused(lambda: unbundle_files(b"\xff" * 101, 100), OVERSIZED)


def test_bundle_with_an_altered_manifest_is_malformed() -> None:
    old = ArtifactHeader(artifact_id(MANIFEST), "manifest.json")
    altered = {name: np.frombuffer(content, np.uint8) for name, content in {**FILES, "manifest.json": b"abd"}.items()}
    payload = encode_tensors(old, altered)
    assert_refused(lambda: unbundle_files(payload, LIMIT), MALFORMED, "'manifest.json'", MANIFEST_ID)


def test_bundle_with_an_altered_id_is_malformed() -> None:
    payload = with_metadata(bundle_files(FILES, "manifest.json"), artifact_id="0" * 64)
    assert_refused(lambda: unbundle_files(payload, LIMIT), MALFORMED, "0" * 64)


def test_bundle_without_its_manifest_is_malformed() -> None:
    files = {name: np.frombuffer(content, np.uint8) for name, content in FILES.items() if name != "manifest.json"}
    payload = encode_tensors(ArtifactHeader(MANIFEST_ID, "manifest.json"), files)
    assert_refused(lambda: unbundle_files(payload, LIMIT), MALFORMED, "'manifest.json'")


def test_bundle_naming_another_file_as_manifest_is_malformed() -> None:
    payload = with_metadata(bundle_files(FILES, "manifest.json"), manifest_file="model.tflite")
    assert_refused(lambda: unbundle_files(payload, LIMIT), MALFORMED, "'model.tflite'")


@pytest.mark.parametrize("tensor", [
    np.zeros(4, np.int8),
    np.zeros(4, np.uint16),
    np.zeros(4, np.float32),
    np.zeros((2, 2), np.uint8),
    np.zeros((4, 1), np.uint8),
    np.array(7, np.uint8),
], ids=["int8", "uint16", "float32", "2x2-uint8", "4x1-uint8", "scalar-uint8"])
def test_bundle_with_a_tensor_that_is_not_1d_uint8_is_malformed(tensor: np.ndarray) -> None:
    tensors = {name: np.frombuffer(content, np.uint8) for name, content in FILES.items()}
    metadata = {"protocol": "1", "kind": "artifact", "artifact_id": MANIFEST_ID, "manifest_file": "manifest.json"}
    payload = save({**tensors, "weights.bin": tensor}, metadata=metadata)  # save() keeps 0-d shapes
    assert_refused(lambda: unbundle_files(payload, LIMIT), MALFORMED, "'weights.bin'", "1-D uint8")


@pytest.mark.parametrize("name", ["sub/model.tflite", "/etc/passwd", "../escape", "a+b", "a#", "", "x" * 65, "a b"],
                         ids=repr)
def test_bundle_file_name_that_is_not_a_plain_name_is_malformed(name: str) -> None:
    payload = bundle_files({**FILES, name: b"payload"}, "manifest.json")
    assert_refused(lambda: unbundle_files(payload, LIMIT), MALFORMED, "artifact file name", repr(name))


@pytest.mark.parametrize("name", [".", ".."])
def test_bundle_file_named_dot_or_dot_dot_is_malformed(name: str) -> None:
    payload = bundle_files({**FILES, name: b"payload"}, "manifest.json")
    assert_refused(lambda: unbundle_files(payload, LIMIT), MALFORMED, repr(name))


def test_unbundle_refuses_other_kinds_and_protocols() -> None:
    assert_refused(lambda: unbundle_files(encode_tensors(GLOBAL, {}), LIMIT), MALFORMED, "'global'")
    payload = with_metadata(bundle_files(FILES, "manifest.json"), protocol="2")
    assert_refused(lambda: unbundle_files(payload, LIMIT), WRONG_PROTOCOL)
    assert_refused(lambda: unbundle_files(bundle_files(FILES, "manifest.json")[:-1], LIMIT), MALFORMED)



def test_a_task_and_an_update_from_before_codecs_decode_with_float32_and_no_cap() -> None:
    old_task = {"protocol": 1, "kind": "train", "task_id": "t", "round": 1, "model_version": 0, "artifact_id": AID,
                "deadline": 1.0, "epochs": 1, "lr": 0.1, "clip_norm": 1.0, "seed": 0}
    task = decode(json.dumps(old_task).encode(), TrainTask)
    assert (task.codec, task.max_examples, task.mu) == ("float32", 0, 0.0)
    metadata = {k: v for k, v in UPDATE_METADATA.items() if k != "codec"}
    header, _ = decode_tensors(save({"w": np.zeros(2, np.float32)}, metadata=metadata), UpdateHeader, 10**6)
    assert header.codec == "float32"


@pytest.mark.parametrize("mu", [-0.5, -1e-9])
def test_a_negative_proximal_coefficient_is_malformed(mu: float) -> None:
    assert_refused(lambda: decode(wire(TrainTask, mu=mu), TrainTask), MALFORMED, "'mu'", ">= 0")
    with pytest.raises(ProtocolError):
        TrainTask("t", 1, 0, AID, 1.0, 1, 0.1, 1.0, 0, mu=mu)


def test_a_non_finite_proximal_coefficient_is_refused() -> None:
    assert_refused(lambda: decode(wire(TrainTask, mu="Infinity").replace(b'"Infinity"', b"Infinity"), TrainTask),
                   MALFORMED)
    with pytest.raises(ProtocolError, match="'mu'"):
        TrainTask("t", 1, 0, AID, 1.0, 1, 0.1, 1.0, 0, mu=math.nan)


def test_an_evaluation_without_personal_weights_has_null_personalized_sums() -> None:
    plain = EvaluationReport("pi-07", "e-5", 5, 4, 30, 12.5, 27)
    body = json.loads(encode(plain))
    assert (body["personalized_loss_sum"], body["personalized_correct"]) == (None, None)
    assert decode(encode(plain), EvaluationReport) == plain
    absent = decode(wire(EvaluationReport, personalized_loss_sum=..., personalized_correct=...), EvaluationReport)
    assert (absent.personalized_loss_sum, absent.personalized_correct) == (None, None)


@pytest.mark.parametrize(("field", "value"), [("personalized_correct", 2.5), ("personalized_correct", True),
                                              ("personalized_loss_sum", "4.25"), ("personalized_loss_sum", [1.0])])
def test_a_personalized_sum_of_the_wrong_type_is_malformed(field: str, value: Any) -> None:
    assert_refused(lambda: decode(wire(EvaluationReport, **{field: value}), EvaluationReport), MALFORMED, repr(field))
