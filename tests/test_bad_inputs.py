"""Bad input from the network is refused with its reason, counted, and changes nothing.

A raw MQTT client plays the devices: two selected ones, an unselected one, one
that never announced itself. It sends every kind of bad update and status to a
real coordinator process through Mosquitto, then one good update and its
duplicate. With only one good update the round is abandoned, so the global
model must come out bit-identical.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.artifact import Artifact
from edge_runtime.protocol import (
    DeviceStatus,
    GlobalHeader,
    Topics,
    TrainTask,
    UpdateHeader,
    decode,
    decode_tensors,
    encode,
    encode_tensors,
    tensor_payload_limit,
)
from edge_runtime.weights import load_weights
from tests.conftest import FederationFiles
from tests.federation_tools import SYSTEM_BROKER, LineReader, Watcher, clear_retained, edgefl, start, stop_launched

pytestmark = pytest.mark.broker


def test_every_bad_input_is_rejected_by_reason_and_the_model_is_untouched(federation_files: FederationFiles,
                                                                           tmp_path: Path) -> None:
    federation = f"bad-{uuid.uuid4().hex[:10]}"
    topics = Topics(federation)
    artifact = Artifact.load(federation_files.artifact)
    initial = artifact.initial_weights()
    watcher = Watcher(SYSTEM_BROKER, [f"{topics.root}/#"])
    try:
        for device, eligible in (("rogue-a", True), ("rogue-b", True), ("bystander", False)):
            status = DeviceStatus(device, online=True, eligible=eligible, sent_at=time.time())
            watcher.publish(topics.status(device), encode(status), retain=True)
        coord = start(edgefl("-v", "coordinator", "--artifact", str(federation_files.artifact), "--state-dir",
                             str(tmp_path / "state"), "--federation", federation, "--broker", SYSTEM_BROKER,
                             "--rounds", "1", "--fraction", "1", "--min-clients", "2", "--over-select", "1",
                             "--min-reports", "2", "--round-timeout", "8", "--eval-every", "0"),
                      tmp_path / "coordinator.log")
        task = decode(watcher.wait_for(topics.task("rogue-a"), timeout=30), TrainTask)
        global_before = watcher.wait_for(topics.global_model)
        limit = tensor_payload_limit(artifact.manifest.parameter_count)
        expected = send_bad_inputs(watcher, topics, task, initial, limit)
        line = LineReader(coord).next(30)
        assert coord.wait(30) == 0  # it kept running and finished normally
        time.sleep(0.3)
        global_after = watcher.latest(topics.global_model)
    finally:
        stop_launched()
        watcher.close()
        clear_retained(SYSTEM_BROKER, federation)

    late = expected.pop("late")
    assert line["rejected"] == dict(sorted(expected.items())), line["rejected"]
    assert line["late"] == late
    assert (line["status"], line["reported"], line["closed_by"]) == ("abandoned", 1, "deadline")
    assert line["model_version"] == 0
    assert global_after == global_before
    header, published = decode_tensors(global_before, GlobalHeader, 10**8)
    assert header.version == 0
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    checkpoint = load_weights(tmp_path / "state" / state["arrays_file"])  # bit for bit the initial weights
    for name, value in initial.items():
        assert published[name].tobytes() == value.tobytes() == checkpoint[f"weights/{name}"].tobytes(), name


def send_bad_inputs(watcher: Watcher, topics: Topics, task: TrainTask, initial: dict[str, np.ndarray],
                    limit: int) -> Counter[str]:
    """Publish every bad input (then one good update and its duplicate); return the rejections expected."""
    rng = np.random.default_rng(0)
    good = {name: (rng.standard_normal(value.shape) * 1e-3).astype(np.float32) for name, value in initial.items()}
    expected: Counter[str] = Counter()

    def update(device: str = "rogue-a", tensors: dict[str, np.ndarray] | None = None, **fields: object) -> bytes:
        values: dict[str, object] = {"device_id": device, "task_id": task.task_id, "round": task.round,
                                     "model_version": task.model_version, "examples": 50, "train_loss": 0.5,
                                     "norm": 0.1, **fields}
        return encode_tensors(UpdateHeader(**values), good if tensors is None else tensors)  # type: ignore[arg-type]

    def send(reason: str, payload: bytes, device: str = "rogue-a") -> None:
        watcher.publish(topics.update(device), payload)
        expected[reason] += 1

    first = next(iter(good))
    send("unknown_device", update("ghost"), device="ghost")
    send("not_selected", update("bystander"), device="bystander")
    send("identity_mismatch", update("rogue-a"), device="rogue-b")
    send("wrong_round", update(round=task.round + 5))
    send("late", update(round=task.round - 1))
    send("wrong_task", update(task_id="not-the-task"))
    send("wrong_model_version", update(model_version=task.model_version + 1))
    send("bad_metadata", update(examples=0))
    send("examples_exceeded", update(examples=task.max_examples + 1))  # a device claiming more weight than the cap
    send("examples_exceeded", update(examples=2**63 - 1))
    send("wrong_codec", update(codec="float16", tensors={k: v.astype(np.float16) for k, v in good.items()}))
    send("wrong_codec", update(codec="no-such-codec"))
    send("bad_tensors", update(tensors={**good, "extra": np.zeros(3, np.float32)}))
    send("bad_tensors", update(tensors={k: v for k, v in good.items() if k != first}))
    send("bad_tensors", update(tensors={**good, first: good[first].reshape(-1)[:-1]}))
    send("bad_tensors", update(tensors={**good, first: good[first].astype(np.float64)}))
    send("non_finite", update(tensors={**good, first: np.full_like(good[first], np.nan)}))
    send("non_finite", update(tensors={**good, first: np.full_like(good[first], np.inf)}))
    send("norm_exceeded", update(tensors={k: v * 1e6 for k, v in good.items()}))
    send("malformed", update()[:-7])  # truncated
    send("malformed", b"\x00garbage that is not safetensors")
    send("oversized", b"\x00" * (limit + 1))
    watcher.publish(topics.status("rogue-c"), b"{not json", retain=True)
    expected["bad_status"] += 1
    watcher.publish(topics.update("rogue-a"), update())  # the one good update: accepted
    send("duplicate", update())
    return expected
