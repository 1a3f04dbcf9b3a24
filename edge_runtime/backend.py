"""TFLite interpreter backends: pick the first one installed, or the one asked for.

Order: ``ai_edge_litert`` (LiteRT, the maintained runtime), ``tflite_runtime``
(the last release, 2.14, for older images; it needs numpy < 2), then
``tensorflow.lite`` (only where full TensorFlow happens to be installed; the
device extra never installs it). ``EDGEFL_TFLITE_BACKEND`` forces one.
"""

from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Protocol

from edge_runtime.errors import BackendUnavailableError
from edge_runtime.native_logs import first_interpreter

log = logging.getLogger(__name__)

ENV_VAR = "EDGEFL_TFLITE_BACKEND"


class Interpreter(Protocol):
    """The part of the TFLite ``Interpreter`` API the runtime uses."""

    def get_signature_runner(self, signature_key: str | None = None) -> Any: ...

    def allocate_tensors(self) -> None: ...


@dataclass(frozen=True)
class Backend:
    """One importable TFLite runtime."""

    name: str
    module: str
    extra: str

    def load(self) -> Any:
        """Import the backend's ``Interpreter`` class (raises ImportError if absent)."""
        if self.name == "tensorflow":
            return importlib.import_module("tensorflow").lite.Interpreter
        return importlib.import_module(self.module).Interpreter

    def interpreter(self, model_content: bytes, num_threads: int | None = None) -> Interpreter:
        cls = self.load()

        def build() -> Interpreter:
            built: Interpreter = cls(model_content=model_content, num_threads=num_threads)
            built.allocate_tensors()  # where LiteRT applies (and announces) its CPU delegate
            return built

        return first_interpreter(build)


BACKENDS = (
    Backend("ai_edge_litert", "ai_edge_litert.interpreter", "edgefl[device]"),
    Backend("tflite_runtime", "tflite_runtime.interpreter", "edgefl[legacy]"),
    Backend("tensorflow", "tensorflow", "edgefl[export]"),
)


def select_backend(name: str | None = None) -> Backend:
    """The backend named by ``name`` or ``$EDGEFL_TFLITE_BACKEND``, else the first importable one."""
    wanted = name or os.environ.get(ENV_VAR) or None
    if wanted is not None:
        matches = [b for b in BACKENDS if b.name == wanted]
        if not matches:
            raise BackendUnavailableError(
                f"unknown TFLite backend {wanted!r} (from {'argument' if name else ENV_VAR}); "
                f"expected one of {[b.name for b in BACKENDS]}"
            )
        return _importable(matches[0], forced=True)
    errors = []
    for backend in BACKENDS:
        try:
            return _importable(backend, forced=False)
        except BackendUnavailableError as exc:
            errors.append(str(exc))
    raise BackendUnavailableError(
        "no TFLite interpreter is installed: install one with `pip install 'edgefl[device]'` "
        "(ai-edge-litert) or, on older images, `pip install 'edgefl[legacy]'` (tflite-runtime, numpy<2). "
        "Tried: " + "; ".join(errors)
    )


def _importable(backend: Backend, forced: bool) -> Backend:
    try:
        backend.load()
    except (ImportError, AttributeError) as exc:  # tflite_runtime under numpy 2 fails with either
        how = f"install it with `pip install '{backend.extra}'`"
        raise BackendUnavailableError(
            f"TFLite backend {backend.name!r}{' (forced)' if forced else ''} cannot be imported: {exc}; {how}"
        ) from exc
    log.debug("using TFLite backend %s", backend.name)
    return backend
