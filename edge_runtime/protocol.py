"""The edgefl wire protocol: topics, message types and their encoding, in one place.

Both the device agent and the coordinator import this module; nothing else
formats a topic or a payload. ``docs/PROTOCOL.md`` describes the same protocol
for clients written in other languages.

Control messages are UTF-8 JSON objects carrying ``"protocol"`` and
``"kind"``. Tensors travel as safetensors whose ``__metadata__`` holds the
message's fields as strings. Every decoder checks the payload size before it
parses anything, parses with ``json`` or ``safetensors`` only (never pickle,
never eval), and raises ``ProtocolError`` with a stable ``reason`` code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import struct
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, fields
from types import UnionType
from typing import Any, Literal, TypeVar, Union

import numpy as np

from edge_runtime.codecs import CODEC_NAMES, DEFAULT_CODEC, FLOAT32
from edge_runtime.errors import ProtocolError, WeightsError
from edge_runtime.manifest import WeightSpec
from edge_runtime.signals.base import LINK_VALUES
from edge_runtime.weights import Weights, weights_from_bytes, weights_to_bytes

PROTOCOL_VERSION = 1
TOPIC_ROOT = "edgefl"
DEFAULT_FEDERATION = "default"
# Control messages are small; anything larger is refused unread.
MAX_CONTROL_BYTES = 64 * 1024

_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
# A (re)subscribing coordinator receives every retained status at once. At QoS 1 a default Mosquitto hands
# over only what fits its in-flight window and queue (20 + 1000), and drops the rest of the retained burst;
# at QoS 0 it delivers them all. Nothing is lost by it: a status dropped with a broken connection is
# delivered again, retained, when the coordinator subscribes again.
STATUS_QOS = 0

# Reason codes a message can be refused with; the coordinator counts rejections by these.
MALFORMED = "malformed"
OVERSIZED = "oversized"
WRONG_PROTOCOL = "wrong_protocol"
BAD_TENSORS = "bad_tensors"  # tensors that do not decode for the manifest (names, shapes, dtypes, scales, ...)
NON_FINITE = "non_finite"  # NaN or Inf in the tensors, or in what they decode to
# The downlink: the codecs a global model's delta may travel in (the unbiased ones: without error feedback on the
# coordinator a biased codec would drift), and the GlobalHeader.delta_codec of a coordinator that publishes none.
DOWNLINK_CODECS = ("float32", "float16", "int8", "int4")
NO_DELTAS = "none"


def check_name(value: str, what: str) -> str:
    """A device id or federation name: 1-64 of ``A-Z a-z 0-9 _ . -`` (no MQTT wildcards or separators)."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ProtocolError(MALFORMED, f"{what} {value!r} is not valid; expected 1-64 characters from "
                                       "A-Z a-z 0-9 _ . -")
    return value


@dataclass(frozen=True)
class Topics:
    """Every topic of one federation, under ``edgefl/<federation>/``."""

    federation: str = DEFAULT_FEDERATION

    def __post_init__(self) -> None:
        check_name(self.federation, "federation name")

    @property
    def root(self) -> str:
        return f"{TOPIC_ROOT}/{self.federation}"

    @property
    def artifact(self) -> str:
        return f"{self.root}/model/artifact"

    @property
    def global_model(self) -> str:
        return f"{self.root}/model/global"

    @property
    def delta_model(self) -> str:
        """The global model as a delta from the version before it (``DeltaHeader``), when the coordinator has a
        downlink codec."""
        return f"{self.root}/model/delta"

    @property
    def coordinator(self) -> str:
        return f"{self.root}/coordinator/state"

    @property
    def fleet_clock(self) -> str:
        """An emulated fleet's shared simulated clock (``edgefl fleet --shard``); physical devices ignore it."""
        return f"{self.root}/fleet/clock"

    def status(self, device_id: str) -> str:
        return f"{self.root}/devices/{check_name(device_id, 'device id')}/status"

    def task(self, device_id: str) -> str:
        return f"{self.root}/devices/{check_name(device_id, 'device id')}/task"

    def update(self, device_id: str) -> str:
        return f"{self.root}/updates/{check_name(device_id, 'device id')}"

    def report(self, device_id: str) -> str:
        return f"{self.root}/reports/{check_name(device_id, 'device id')}"

    def secure_in(self, device_id: str) -> str:
        """Secure aggregation, device -> coordinator: its keys, shares and reveals (PROTOCOL.md 5.13)."""
        return f"{self.root}/secagg/{check_name(device_id, 'device id')}"

    def secure_out(self, device_id: str) -> str:
        """Secure aggregation, coordinator -> device, retained: its roster, routed shares, unmask request."""
        return f"{self.root}/devices/{check_name(device_id, 'device id')}/secagg"

    def coordinator_subscriptions(self) -> tuple[tuple[str, int], ...]:
        """``(filter, QoS)``: statuses at QoS 0 (``STATUS_QOS``), updates, reports and secure aggregation's
        messages at QoS 1."""
        return ((f"{self.root}/devices/+/status", STATUS_QOS), (f"{self.root}/updates/+", 1),
                (f"{self.root}/reports/+", 1), (f"{self.root}/secagg/+", 1))

    def device_subscriptions(self, device_id: str) -> tuple[tuple[str, int], ...]:
        """Every topic a device may subscribe to; it drops ``global_model`` while it follows the deltas."""
        return tuple((topic, 1) for topic in (self.artifact, self.global_model, self.delta_model, self.coordinator,
                                              self.task(device_id), self.secure_out(device_id)))

    def sender(self, topic: str) -> tuple[str, str] | None:
        """``(kind, device_id)`` for a topic a device publishes on (status, update, report, secagg), else None."""
        parts = topic.split("/")
        root = self.root.split("/")
        if parts[: len(root)] != root:
            return None
        rest = parts[len(root):]
        if len(rest) == 3 and rest[0] == "devices" and rest[2] == "status" and _NAME.fullmatch(rest[1]):
            return "status", rest[1]
        if len(rest) == 2 and rest[0] in ("updates", "reports") and _NAME.fullmatch(rest[1]):
            return rest[0][:-1], rest[1]
        if len(rest) == 2 and rest[0] == "secagg" and _NAME.fullmatch(rest[1]):
            return "secagg", rest[1]
        return None


# --- JSON control messages -------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceStatus:
    """Retained on the device's status topic; the last-will is the same with ``online=False``."""

    device_id: str
    online: bool
    eligible: bool
    reasons: tuple[str, ...] = ()
    examples: int = 0
    artifact_id: str = ""
    model_version: int = -1
    backend: str = ""
    sent_at: float = 0.0
    codecs: tuple[str, ...] = ()  # the codecs it encodes (see ``encodes``); (): float32 only, as before statuses said
    link: str = ""  # its link's class, one of LINK_CLASSES; "" (or a class this release does not know): unknown
    # Local DP (edge_runtime.local_dp): its noise multiplier (0: none), the updates it sent with local noise for
    # this artifact, and their epsilon at its delta (None: not computed, the device lacks dp-accounting).
    local_noise: float = 0.0
    local_rounds: int = 0
    local_epsilon: float | None = None
    secure_aggregation: bool = False  # it takes part in secure rounds (PROTOCOL.md 5.13)
    kind: Literal["status"] = "status"


# A device of this release encodes every codec (edge_runtime.codecs) and says so in its status with these names,
# "topk" standing for every topk:FRACTION and topk:FRACTION+VALUES whose VALUES it also lists.
DEVICE_CODECS: tuple[str, ...] = tuple(dict.fromkeys(name.split(":")[0] for name in CODEC_NAMES))
LINK_CLASSES = LINK_VALUES  # wired, wifi, cellular, constrained (edge_runtime.signals.link says how a device knows)


def encodes(codec: str, advertised: Sequence[str]) -> bool:
    """Whether a device whose status lists ``advertised`` codecs can encode ``codec`` (a canonical codec name).

    An empty list is a device that predates the field: it is taken to encode float32 alone.
    """
    if not advertised:
        return codec == DEFAULT_CODEC
    family, _, rest = codec.partition(":")
    if family != "topk" or not rest:
        return codec in advertised
    values = rest.partition("+")[2] or DEFAULT_CODEC
    return "topk" in advertised and values in advertised


@dataclass(frozen=True)
class TrainTask:
    """Retained on a selected device's task topic; an empty retained payload withdraws it."""

    task_id: str
    round: int
    model_version: int
    artifact_id: str
    deadline: float
    epochs: int
    lr: float
    clip_norm: float
    seed: int
    codec: str = DEFAULT_CODEC  # how the update is encoded (edge_runtime.codecs)
    max_examples: int = 0  # train on at most this many examples per epoch and report at most this many; 0: no cap
    mu: float = 0.0  # FedProx's proximal coefficient (0: plain local training); > 0 needs a proximal artifact
    # Secure aggregation (PROTOCOL.md 5.13, edge_runtime.secagg): the graph's seed (64 hex digits; "": a plain round),
    # its degree, the Shamir threshold, the quantizer's value bits and the modulus' bits, and the round's devices.
    secure_seed: str = ""
    secure_degree: int = 0
    secure_threshold: int = 0
    secure_value_bits: int = 0
    secure_modulus_bits: int = 0
    peers: tuple[str, ...] = ()
    kind: Literal["train"] = "train"

    @property
    def secure(self) -> bool:
        return bool(self.secure_seed)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.mu) and self.mu >= 0):
            raise ProtocolError(MALFORMED, f"field 'mu' is {self.mu!r}; expected a finite number >= 0")


@dataclass(frozen=True)
class EvaluateTask:
    """Evaluate global model ``model_version`` on the device's local data and report the sums."""

    task_id: str
    round: int
    model_version: int
    artifact_id: str
    deadline: float
    kind: Literal["evaluate"] = "evaluate"


@dataclass(frozen=True)
class TaskFailed:
    """A task the device could not finish (``interrupted`` when its policy stopped it)."""

    device_id: str
    task_id: str
    round: int
    outcome: Literal["failed", "interrupted"]
    reason: str
    kind: Literal["failed"] = "failed"


@dataclass(frozen=True)
class EvaluationReport:
    """Sums over the device's local data, so the coordinator can weight devices exactly."""

    device_id: str
    task_id: str
    round: int
    model_version: int
    examples: int
    loss_sum: float
    correct: int
    # The same sums for the global model with this device's personal weights; None when the artifact has none.
    personalized_loss_sum: float | None = None
    personalized_correct: int | None = None
    kind: Literal["evaluation"] = "evaluation"


@dataclass(frozen=True)
class CoordinatorState:
    """Retained by the coordinator: where the federation is."""

    round: int
    phase: Literal["waiting", "training", "evaluating", "finished"]
    model_version: int
    artifact_id: str
    updated_at: float
    kind: Literal["coordinator"] = "coordinator"


@dataclass(frozen=True)
class FleetClock:
    """Retained by the first shard of an emulated fleet: simulated time = sim_start + (now - wall_start) * rate."""

    wall_start: float
    sim_start: float
    rate: float
    kind: Literal["fleet-clock"] = "fleet-clock"


# --- secure aggregation's control messages (PROTOCOL.md 5.13) -----------------------------------
# Binary values travel as standard base64 (RFC 4648, with padding); a list entry is "DEVICE:BASE64" (a device id
# holds no ':'). edge_runtime.secagg checks each value's length and meaning; here only the JSON shape is checked.


@dataclass(frozen=True)
class SecAggKeys:
    """Device -> coordinator: its two X25519 public keys for the round (shares' encryption, masks) and the SHA-256
    (hex) of its self-mask seed, which lets the coordinator check the seed it rebuilds from shares."""

    device_id: str
    task_id: str
    round: int
    cipher_key: str
    mask_key: str
    seed_sha256: str
    kind: Literal["secagg-keys"] = "secagg-keys"


@dataclass(frozen=True)
class SecAggRoster:
    """Coordinator -> device: the keys of its neighbours that advertised, entries "DEVICE:CIPHER_B64:MASK_B64", and
    its own keys as the coordinator holds them (``own``, one such entry): a device whose session is not the one that
    advertised them (restarted since) refuses the roster instead of sealing shares nobody could open."""

    task_id: str
    round: int
    neighbours: tuple[str, ...]
    own: str
    kind: Literal["secagg-roster"] = "secagg-roster"


@dataclass(frozen=True)
class SecAggShares:
    """Device -> coordinator: one sealed pair of shares per neighbour of its roster, entries "TO:BASE64"."""

    device_id: str
    task_id: str
    round: int
    shares: tuple[str, ...]
    kind: Literal["secagg-shares"] = "secagg-shares"


@dataclass(frozen=True)
class SecAggRouted:
    """Coordinator -> device: the sealed shares its neighbours made for it, entries "FROM:BASE64". A device masks
    with exactly these neighbours."""

    task_id: str
    round: int
    shares: tuple[str, ...]
    kind: Literal["secagg-routed"] = "secagg-routed"


@dataclass(frozen=True)
class SecAggUnmask:
    """Coordinator -> device: which of its neighbours sent a masked input (reveal their self-mask seed's share)
    and which dropped after sharing (reveal their mask key's share)."""

    task_id: str
    round: int
    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    kind: Literal["secagg-unmask"] = "secagg-unmask"


@dataclass(frozen=True)
class SecAggReveal:
    """Device -> coordinator: the shares the unmask request asked for, entries "OWNER:BASE64" (one share each)."""

    device_id: str
    task_id: str
    round: int
    shares: tuple[str, ...]
    kind: Literal["secagg-reveal"] = "secagg-reveal"


SecAggToDevice = SecAggRoster | SecAggRouted | SecAggUnmask
SecAggFromDevice = SecAggKeys | SecAggShares | SecAggReveal


def pack_entry(device: str, *values: bytes) -> str:
    """ "DEVICE:B64[:B64...]", the list entry of the secure aggregation messages."""
    return ":".join([check_name(device, "device id"), *(base64.b64encode(v).decode("ascii") for v in values)])


def unpack_entries(entries: Sequence[str], parts: int, what: str) -> dict[str, tuple[bytes, ...]]:
    """``{device: (bytes, ...)}`` from "DEVICE:B64..." entries with ``parts`` values each; a malformed entry, or a
    device named twice, is refused (MALFORMED)."""
    out: dict[str, tuple[bytes, ...]] = {}
    for entry in entries:
        fields = entry.split(":")
        if len(fields) != parts + 1:
            raise ProtocolError(MALFORMED, f"{what} entry {entry[:80]!r}; expected DEVICE and {parts} base64 "
                                           "value(s) separated by ':'")
        device = check_name(fields[0], "device id")
        if device in out:
            raise ProtocolError(MALFORMED, f"{what} names device {device!r} twice; expected each at most once")
        try:
            out[device] = tuple(base64.b64decode(f, validate=True) for f in fields[1:])
        except (binascii.Error, ValueError) as exc:
            raise ProtocolError(MALFORMED, f"{what} entry for {device!r} is not base64: {exc}") from exc
    return out


Task = TrainTask | EvaluateTask
Report = TaskFailed | EvaluationReport
ControlMessage = (DeviceStatus | TrainTask | EvaluateTask | TaskFailed | EvaluationReport | CoordinatorState
                  | FleetClock | SecAggToDevice | SecAggFromDevice)
_CONTROL: dict[str, type[Any]] = {
    "status": DeviceStatus, "train": TrainTask, "evaluate": EvaluateTask, "failed": TaskFailed,
    "evaluation": EvaluationReport, "coordinator": CoordinatorState, "fleet-clock": FleetClock,
    "secagg-keys": SecAggKeys, "secagg-roster": SecAggRoster, "secagg-shares": SecAggShares,
    "secagg-routed": SecAggRouted, "secagg-unmask": SecAggUnmask, "secagg-reveal": SecAggReveal,
}
M = TypeVar("M")


def kind_of(cls: type[Any]) -> str:
    """The ``kind`` string a message class is sent with."""
    kind: str = cls.__dataclass_fields__["kind"].default
    return kind


# Fields added after their message's first release, left out while they hold these defaults: a message that does
# not use them has the bytes it had before, and a receiver of the earlier release ignores them when they are sent.
_LATER_FIELDS: dict[str, Any] = {"local_noise": 0.0, "local_rounds": 0, "local_epsilon": None,
                                  "secure_aggregation": False, "secure_seed": "",
                                  "secure_degree": 0, "secure_threshold": 0, "secure_value_bits": 0,
                                  "secure_modulus_bits": 0, "peers": ()}


def _wire_fields(message: Any) -> dict[str, Any]:
    return {k: v for k, v in asdict(message).items() if not (k in _LATER_FIELDS and v == _LATER_FIELDS[k])}


def encode(message: ControlMessage) -> bytes:
    body = {"protocol": PROTOCOL_VERSION, **_wire_fields(message)}
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def decode(payload: bytes, expected: type[M] | tuple[type[Any], ...], limit: int = MAX_CONTROL_BYTES) -> M:
    """Decode a JSON control message, refusing it unless its kind is one of ``expected``."""
    allowed = expected if isinstance(expected, tuple) else (expected,)
    data = _json_object(payload, limit)
    kind = data.get("kind")
    cls = _CONTROL.get(kind) if isinstance(kind, str) else None
    if cls is None or cls not in allowed:
        names = [kind_of(c) for c in allowed]
        raise ProtocolError(MALFORMED, f"message kind {kind!r}; expected one of {names}")
    message: M = _build(cls, data)
    return message


def _json_object(payload: bytes, limit: int) -> dict[str, Any]:
    check_size(payload, limit)
    try:
        data = json.loads(payload.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(MALFORMED, f"not a UTF-8 JSON object: {exc}") from exc
    if not isinstance(data, dict):
        raise ProtocolError(MALFORMED, f"expected a JSON object, found {type(data).__name__}")
    version = data.get("protocol")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(WRONG_PROTOCOL, f"protocol {version!r}; expected {PROTOCOL_VERSION}")
    return data


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def check_size(payload: bytes, limit: int) -> None:
    if len(payload) > limit:
        raise ProtocolError(OVERSIZED, f"payload of {len(payload)} bytes exceeds the limit of {limit} bytes")


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _hints(cls: type[Any]) -> dict[str, Any]:
    """The resolved field types of a message class (resolved once; get_type_hints is slow)."""
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _build(cls: type[M], data: Mapping[str, Any]) -> M:
    """Build dataclass ``cls`` from ``data``, checking every field's type; unknown keys are ignored."""
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name not in data:
            if f.default is not MISSING:
                continue
            raise ProtocolError(MALFORMED, f"field {f.name!r} is missing")
        values[f.name] = _coerce(data[f.name], hints[f.name], f.name)
    return cls(**values)


def _is_a(value: Any, hint: Any) -> bool:
    if hint is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if hint is int:  # a signed 64-bit integer, what a Kotlin client reads as Long
        return isinstance(value, int) and -(2**63) <= value < 2**63
    if hint is float:
        return (isinstance(value, int) and abs(value) <= sys.float_info.max) or (
            isinstance(value, float) and math.isfinite(value))
    return hint is str and isinstance(value, str) and len(value) <= 1024


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, UnionType):  # an optional field: null, or a value of its one other type
        if value is None:
            return None
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ProtocolError(MALFORMED, f"field {name!r} is {value!r}; expected one of {typing.get_args(hint)}")
        return value
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ProtocolError(MALFORMED, f"field {name!r} is {value!r}; expected a list of strings")
        return tuple(value)
    if not _is_a(value, hint):
        raise ProtocolError(MALFORMED, f"field {name!r} is {value!r}; expected {hint.__name__}")
    return float(value) if hint is float else value


# --- safetensors messages ---------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateHeader:
    """The metadata of an update: the clipped difference local - global for one task."""

    device_id: str
    task_id: str
    round: int
    model_version: int
    examples: int
    train_loss: float
    norm: float  # L2 norm before clipping
    codec: str = DEFAULT_CODEC  # the codec its tensors are encoded with; must be the task's
    local_noise: float = 0.0  # z of the device's local Gaussian noise (edge_runtime.local_dp); 0: none
    kind: Literal["update"] = "update"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.local_noise) and self.local_noise >= 0):
            raise ProtocolError(MALFORMED, f"field 'local_noise' is {self.local_noise!r}; expected a finite "
                                           "number >= 0")


@dataclass(frozen=True)
class GlobalHeader:
    """The metadata of a global model: version ``version`` of artifact ``artifact_id``.

    ``sha256``: ``weights_sha256`` of its tensors ("" from a coordinator written before it); ``delta_codec``: the
    codec of the deltas the coordinator publishes on ``Topics.delta_model`` for the versions after this one
    (``NO_DELTAS``: none, a device takes every version in full).
    """

    version: int
    round: int
    artifact_id: str
    sha256: str = ""
    delta_codec: str = NO_DELTAS
    kind: Literal["global"] = "global"

    def __post_init__(self) -> None:
        if self.sha256:
            _check_sha256(self.sha256)


@dataclass(frozen=True)
class DeltaHeader:
    """The metadata of a delta: version ``version`` is version ``base_version`` plus the tensors decoded with
    ``codec`` and ``seed`` (``add_delta``), and its weights hash to ``sha256`` (``weights_sha256``)."""

    version: int
    round: int
    artifact_id: str
    base_version: int
    codec: str
    seed: int
    sha256: str
    kind: Literal["delta"] = "delta"

    def __post_init__(self) -> None:
        if not 0 <= self.base_version < self.version:
            raise ProtocolError(MALFORMED, f"delta from version {self.base_version} to {self.version}; expected a "
                                           "base version >= 0 below the version")
        if not 0 <= self.seed < 2**32:
            raise ProtocolError(MALFORMED, f"field 'seed' is {self.seed}; expected 0 .. 2^32-1")
        _check_sha256(self.sha256)


def _check_sha256(text: str) -> None:
    if not _SHA256.fullmatch(text):
        raise ProtocolError(MALFORMED, f"field 'sha256' is {text[:80]!r}; expected 64 lowercase hex digits")


@dataclass(frozen=True)
class ArtifactHeader:
    """The metadata of an artifact bundle: each file of the folder is one uint8 tensor named after it."""

    artifact_id: str  # sha256 of manifest.json, which holds the sha256 of the other files
    manifest_file: str
    kind: Literal["artifact"] = "artifact"


@dataclass(frozen=True)
class MaskedHeader:
    """The metadata of a masked input (secure aggregation): one tensor ``masked``, the device's quantized update
    plus its masks, ``modulus_bits``-bit unsigned integers (uint32 up to 32 bits, else uint64), in manifest order."""

    device_id: str
    task_id: str
    round: int
    model_version: int
    modulus_bits: int
    kind: Literal["masked"] = "masked"


MASKED_TENSOR = "masked"
_BINARY: dict[str, type[Any]] = {"update": UpdateHeader, "global": GlobalHeader, "delta": DeltaHeader,
                                  "artifact": ArtifactHeader, "masked": MaskedHeader}
Header = UpdateHeader | GlobalHeader | DeltaHeader | ArtifactHeader | MaskedHeader
H = TypeVar("H", UpdateHeader, GlobalHeader, DeltaHeader, ArtifactHeader, MaskedHeader)


def encode_tensors(header: Header, tensors: Mapping[str, np.ndarray]) -> bytes:
    metadata = {"protocol": str(PROTOCOL_VERSION)}
    metadata.update({k: json.dumps(v) if not isinstance(v, str) else v for k, v in _wire_fields(header).items()})
    return weights_to_bytes(tensors, metadata)


def decode_tensors(payload: bytes, expected: type[H], limit: int) -> tuple[H, Weights]:
    """Decode a safetensors message of kind ``expected``: its header and its tensors."""
    header = decode_header(payload, expected, limit)
    try:
        tensors = weights_from_bytes(payload)
    except WeightsError as exc:
        raise ProtocolError(MALFORMED, exc.problem) from exc
    return header, tensors


def decode_header(payload: bytes, expected: type[H], limit: int) -> H:
    """Only the header of a safetensors message of kind ``expected``: nothing of the tensors is read or
    allocated, so a receiver can refuse the message on its fields first."""
    check_size(payload, limit)
    metadata = _safetensors_metadata(payload)
    if metadata.get("protocol") != str(PROTOCOL_VERSION):
        raise ProtocolError(WRONG_PROTOCOL, f"protocol {metadata.get('protocol')!r}; expected {PROTOCOL_VERSION}")
    kind = metadata.get("kind")
    if _BINARY.get(kind or "") is not expected:
        raise ProtocolError(MALFORMED, f"message kind {kind!r}; expected {kind_of(expected)!r}")
    hints = _hints(expected)
    data: dict[str, Any] = {}
    for name, text in metadata.items():
        if name in hints:
            textual = hints[name] is str or typing.get_origin(hints[name]) is Literal
            data[name] = text if textual else _json_value(text, name)
    header: H = _build(expected, data)
    return header


def _json_value(text: str, name: str) -> Any:
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(MALFORMED, f"metadata {name!r} is {text!r}; expected a JSON number") from exc


def _safetensors_metadata(payload: bytes) -> dict[str, str]:
    """Read only the header of a safetensors payload (8-byte length, then JSON), checking its bounds."""
    if len(payload) < 8:
        raise ProtocolError(MALFORMED, f"payload of {len(payload)} bytes is too short for safetensors")
    (length,) = struct.unpack("<Q", payload[:8])
    if length > len(payload) - 8:
        raise ProtocolError(MALFORMED, f"safetensors header claims {length} bytes but only "
                                       f"{len(payload) - 8} follow; the payload is truncated")
    try:
        header = json.loads(payload[8: 8 + length].decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(MALFORMED, f"safetensors header is not JSON: {exc}") from exc
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ProtocolError(MALFORMED, "safetensors payload has no string __metadata__")
    return metadata


# --- artifact bundles ---------------------------------------------------------------------------


def artifact_id(manifest_bytes: bytes) -> str:
    return hashlib.sha256(manifest_bytes).hexdigest()


def bundle_files(files: Mapping[str, bytes], manifest_file: str) -> bytes:
    """One payload holding an artifact folder's files, keyed by ``artifact_id(manifest)``."""
    header = ArtifactHeader(artifact_id(files[manifest_file]), manifest_file)
    return encode_tensors(header, {name: np.frombuffer(content, np.uint8) for name, content in files.items()})


def unbundle_files(payload: bytes, limit: int) -> tuple[ArtifactHeader, dict[str, bytes]]:
    """The files of an artifact bundle; refused if the manifest's sha256 is not the bundle's id."""
    header, tensors = decode_tensors(payload, ArtifactHeader, limit)
    files: dict[str, bytes] = {}
    for name, array in tensors.items():
        if array.dtype != np.uint8 or array.ndim != 1:
            raise ProtocolError(MALFORMED, f"artifact file {name!r} is {array.dtype}{list(array.shape)}; "
                                           "expected a 1-D uint8 tensor")
        if name in (".", ".."):
            raise ProtocolError(MALFORMED, f"artifact file name {name!r} is not a file name")
        files[check_name(name, "artifact file name")] = array.tobytes()
    manifest = files.get(header.manifest_file)
    if manifest is None or artifact_id(manifest) != header.artifact_id:
        raise ProtocolError(MALFORMED, f"artifact bundle's {header.manifest_file!r} does not hash to its id "
                                       f"{header.artifact_id}")
    return header, files


def tensor_payload_limit(parameter_count: int) -> int:
    """Size limit of a global-model payload: the float32 tensors plus 64 KiB of header (an update's limit is its
    codec's ``payload_limit``)."""
    return FLOAT32.payload_limit(parameter_count)


# --- the delta downlink -----------------------------------------------------------------------------


def weights_sha256(weights: Mapping[str, np.ndarray], specs: tuple[WeightSpec, ...]) -> str:
    """Lowercase hex SHA-256 of the tensors ``specs`` name, in their order, each as its float32 little-endian bytes
    in row-major order, with nothing between them (what ``GlobalHeader.sha256`` and ``DeltaHeader.sha256`` hold)."""
    digest = hashlib.sha256()
    for spec in specs:
        digest.update(np.ascontiguousarray(weights[spec.name], dtype="<f4").tobytes())
    return digest.hexdigest()


def add_delta(base: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray],
              specs: tuple[WeightSpec, ...]) -> Weights:
    """The weights a delta makes of its base: one float32 addition per value (the coordinator builds the global
    model with this same function, so a device's reconstruction is bit-identical to it)."""
    with np.errstate(over="ignore"):  # a sum beyond float32 is inf, which the receiver refuses
        return {spec.name: (np.asarray(base[spec.name], np.float32) + np.asarray(delta[spec.name], np.float32))
                .astype(np.float32) for spec in specs}
