"""What to export: the model family, its shape and its training setup."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from edge_runtime.manifest import FAMILIES, Manifest, Normalization, OptimizerConfig, WeightSpec
from model_export.errors import SpecError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CONV_KERNEL = 3
POOL = 2
POOL_MIN_SIZE = 8


@dataclass(frozen=True)
class ModelSpec:
    """A model to export.

    ``mlp``: flattened input, dense layers of sizes ``hidden`` with relu, a
    dense output layer. ``cnn``: one 3x3 VALID convolution with relu per entry
    of ``filters``, each followed by a 2x2 average pool while the feature map
    is at least 8 wide, then dense layers ``hidden`` and the output layer.
    """

    family: str
    input_shape: tuple[int, ...]
    num_classes: int
    hidden: tuple[int, ...] = (64,)
    filters: tuple[int, ...] = (16, 32)
    batch_size: int = 32
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    normalization: Normalization | None = None
    seed: int = 0
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(self.input_shape))
        object.__setattr__(self, "hidden", tuple(self.hidden))
        object.__setattr__(self, "filters", tuple(self.filters))
        if not self.name:
            object.__setattr__(self, "name", f"{self.family}")
        _require(self.family in FAMILIES, "family", f"one of {FAMILIES}", self.family)
        _require(_NAME.match(self.name) is not None, "name", "letters, digits, '_', '.', '-'", self.name)
        _require(len(self.input_shape) > 0 and all(_pos_int(d) for d in self.input_shape),
                 "input_shape", "positive ints", self.input_shape)
        _require(_pos_int(self.num_classes) and self.num_classes >= 2, "num_classes", "an int >= 2", self.num_classes)
        _require(all(_pos_int(h) for h in self.hidden), "hidden", "positive ints", self.hidden)
        _require(_pos_int(self.batch_size), "batch_size", "an int >= 1", self.batch_size)
        _require(isinstance(self.seed, int), "seed", "an int", self.seed)
        if self.normalization is not None:
            n = len(self.normalization.mean)
            _require(n in (1, math.prod(self.input_shape)), "normalization",
                     f"1 or {math.prod(self.input_shape)} values", n)
        if self.family == "cnn":
            self._check_cnn()

    def _check_cnn(self) -> None:
        _require(len(self.input_shape) == 3, "input_shape", "(height, width, channels) for a cnn", self.input_shape)
        _require(len(self.filters) > 0 and all(_pos_int(f) for f in self.filters),
                 "filters", "one or more positive ints", self.filters)
        height, width = self.input_shape[0], self.input_shape[1]
        for block, _ in enumerate(self.filters):
            height, width = height - CONV_KERNEL + 1, width - CONV_KERNEL + 1
            _require(height >= 1 and width >= 1, "filters",
                     f"at most as many 3x3 blocks as the input allows (block {block} leaves no pixels)",
                     self.filters)
            if pools_after(height, width):
                height, width = height // POOL, width // POOL

    @property
    def feature_count(self) -> int:
        return math.prod(self.input_shape)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> ModelSpec:
        """The spec a built-in family's artifact was exported from, rebuilt from the exporter's record in it."""
        record = manifest.exporter
        if record.get("family") not in FAMILIES:
            raise SpecError("exporter.family", f"one of {FAMILIES} (an artifact of a built-in family)",
                            record.get("family"))
        arch = record.get("architecture", {})
        norm = record.get("normalization")
        spec = cls(family=record["family"], input_shape=manifest.input_shape, num_classes=manifest.num_classes,
                   hidden=tuple(arch.get("hidden", ())), filters=tuple(arch.get("filters", ())) or (16, 32),
                   batch_size=manifest.train_batch_size, optimizer=manifest.optimizer,
                   normalization=None if norm is None else Normalization(**norm), seed=arch.get("seed", 0),
                   name=manifest.model_name)
        if weight_specs(spec) != manifest.weights:
            raise SpecError("weights", f"the manifest's weights {manifest.weight_names}",
                            [w.name for w in weight_specs(spec)])
        return spec


def weight_specs(spec: ModelSpec) -> tuple[WeightSpec, ...]:
    """Every trainable tensor of ``spec``, named and in the order the model uses them.

    Names are valid TensorFlow argument names (they name the ``set_weights``
    inputs too). Kernels use Keras layouts: conv ``(3, 3, in, out)``, dense ``(in, out)``.
    """
    specs: list[WeightSpec] = []
    features = spec.feature_count
    if spec.family == "cnn":
        height, width, channels = spec.input_shape
        for block, out in enumerate(spec.filters):
            specs += [WeightSpec(f"conv_{block}_kernel", (CONV_KERNEL, CONV_KERNEL, channels, out)),
                      WeightSpec(f"conv_{block}_bias", (out,))]
            height, width, channels = height - CONV_KERNEL + 1, width - CONV_KERNEL + 1, out
            if pools_after(height, width):
                height, width = height // POOL, width // POOL
        features = height * width * channels
    for layer, units in enumerate((*spec.hidden, spec.num_classes)):
        specs += [WeightSpec(f"dense_{layer}_kernel", (features, units)),
                  WeightSpec(f"dense_{layer}_bias", (units,))]
        features = units
    return tuple(specs)


def standardization(x: np.ndarray) -> Normalization:
    """Per-feature mean and std of examples ``x`` (computed in float64; a zero std becomes 1)."""
    flat = np.asarray(x, np.float64).reshape(len(x), -1)
    std = flat.std(axis=0)
    return Normalization(tuple(flat.mean(axis=0)), tuple(np.where(std > 1e-8, std, 1.0)))


def pools_after(height: int, width: int) -> bool:
    """Whether a conv block whose output is ``height`` x ``width`` is followed by a pool."""
    return min(height, width) >= POOL_MIN_SIZE


def _pos_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _require(ok: bool, field_name: str, expected: str, found: object) -> None:
    if not ok:
        raise SpecError(field_name, expected, found)
