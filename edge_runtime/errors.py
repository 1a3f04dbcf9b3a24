"""Exceptions raised by the device runtime.

Every error carries the context a user needs to act on it: which file,
which field or tensor, what was found and what was expected.
"""

from __future__ import annotations


class EdgeflError(Exception):
    """Base class of every error the ``edgefl`` packages raise on purpose."""


class EdgeRuntimeError(EdgeflError):
    """Base class for every error raised by ``edge_runtime``."""


class BackendUnavailableError(EdgeRuntimeError):
    """No usable TFLite interpreter backend could be imported."""


class ArtifactError(EdgeRuntimeError):
    """An artifact folder is missing a file, is malformed, or was tampered with."""

    def __init__(self, path: object, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path is not None else problem)
        self.path = path
        self.problem = problem


class WeightsError(EdgeRuntimeError):
    """A set of named tensors does not match the artifact's weight list."""

    def __init__(self, problem: str, tensor: str | None = None) -> None:
        where = f"tensor {tensor!r}: " if tensor else ""
        super().__init__(f"{where}{problem}")
        self.tensor = tensor
        self.problem = problem


class DataError(EdgeRuntimeError):
    """Local training data does not fit the artifact's manifest."""

    def __init__(self, source: object, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


class ProtocolError(EdgeRuntimeError):
    """A message does not follow the wire protocol (``edge_runtime.protocol``).

    ``reason`` is a short stable code (``malformed``, ``oversized``, ...) that
    the coordinator counts rejections by; ``problem`` says what was wrong.
    """

    def __init__(self, reason: str, problem: str, topic: str | None = None) -> None:
        super().__init__(f"{topic}: {problem}" if topic else problem)
        self.reason = reason
        self.problem = problem
        self.topic = topic


class PolicyError(EdgeRuntimeError):
    """An eligibility policy file has an unknown key or a bad value."""

    def __init__(self, source: object, key: str, problem: str) -> None:
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")
        self.source = source
        self.key = key
        self.problem = problem


class SignalError(EdgeRuntimeError):
    """A signal source (a signals file, a platform command) gave something that could not be read."""

    def __init__(self, source: object, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem
