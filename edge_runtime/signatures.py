"""Check that a model's signatures are the ones its manifest describes.

The manifest is what the runtime trusts for shapes and names; a manifest
edited by hand (or paired with another model) must be refused up front, not
discovered as a silent mis-training or a crash inside the interpreter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from edge_runtime.manifest import Manifest

Details = dict[str, dict[str, Any]]


def signature_mismatches(manifest: Manifest, runner: Callable[[str], Any]) -> list[str]:
    """Every way the signatures of ``runner(key)`` differ from ``manifest``; empty when they agree."""
    batch, shape, outputs = manifest.train_batch_size, manifest.input_shape, manifest.output_size
    weights = {w.name: w.shape for w in manifest.weights}
    train: dict[str, tuple[int, ...]] = {"x": (batch, *shape), "y": (batch,), "mask": (batch,), "lr": ()}
    if manifest.proximal:
        train["mu"] = ()
    expected: dict[str, tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]] = {
        "train": (train, {"loss": ()}),
        "evaluate": ({"x": (-1, *shape), "y": (-1,)}, {"loss_sum": (), "correct": ()}),
        "infer": ({"x": (-1, *shape)}, {"logits": (-1, outputs)}),
        "get_weights": ({"unused": ()}, weights),
        "set_weights": (weights, {"ok": ()}),
    }
    problems: list[str] = []
    for key, (ins, outs) in expected.items():
        try:
            signature = runner(key)
        except ValueError:
            problems.append(f"no signature {key!r}")
            continue
        problems += _compare(f"{key} input", signature.get_input_details(), ins)
        problems += _compare(f"{key} output", signature.get_output_details(), outs)
    return problems


def _compare(where: str, found: Details, expected: dict[str, tuple[int, ...]]) -> list[str]:
    if set(found) != set(expected):
        return [f"{where}s are {sorted(found)}, expected {sorted(expected)}"]
    problems = []
    for name, want in expected.items():
        got = tuple(int(d) for d in found[name]["shape_signature"])
        if got != want:
            problems.append(f"{where} {name!r} has shape {got}, expected {want}")
    return problems
