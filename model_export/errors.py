"""Exceptions raised while exporting a model."""

from __future__ import annotations

from edge_runtime.errors import EdgeflError


class ExportError(EdgeflError):
    """Base class for every error raised by ``model_export``."""


class SpecError(ExportError):
    """A model specification field holds a bad value."""

    def __init__(self, field_name: str, expected: str, found: object) -> None:
        super().__init__(f"model spec field {field_name!r}: expected {expected}, found {found!r}")
        self.field_name = field_name


class UnsupportedOpsError(ExportError):
    """The converted model needs ops a stock TFLite interpreter does not have."""

    def __init__(self, ops: list[str]) -> None:
        super().__init__(
            "the converted model uses ops that are not TFLite builtins "
            f"(a stock interpreter cannot run them): {', '.join(ops)}"
        )
        self.ops = ops


class UnsupportedModelError(ExportError):
    """A Keras model uses layers, activations, a loss or configurations that cannot be exported builtin-only."""

    def __init__(self, model_name: str, problems: list[str]) -> None:
        listed = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"Keras model {model_name!r} cannot be exported ({len(problems)} problem"
                         f"{'s' if len(problems) != 1 else ''}; docs/ARTIFACT.md lists what is supported):\n{listed}")
        self.problems = problems
