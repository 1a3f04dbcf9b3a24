"""Error feedback on the device: the pipeline hands back the residual of a biased codec, and the cache keeps it
across a restart, per device and artifact, dropping it when the artifact changes."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_runtime.cache import ResidualStore
from edge_runtime.manifest import Manifest, WeightSpec
from edge_runtime.protocol import GlobalHeader, Topics, TrainTask, encode, encode_tensors
from edge_runtime.update_stages import UpdatePipeline
from edge_runtime.weights import save_weights, select
from tests.conftest import FederationFiles
from tests.federation_tools import offline_agent

BASE = {"w": np.zeros((2, 4), np.float32), "b": np.zeros(2, np.float32)}
LOCAL = {"w": np.array([[0.5, -0.25, 0.0, 1.0], [0.0, 0.0, 0.125, 0.0]], np.float32),
         "b": np.array([0, -2], np.float32)}


class _Manifest:
    """The one property the store reads."""

    federated = (WeightSpec("w", (2, 4)), WeightSpec("b", (2,)))


MANIFEST: Manifest = _Manifest()  # type: ignore[assignment]


def task(codec: str) -> TrainTask:
    return TrainTask("t", 1, 0, "a" * 64, 1e12, 1, 0.1, clip_norm=10.0, seed=3, codec=codec)


def test_a_biased_codec_hands_back_what_it_did_not_send() -> None:
    update = UpdatePipeline().encode("d", task("topk:0.2"), LOCAL, BASE, 4, 0.5)
    assert update.residual is not None  # top 2 of 10: -2 and 1 travel, the rest stays
    assert update.residual["b"].tolist() == [0.0, 0.0]
    assert update.residual["w"].tolist() == [[0.5, -0.25, 0.0, 0.0], [0.0, 0.0, 0.125, 0.0]]
    again = UpdatePipeline().encode("d", task("topk:0.2"), BASE, BASE, 4, 0.5, residual=update.residual)
    assert again.residual is not None  # a zero update sends the largest of what was kept: 0.5 and -0.25
    assert again.residual["w"].tolist() == [[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.125, 0.0]]
    assert UpdatePipeline().encode("d", task("int8"), LOCAL, BASE, 4, 0.5).residual is None


def test_the_residual_survives_a_restart_and_is_dropped_with_its_artifact(tmp_path: Path) -> None:
    kept = {"w": np.full((2, 4), 0.1), "b": np.array([1e-300, -3.0])}
    ResidualStore(tmp_path, "dev-1").save("a" * 64, kept)
    restarted = ResidualStore(tmp_path, "dev-1")
    restored = restarted.restore("a" * 64, MANIFEST)
    assert restored is not None and all(np.array_equal(restored[n], kept[n]) for n in kept)  # float64, bit-exact
    assert ResidualStore(tmp_path, "dev-2").restore("a" * 64, MANIFEST) is None  # per device
    assert restarted.restore("b" * 64, MANIFEST) is None  # a new artifact starts from zero ...
    assert not restarted.path("a" * 64).exists()  # ... and the old residual is gone


@pytest.mark.parametrize("bad", [{"w": np.zeros((2, 4))}, {"w": np.zeros((2, 4), np.float32), "b": np.zeros(2)},
                                 {"w": np.full((2, 4), np.nan), "b": np.zeros(2)}])
def test_a_residual_file_that_does_not_fit_is_dropped_saying_why(tmp_path: Path, bad: dict[str, np.ndarray],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    store = ResidualStore(tmp_path, "dev-1")
    store.folder.mkdir(parents=True)
    save_weights(store.path("a" * 64), bad)
    with caplog.at_level(logging.WARNING):
        assert store.restore("a" * 64, MANIFEST) is None
    assert "dropping the error-feedback residual" in caplog.text


def test_a_restarted_device_sends_its_next_update_with_the_residual_it_kept(federation_files: FederationFiles,
                                                                           tmp_path: Path) -> None:
    """Train with a biased codec, restart the device on the same cache: the new agent holds the residual the first
    one saved after its upload, and its next update carries it (a device without it sends something else)."""
    topics = Topics("feedback")
    first = offline_agent(federation_files, tmp_path / "cache", topics)
    start = select(first._model.artifact.initial_weights(), first._model.artifact.manifest.federated)
    first._handle(topics.global_model, encode_tensors(GlobalHeader(0, 0, first._model.artifact_id), start))

    def train(agent: Any, task_id: str) -> bytes:
        task = TrainTask(task_id, 1, 0, agent._model.artifact_id, time.time() + 600, 1, 0.05, 5.0, 7,
                         codec="topk:0.05")
        agent._newest_task = task.task_id
        agent._handle(topics.task("u1"), encode(task))
        return next(p for t, p in agent._conn.published if t == topics.update("u1"))

    train(first, "t-1")
    kept = first._model.residual
    assert kept is not None and any(np.any(value != 0) for value in kept.values())
    assert ResidualStore(tmp_path / "cache", "u1").path(first._model.artifact_id).is_file()

    restarted = offline_agent(federation_files, tmp_path / "cache", topics)
    restarted._handle(topics.global_model, encode_tensors(GlobalHeader(0, 0, restarted._model.artifact_id), start))
    assert all(np.array_equal(restarted._model.residual[n], kept[n]) for n in kept)
    fresh = offline_agent(federation_files, tmp_path / "other-cache", topics)
    fresh._handle(topics.global_model, encode_tensors(GlobalHeader(0, 0, fresh._model.artifact_id), start))
    assert fresh._model.residual is None
    assert train(restarted, "t-2") != train(fresh, "t-2")  # same data, seed and task: only the residual differs
