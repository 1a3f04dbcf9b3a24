"""The artifact manifest: what a device must know about a model to train it.

The manifest is written once by ``model_export`` and read by every device.
It is plain JSON so that a client in another language (an Android app) can
read it too; ``docs/ARTIFACT.md`` describes each field.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edge_runtime.errors import ArtifactError

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST_FILE = "manifest.json"
TFLITE_FILE = "model.tflite"
WEIGHTS_FILE = "weights.safetensors"
OPTIMIZERS = ("sgd", "adam")
FAMILIES = ("mlp", "cnn")  # format 1 only: version 2 leaves the model's make-up to ``exporter``
WEIGHT_DTYPES = ("float32",)
REQUIRED_SIGNATURES = ("train", "evaluate", "infer", "get_weights", "set_weights")
_FILE_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class ManifestError(ArtifactError):
    """A manifest field (or a value object used in one) holds a missing or wrong value.

    Raised with ``path=None`` by the value objects themselves; ``Manifest.read``
    re-raises it naming the file.
    """

    def __init__(self, path: object, field_name: str, expected: str, found: object) -> None:
        super().__init__(path, f"field {field_name!r}: expected {expected}, found {found!r}")
        self.field_name = field_name
        self.expected = expected
        self.found = found


def _check(ok: bool, field_name: str, expected: str, found: object) -> None:
    if not ok:
        raise ManifestError(None, field_name, expected, found)


def _positive_ints(values: object) -> bool:
    return isinstance(values, (list, tuple)) and all(_is_int(v) and v > 0 for v in values)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plain_file_name(value: object) -> bool:
    """A file name inside the artifact folder: no directories, no '..', no hidden tricks."""
    return (isinstance(value, str) and _FILE_NAME.fullmatch(value) is not None
            and value not in (".", ".."))


@dataclass(frozen=True)
class WeightSpec:
    """One trainable tensor, in the order the model uses them.

    A ``personal`` tensor is trained on the device and never leaves it (docs/ARTIFACT.md, section 6).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    personal: bool = False

    def __post_init__(self) -> None:
        _check(bool(self.name) and isinstance(self.name, str), "weights[].name", "a non-empty string", self.name)
        _check(_positive_ints(self.shape), f"weights[{self.name}].shape", "a list of positive ints", self.shape)
        object.__setattr__(self, "shape", tuple(self.shape))
        _check(self.dtype in WEIGHT_DTYPES, f"weights[{self.name}].dtype", f"one of {WEIGHT_DTYPES}", self.dtype)
        _check(isinstance(self.personal, bool), f"weights[{self.name}].personal", "true or false", self.personal)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class OptimizerConfig:
    """The optimizer compiled into the ``train`` signature and its hyperparameters."""

    name: str = "sgd"
    learning_rate: float = 0.05
    momentum: float = 0.0
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-7

    def __post_init__(self) -> None:
        _check(self.name in OPTIMIZERS, "optimizer.name", f"one of {OPTIMIZERS}", self.name)
        _check(_is_number(self.learning_rate) and self.learning_rate > 0,
               "optimizer.learning_rate", "a number > 0", self.learning_rate)
        _check(_is_number(self.momentum) and 0 <= self.momentum < 1,
               "optimizer.momentum", "a number in [0, 1)", self.momentum)
        for name in ("beta_1", "beta_2"):
            value = getattr(self, name)
            _check(_is_number(value) and 0 <= value < 1, f"optimizer.{name}", "a number in [0, 1)", value)
        _check(_is_number(self.epsilon) and self.epsilon > 0, "optimizer.epsilon", "a number > 0", self.epsilon)
        _check(self.name == "sgd" or self.momentum == 0, "optimizer.momentum",
               "0 unless the optimizer is sgd (adam has beta_1 instead)", self.momentum)


@dataclass(frozen=True)
class Normalization:
    """Input normalization applied inside the model: ``(x - mean) / std``.

    ``mean`` and ``std`` hold either one value (applied to every feature) or
    one value per feature of the flattened input.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            values = getattr(self, name)
            _check(isinstance(values, (list, tuple)) and all(_is_number(v) for v in values),
                   f"normalization.{name}", "a list of finite numbers", values)
            object.__setattr__(self, name, tuple(float(v) for v in values))
        _check(len(self.mean) == len(self.std) and len(self.mean) > 0,
               "normalization", "mean and std of the same non-zero length",
               (len(self.mean), len(self.std)))
        _check(all(math.isfinite(v) for v in self.mean), "normalization.mean", "finite numbers", self.mean)
        _check(all(math.isfinite(v) and v > 0 for v in self.std), "normalization.std", "finite numbers > 0", self.std)


@dataclass(frozen=True)
class SignatureSpec:
    """Input and output names of one signature in ``model.tflite``."""

    key: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def __post_init__(self) -> None:
        _check(isinstance(self.key, str) and bool(self.key), "signatures[].key", "a non-empty string", self.key)
        for name in ("inputs", "outputs"):
            values = getattr(self, name)
            _check(isinstance(values, (list, tuple)) and all(isinstance(v, str) and v for v in values),
                   f"signatures[{self.key}].{name}", "a list of non-empty strings", values)
            object.__setattr__(self, name, tuple(values))


def standard_signatures(weight_names: tuple[str, ...], proximal: bool = False) -> tuple[SignatureSpec, ...]:
    """The five signatures, in ``REQUIRED_SIGNATURES`` order (docs/ARTIFACT.md, section 4).

    ``weight_names`` are every trainable tensor's, personal ones included; a ``proximal`` train takes ``mu``.
    """
    return (
        SignatureSpec("train", ("x", "y", "mask", "lr", "mu") if proximal else ("x", "y", "mask", "lr"), ("loss",)),
        SignatureSpec("evaluate", ("x", "y"), ("loss_sum", "correct")),
        SignatureSpec("infer", ("x",), ("logits",)),
        SignatureSpec("get_weights", ("unused",), weight_names),
        SignatureSpec("set_weights", weight_names, ("ok",)),
    )


@dataclass(frozen=True)
class Architecture:
    """Format 1's record of how the exporter built an mlp or cnn: dense sizes, conv filters, initial-weights seed.

    Version 2 keeps it under ``exporter["architecture"]``; the runtime never reads it.
    """

    hidden: tuple[int, ...] = ()
    filters: tuple[int, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("hidden", "filters"):
            _check(_positive_ints(getattr(self, name)), f"architecture.{name}", "a list of positive ints",
                   getattr(self, name))
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _check(_is_int(self.seed), "architecture.seed", "an int", self.seed)


@dataclass(frozen=True)
class Manifest:
    """Everything a device needs to load, verify and train an artifact (format 2; format 1 is read too).

    ``weights`` lists every trainable tensor, personal ones flagged; ``exporter`` is the exporter's own
    record of how it built the model (a family and its sizes, or the Keras layers), which no device reads.
    """

    model_name: str
    tflite_sha256: str
    weights_sha256: str
    input_shape: tuple[int, ...]
    num_classes: int
    train_batch_size: int
    weights: tuple[WeightSpec, ...]
    optimizer: OptimizerConfig
    signatures: tuple[SignatureSpec, ...]
    tensorflow_version: str
    output_size: int = 0
    proximal: bool = False
    base_sha256: str | None = None
    exporter: Mapping[str, Any] = field(default_factory=dict)
    input_dtype: str = "float32"
    label_dtype: str = "int32"
    tflite_file: str = TFLITE_FILE
    weights_file: str = WEIGHTS_FILE
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _check_version(self.format_version)
        _check(isinstance(self.model_name, str) and bool(self.model_name), "model_name", "a non-empty string",
               self.model_name)
        for name in ("tflite_sha256", "weights_sha256"):
            value = getattr(self, name)
            _check(isinstance(value, str) and _SHA256.fullmatch(value) is not None, name, "64 lowercase hex digits",
                   value)
        _check(self.base_sha256 is None or (isinstance(self.base_sha256, str)
                                            and _SHA256.fullmatch(self.base_sha256) is not None),
               "base_sha256", "null or 64 lowercase hex digits", self.base_sha256)
        for name in ("tflite_file", "weights_file"):
            _check(_plain_file_name(getattr(self, name)), name, "a plain file name inside the artifact folder",
                   getattr(self, name))
        _check(_positive_ints(self.input_shape) and len(self.input_shape) > 0,
               "input_shape", "a non-empty list of positive ints", self.input_shape)
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        _check(_is_int(self.num_classes) and self.num_classes >= 2, "num_classes", "an int >= 2", self.num_classes)
        if self.output_size == 0:
            object.__setattr__(self, "output_size", self.num_classes)
        _check(_is_int(self.output_size) and self.output_size >= 1, "output_size", "an int >= 1", self.output_size)
        _check(isinstance(self.proximal, bool), "proximal", "true or false", self.proximal)
        _check(_is_int(self.train_batch_size) and self.train_batch_size >= 1,
               "train_batch_size", "an int >= 1", self.train_batch_size)
        _check(isinstance(self.tensorflow_version, str), "tensorflow_version", "a string", self.tensorflow_version)
        _check(isinstance(self.exporter, Mapping), "exporter", "a JSON object", self.exporter)
        keys = [sig.key for sig in self.signatures]
        _check(all(k in keys for k in REQUIRED_SIGNATURES), "signatures", f"at least {REQUIRED_SIGNATURES}", keys)
        _check(len(self.federated) > 0, "weights", "at least one weight that is not personal", self.weights)
        names = [w.name for w in self.weights]
        _check(len(set(names)) == len(names), "weights", "unique names", names)
        _check(self.input_dtype == "float32", "input_dtype", "'float32'", self.input_dtype)
        _check(self.label_dtype == "int32", "label_dtype", "'int32'", self.label_dtype)

    @property
    def feature_count(self) -> int:
        return math.prod(self.input_shape)

    @property
    def weight_names(self) -> tuple[str, ...]:
        """Every trainable tensor's name, personal ones included: what ``get_weights`` returns."""
        return tuple(w.name for w in self.weights)

    @property
    def federated(self) -> tuple[WeightSpec, ...]:
        """The tensors that travel: in updates and in the global model."""
        return tuple(w for w in self.weights if not w.personal)

    @property
    def personal(self) -> tuple[WeightSpec, ...]:
        """The tensors trained on the device that never leave it."""
        return tuple(w for w in self.weights if w.personal)

    @property
    def parameter_count(self) -> int:
        """Parameters that travel (personal ones excluded)."""
        return sum(w.size for w in self.federated)

    @property
    def family(self) -> str:
        """The exporter's name for the model (``mlp``, ``cnn``, ``keras``), for people; ``custom`` if unnamed."""
        return str(self.exporter.get("family", "custom"))

    def to_json(self) -> str:
        """Always format 2 (a manifest read from format 1 is written in the new layout)."""
        return json.dumps({**asdict(self), "format_version": FORMAT_VERSION}, indent=2, sort_keys=False) + "\n"

    def write(self, folder: Path) -> Path:
        path = Path(folder) / MANIFEST_FILE
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manifest:
        _check(isinstance(data, Mapping), "<root>", "a JSON object", type(data).__name__)
        version = data.get("format_version", 1)  # format 1 did not require it
        _check_version(version)
        fields = _from_version_1(data) if version == 1 else dict(data)
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(fields) - known)
        _check(not unknown, "<root>", f"only known fields {sorted(known)}", unknown)
        missing = sorted(f for f in ("model_name", "tflite_sha256", "weights_sha256", "input_shape", "num_classes",
                                      "train_batch_size", "weights", "optimizer", "signatures",
                                      "tensorflow_version") if f not in fields)
        _check(not missing, "<root>", "every required field", f"missing {missing}")
        try:
            fields["weights"] = tuple(WeightSpec(**w) for w in fields["weights"])
            fields["optimizer"] = OptimizerConfig(**fields["optimizer"])
            fields["signatures"] = tuple(SignatureSpec(**s) for s in fields["signatures"])
            return cls(**fields)
        except (TypeError, KeyError, AttributeError) as exc:
            raise ArtifactError(None, f"malformed manifest: {exc}") from exc

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = Path(folder) / MANIFEST_FILE
        if not path.is_file():
            raise ArtifactError(folder, f"no {MANIFEST_FILE}: expected an artifact folder written by `edgefl export`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(path, f"not valid JSON: {exc}") from exc
        try:
            return cls.from_dict(data)
        except ManifestError as exc:
            raise ManifestError(path, exc.field_name, exc.expected, exc.found) from None
        except ArtifactError as exc:
            raise ArtifactError(path, exc.problem) from None


_VERSION_1_ONLY = ("family", "normalization", "architecture")
_VERSION_2_ONLY = ("output_size", "proximal", "base_sha256", "exporter")


def _check_version(version: object) -> None:
    _check(_is_int(version) and version in READABLE_VERSIONS, "format_version",
           f"one of {READABLE_VERSIONS} (this runtime's formats; a newer artifact needs a newer edgefl)", version)


def _from_version_1(data: Mapping[str, Any]) -> dict[str, Any]:
    """A format-1 manifest's fields in format 2's layout: the family, normalization and architecture, checked
    as version 1 checked them, move under ``exporter``."""
    newer = sorted(set(data) & set(_VERSION_2_ONLY))
    _check(not newer, "<root>", "only format 1's fields in a format_version 1 manifest", newer)
    weights = data.get("weights")
    personal = [w.get("name") for w in weights if isinstance(w, Mapping) and "personal" in w] \
        if isinstance(weights, list) else []
    _check(not personal, "weights[].personal", "absent in format 1 (it has no personal weights)", personal)
    fields = {k: v for k, v in data.items() if k not in _VERSION_1_ONLY}
    _check("family" in data, "<root>", "every required field", "missing ['family']")
    _check(data["family"] in FAMILIES, "family", f"one of {FAMILIES}", data["family"])
    exporter: dict[str, Any] = {"family": data["family"]}
    try:
        if data.get("normalization") is not None:
            Normalization(**data["normalization"])
            exporter["normalization"] = dict(data["normalization"])
        if "architecture" in data:
            Architecture(**data["architecture"])
            exporter["architecture"] = dict(data["architecture"])
    except TypeError as exc:
        raise ArtifactError(None, f"malformed manifest: {exc}") from exc
    fields["exporter"] = exporter
    return fields


def _is_number(value: object) -> bool:
    """A finite real number (numpy scalars included), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
