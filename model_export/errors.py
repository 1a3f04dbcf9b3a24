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
