"""The device's update pipeline without a broker or an interpreter: delta, clip, stages in order, the codec named in
the header, the example count capped. Values are multiples of 1/64, exact in float16 and float32."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from edge_runtime.codecs import get_codec
from edge_runtime.manifest import WeightSpec
from edge_runtime.protocol import TrainTask, UpdateHeader, decode_tensors
from edge_runtime.update_stages import EncodedUpdate, UpdatePipeline, reported_examples
from edge_runtime.weights import Weights

LIMIT = 1 << 20
SPECS = (WeightSpec("w", (1, 2)), WeightSpec("b", (1,)))
BASE = {"w": np.array([[1.0, 2.0]], np.float32), "b": np.array([0.5], np.float32)}
# local - base = w [[3, 4]], b [0]: norm 5
LOCAL = {"b": np.array([0.5], np.float32), "w": np.array([[4.0, 6.0]], np.float32)}


def task(clip_norm: float = 2.5, codec: str = "float32", max_examples: int = 0) -> TrainTask:
    return TrainTask("t-7", round=3, model_version=2, artifact_id="a" * 64, deadline=1e12, epochs=1, lr=0.1,
                     clip_norm=clip_norm, seed=5, codec=codec, max_examples=max_examples)


def decoded(update: EncodedUpdate, codec: str = "float32") -> tuple[UpdateHeader, Weights]:
    header, tensors = decode_tensors(update.payload, UpdateHeader, LIMIT)
    return header, get_codec(codec).decode(tensors, SPECS)


def test_the_delta_is_clipped_to_the_bound_and_the_header_keeps_the_norm_before_clipping() -> None:
    update = UpdatePipeline().encode("dev-1", task(clip_norm=2.5), LOCAL, BASE, examples=25, train_loss=0.75)
    header, tensors = decoded(update)
    assert header == update.header == UpdateHeader("dev-1", "t-7", 3, 2, 25, 0.75, 5.0, "float32")
    assert list(tensors) == ["w", "b"]  # the global weights' order
    np.testing.assert_array_equal(tensors["w"], [[1.5, 2.0]])  # [3, 4] * 2.5 / 5
    np.testing.assert_array_equal(tensors["b"], [0.0])


def test_an_update_within_the_bound_goes_as_it_is() -> None:
    _, tensors = decoded(UpdatePipeline().encode("dev-1", task(clip_norm=8.0), LOCAL, BASE, 25, 0.75))
    np.testing.assert_array_equal(tensors["w"], [[3.0, 4.0]])


@dataclass
class Recorded:
    """A stage that adds ``add`` to every value and notes what it was given."""

    add: float
    seen: list[tuple[float, str]] = field(default_factory=list)

    def __call__(self, update: Weights, task: TrainTask) -> Weights:
        self.seen.append((float(update["w"][0, 0]), task.task_id))
        return {name: value + np.float32(self.add) for name, value in update.items()}


def test_stages_run_in_order_after_clipping_on_the_clipped_update() -> None:
    first, second = Recorded(0.25), Recorded(-0.125)
    _, tensors = decoded(UpdatePipeline.of([first, second]).encode("dev-1", task(), LOCAL, BASE, 25, 0.75))
    assert first.seen == [(1.5, "t-7")]  # clipped already
    assert second.seen == [(1.75, "t-7")]  # after the first
    np.testing.assert_array_equal(tensors["w"], [[1.625, 2.125]])
    np.testing.assert_array_equal(tensors["b"], [0.125])


def test_the_tasks_codec_encodes_the_tensors_and_is_named_in_the_header() -> None:
    update = UpdatePipeline().encode("dev-1", task(codec="float16"), LOCAL, BASE, 25, 0.75)
    header, wire = decode_tensors(update.payload, UpdateHeader, LIMIT)
    assert header.codec == "float16" and {v.dtype for v in wire.values()} == {np.dtype("float16")}
    np.testing.assert_array_equal(wire["w"], np.array([[1.5, 2.0]], np.float16))


@pytest.mark.parametrize(("examples", "cap", "claimed"), [(25, 0, 25), (25, 10, 10), (25, 40, 25), (10, 10, 10)])
def test_the_example_count_is_capped_by_the_task(examples: int, cap: int, claimed: int) -> None:
    assert reported_examples(examples, task(max_examples=cap)) == claimed
    update = UpdatePipeline().encode("dev-1", task(max_examples=cap), LOCAL, BASE, examples, 0.75)
    assert update.header.examples == claimed
