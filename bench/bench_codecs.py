"""Update codecs (issue 14): bytes per device and round, accuracy against float32, round time on constrained links,
and what encoding and decoding cost.

Four phases, each saved to the json as its runs end (``--resume`` skips the
runs already there; ``--phases`` picks some):

1. **accuracy**: ``bench_fleet.py``'s accuracy run (the digits cnn, 100
   devices, Dirichlet 0.5, 30 rounds; ``bench_fleet.accuracy_options``) once
   per codec and seed, with ``--codec`` the only change: final and last-3
   accuracy, uplink bytes per update and downlink bytes per device and round,
   each codec's ratio to float32 on the same seed, the two targets (10x at
   <= 1 point lost, 30x at <= 2 points).
2. **large**: the same task with a model of about 1M parameters (the digits
   cnn with a 1920-unit dense layer), fewer devices and rounds, float32 and
   the most promising codecs of phase 1.
3. **links**: a fleet of the catalog's constrained profiles (LTE-M gateways and
   3G phones) under a finite ``--speedup``, so that transfers take their
   link's time: the simulated round time with float32 against the best codec
   of phase 1 (with ``--downlink-codec int8`` when this tree has it).
4. **cost**: in this process, no broker: one training step of each model
   (``Trainer.train_step``), each codec's encode on the device's path
   (``UpdatePipeline.encode``, error feedback included) and the coordinator's
   decode (``decode_tensors`` + ``codec.decode``) and whole per-update path
   (``decode_tensors`` + ``OpenRound.offer_update`` with fedavg).

Byte counts come from the round lines' ``bytes_up_per_device`` and
``bytes_down_per_device`` where the coordinator writes them; where it does not,
from the exact size of the payload the codec makes for the model's shapes
(``encode_tensors`` of an ``UpdateHeader`` and the codec's tensors), and the
section says which. Run from the project root: ``python bench/bench_codecs.py``
writes ``bench/results/codecs.json`` and its section of ``BENCHMARKS.md``;
``--quick`` (20 devices, 5 rounds, one seed, few codecs) writes only to the
temporary folder and prints the section.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import inspect
import json
import logging
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bench_fleet import (  # run as `python bench/<script>.py`; bench_fleet puts the project root on sys.path
    ACCURACY_CLIP_NORM,
    ACCURACY_DEVICES,
    ACCURACY_DEVICES_QUICK,
    ACCURACY_ROUNDS,
    ACCURACY_ROUNDS_QUICK,
    ACCURACY_SEEDS,
    ACCURACY_SEEDS_QUICK,
    BROKER,
    ROOT,
    RoundLog,
    accuracy_options,
    federated_result,
    fleet_config,
    machine_info,
    mean,
    num,
    pct,
    warm_artifact,
)
from bench_fleet import settings as fleet_settings
from bench_markdown import ok, update_section
from bench_strategies import points, suspicious, write_json

from device_profiles.fleet import run_fleet
from device_profiles.fleet_config import FleetConfig

START, END = "<!-- bench_codecs:start -->", "<!-- bench_codecs:end -->"
RESULTS = ROOT / "bench" / "results" / "codecs.json"
QUICK_RESULTS = Path(tempfile.gettempdir()) / "bench_codecs_quick.json"
PHASES = ("accuracy", "large", "links", "cost")

# The list, and two more past 30x on the digits cnn that keep more of the update than topk:0.01+int8 (55x
# there, with 16-bit positions): twice its values (topk:0.02+int8, 39x) and three times at 4 bits (topk:0.03+int4,
# 34x). Header included; the 1M model's positions take 32 bits, so its ratios differ.
CODECS = ("float32", "float16", "int8", "int4", "sign", "rotated-sign", "topk:0.1", "topk:0.01+int8",
          "topk:0.05+sign", "topk:0.02+int8", "topk:0.03+int4")
CODECS_QUICK = ("float32", "int8", "topk:0.01+int8")
TARGETS = ((10.0, 1.0), (30.0, 2.0))  # (at least this many times fewer uplink bytes, at most this many points lost)
DEFAULT_BEST = "topk:0.01+int8"  # the links phase's codec when phase 1 has not run

# The models: the fleet benchmark's digits cnn (filters 16, 32; 9,930 parameters) and the same cnn with a
# 1920-unit dense layer (1,008,970 parameters).
MODELS: dict[str, dict[str, Any]] = {"digits-cnn": {}, "cnn-1m": {"model": "cnn", "hidden": (1920,)}}
SMALL, LARGE = "digits-cnn", "cnn-1m"

LARGE_DEVICES, LARGE_DEVICES_QUICK = 20, 10
LARGE_ROUNDS, LARGE_ROUNDS_QUICK = 10, 2
LARGE_SEED = 0
LARGE_CODECS = 4  # besides float32: phase 1's target winners first, then these
LARGE_FALLBACK = ("topk:0.01+int8", "rotated-sign", "int8", "topk:0.02+int8")

LINKS_PROFILES = "gateway:0.5,phone-low:0.5"  # the catalog's LTE-M gateway and 3G phone
LINKS_DEVICES = 20
LINKS_ROUNDS = {SMALL: 10, LARGE: 5}
LINKS_ROUNDS_QUICK = {SMALL: 3}
# Simulated seconds per real second: float32 rounds then last a few real seconds (digits cnn about 5 simulated
# seconds on LTE-M, the 1M model about 430); the host's own time in a round is multiplied by it too.
LINKS_SPEEDUP = {SMALL: 2.0, LARGE: 10.0}
LINKS_TIMEOUT = {SMALL: 120.0, LARGE: 1200.0}  # simulated seconds: a round with a drop-out waits this long
LINKS_DOWNLINK = "int8"

COST_REPS = {SMALL: (200, 50), LARGE: (50, 15)}  # (training steps, encodes/decodes) timed per model
COST_REPS_QUICK = {SMALL: (50, 10), LARGE: (10, 3)}
COST_WARMUP = 5
TARGET_ENCODE_SHARE = 0.10  # encode <= this share of one training step, for the digits cnn

LINE_FIELDS = ("bytes_in", "bytes_out", "bytes_up", "bytes_up_per_device", "bytes_down", "bytes_down_per_device",
               "codec_mix", "compression", "reported", "selected", "duration_s", "closed_by", "sim_time", "status")


# ---------------------------------------------------------------- what a run is


@dataclass(frozen=True)
class Cell:
    """One fleet run: a phase, a model, the uplink codec, the downlink codec (None: the default), a seed."""

    phase: str
    model: str
    codec: str
    seed: int
    downlink: str | None = None

    @property
    def key(self) -> str:
        down = f" | down {self.downlink}" if self.downlink else ""
        return f"{self.phase} | {self.model} | {self.codec}{down} | seed {self.seed}"

    @property
    def label(self) -> str:
        """The run folder's name, short enough for a federation name (``acc-topk0.01-int8-s0``)."""
        parts = [self.phase[:5], self.model, self.codec, *(["dl" + self.downlink] if self.downlink else []),
                 f"s{self.seed}"]
        return re.sub(r"[^A-Za-z0-9.-]+", "-", "-".join(parts).replace(":", ""))


@dataclass(frozen=True)
class Plan:
    quick: bool
    phases: tuple[str, ...]
    devices: int
    rounds: int
    seeds: tuple[int, ...]
    codecs: tuple[str, ...]
    large_devices: int
    large_rounds: int
    links_rounds: dict[str, int]
    cost_reps: dict[str, tuple[int, int]]

    @classmethod
    def build(cls, quick: bool, phases: tuple[str, ...]) -> Plan:
        if quick:
            return cls(True, phases, ACCURACY_DEVICES_QUICK, ACCURACY_ROUNDS_QUICK, ACCURACY_SEEDS_QUICK,
                       CODECS_QUICK, LARGE_DEVICES_QUICK, LARGE_ROUNDS_QUICK, LINKS_ROUNDS_QUICK, COST_REPS_QUICK)
        return cls(False, phases, ACCURACY_DEVICES, ACCURACY_ROUNDS, ACCURACY_SEEDS, CODECS, LARGE_DEVICES,
                   LARGE_ROUNDS, LINKS_ROUNDS, COST_REPS)

    @property
    def results(self) -> Path:
        return QUICK_RESULTS if self.quick else RESULTS

    def identity(self) -> dict[str, Any]:
        """What a saved json must match for ``--resume`` to reuse its runs."""
        return {"quick": self.quick, "devices": self.devices, "rounds": self.rounds,
                "large": [self.large_devices, self.large_rounds], "links": self.links_rounds,
                "models": {k: {o: list(v) if isinstance(v, tuple) else v for o, v in m.items()}
                           for k, m in MODELS.items()},
                "fleet": accuracy_options(self.devices, self.rounds, 0) | {"seed": None}}


def has_option(name: str) -> bool:
    """Whether this tree's ``FleetConfig`` takes ``name`` (the downlink codec is being added as this is written)."""
    return name in {f.name for f in dataclasses.fields(FleetConfig)}


def cell_options(cell: Cell, plan: Plan) -> dict[str, Any]:
    """The ``FleetConfig`` options of a cell: bench_fleet's accuracy run, resized per phase, and the codec."""
    if cell.phase == "accuracy":
        options = accuracy_options(plan.devices, plan.rounds, cell.seed)
    elif cell.phase == "large":
        options = accuracy_options(plan.large_devices, plan.large_rounds, cell.seed)
    else:  # links: real link times, rounds back to back, the constrained profiles
        options = accuracy_options(LINKS_DEVICES, plan.links_rounds[cell.model], cell.seed) | {
            "speedup": LINKS_SPEEDUP[cell.model], "round_interval": 0.0, "day_seconds": None,
            "round_timeout": LINKS_TIMEOUT[cell.model], "profiles": LINKS_PROFILES}
    options |= MODELS[cell.model] | {"codec": cell.codec}
    if cell.downlink:
        options["downlink_codec"] = cell.downlink
    return options


# ---------------------------------------------------------------- running and keeping results


class Bench:
    """The results so far (``runs`` by cell key, ``payloads`` and ``cost`` by model), saved after every run."""

    def __init__(self, plan: Plan, runs_dir: Path, keep_runs: bool, report: dict[str, Any]) -> None:
        self.plan, self.runs_dir, self.keep_runs, self.report = plan, runs_dir, keep_runs, report
        self.started = time.perf_counter()
        self.ran = 0

    @property
    def runs(self) -> dict[str, Any]:
        runs: dict[str, Any] = self.report["runs"]
        return runs

    def run(self, cells: Iterable[Cell]) -> None:
        """Run every cell not already done, each one saved as it ends."""
        for cell in cells:
            if cell.key in self.runs:
                continue
            record = run_cell(cell, self.runs_dir, self.plan)
            folder = self.runs_dir / cell.label
            payloads = self.report["payloads"]
            if cell.model not in payloads:
                payloads[cell.model] = payload_sizes(folder / "artifact", self.all_codecs())
            if not self.keep_runs:
                shutil.rmtree(folder, ignore_errors=True)
            self.runs[cell.key] = record
            self.ran += 1
            self.save()
            elapsed = time.perf_counter() - self.started
            print(f"[{len(self.runs)} done, {self.ran} this session, {elapsed / 60:.1f} min] {cell.key}: final "
                  f"{pct(record['final_accuracy'])}, up {num(record['traffic']['up_per_device'], 0)} B/update, "
                  f"{record['run_fleet_call_s']:.0f} s{suspicious(record)}", flush=True)

    def all_codecs(self) -> list[str]:
        return list(dict.fromkeys([*self.plan.codecs, *LARGE_FALLBACK, DEFAULT_BEST, LINKS_DOWNLINK]))

    def save(self) -> None:
        self.report["bench_seconds"] = self.report.get("bench_seconds_before", 0.0) + (
            time.perf_counter() - self.started)
        write_json(self.plan.results, self.report)


def run_cell(cell: Cell, runs_dir: Path, plan: Plan) -> dict[str, Any]:
    """One fleet run of ``cell``: what it learned, its traffic, its round times."""
    options = cell_options(cell, plan)
    applied = has_option("downlink_codec") or "downlink_codec" not in options
    if not applied:
        del options["downlink_codec"]
        print(f"FleetConfig has no downlink_codec in this tree: {cell.key} runs with the default downlink")
    config = fleet_config(runs_dir, cell.label, prefix="bench-codec", **options)
    rounds = options["rounds"]
    print(f"run {cell.key}", flush=True)
    log = RoundLog(f"{cell.codec} s{cell.seed}", rounds)
    started = time.perf_counter()
    summary = run_fleet(config, on_round=log, note=print)
    call_s = time.perf_counter() - started
    federated = federated_result(summary, log.lines, options["devices"])
    rejected: Counter[str] = Counter()
    for line in log.lines:
        rejected.update(line.get("rejected", {}))
    tail = [a for a in federated["accuracy_per_round"][-3:] if a is not None]
    factor = config.speedup_value.factor
    return {
        "key": cell.key, "phase": cell.phase, "model": cell.model, "codec": cell.codec, "seed": cell.seed,
        "downlink": cell.downlink, "downlink_applied": applied and cell.downlink is not None,
        "federation": config.federation, "final_accuracy": summary.final_accuracy, "last3_mean": mean(tail),
        "federated": federated, "abandoned": summary.abandoned, "rejected": dict(sorted(rejected.items())),
        "nulled_rounds": sum(1 for line in log.lines if line.get("nulled")),
        "traffic": traffic(log.lines, summary.as_json(), options["devices"]),
        "lines": [{k: line[k] for k in LINE_FIELDS if k in line} for line in log.lines],
        "speedup": factor, "sim_round_s": None if factor is None else [
            line["duration_s"] * factor for line in log.lines],
        "closed_by": dict(sorted(Counter(str(line.get("closed_by")) for line in log.lines).items())),
        "profiles": summary.profiles, "run_fleet_call_s": round(call_s, 1),
        "loadavg_1min_after": round(os.getloadavg()[0], 2)}


def per_line_mean(lines: list[dict[str, Any]], field: str) -> float | None:
    values = [float(line[field]) for line in lines if isinstance(line.get(field), (int, float))]
    return mean(values)


def traffic(lines: list[dict[str, Any]], summary: dict[str, Any], devices: int) -> dict[str, Any]:
    """Bytes as the run measured them: the round lines' per-device fields when the coordinator writes them
    (``None`` when it does not), and what is always there (the coordinator's ``bytes_in`` per accepted update,
    statuses included; what devices received, artifact included, per device and round)."""
    reported = sum(int(line.get("reported", 0)) for line in lines)
    up = per_line_mean(lines, "bytes_up_per_device")
    if up is None and any("bytes_up" in line for line in lines) and reported:
        up = sum(int(line.get("bytes_up") or 0) for line in lines) / reported
    mix: Counter[str] = Counter()
    for line in lines:
        if isinstance(line.get("codec_mix"), dict):
            mix.update({str(k): int(v) for k, v in line["codec_mix"].items() if isinstance(v, (int, float))})
    received = summary.get("device_bytes_received")
    return {"up_per_device": up, "down_per_device": per_line_mean(lines, "bytes_down_per_device"),
            "compression": per_line_mean(lines, "compression"), "codec_mix": dict(mix) or None,
            "fields": sorted({k for line in lines for k in LINE_FIELDS if k in line}),
            "coordinator_in_per_update": sum(int(line.get("bytes_in", 0)) for line in lines) / reported
            if reported else None,
            "device_received_per_device_round": received / devices / len(lines) if received and lines else None,
            "summary_bytes": {k: v for k, v in summary.items() if "bytes" in k}}


def payload_sizes(artifact_dir: Path, codecs: Iterable[str]) -> dict[str, Any]:
    """Exact payload sizes for the artifact's shapes: an update in each codec (safetensors with its header, a
    fleet-sized device id and the coordinator's task id length), the float32 global model, and (where this tree
    has deltas) a global model's int8 delta."""
    from coordinator.rounds import task_seed
    from edge_runtime import protocol
    from edge_runtime.artifact import Artifact
    from edge_runtime.codecs import get_codec

    artifact = Artifact.load(artifact_dir)
    specs = tuple(getattr(artifact.manifest, "federated", artifact.manifest.weights))
    update = unit_update(specs)
    sizes, seed = {}, task_seed(0, 12, "dev-00042")
    for name in codecs:
        update_header = protocol.UpdateHeader("dev-00042", "0" * 32, 12, 11, 14, 0.123456789, 12.3456789, name)
        encoded = get_codec(name).encode(update, specs, seed, ACCURACY_CLIP_NORM)
        sizes[name] = len(protocol.encode_tensors(update_header, encoded.tensors))
    weights = {s.name: artifact.initial_weights()[s.name] for s in specs}
    header = protocol.GlobalHeader(11, 12, "0" * 64)
    if "sha256" in {f.name for f in dataclasses.fields(header)}:  # the hash the delta downlink adds
        header = dataclasses.replace(header, sha256="0" * 64)
    global_bytes = len(protocol.encode_tensors(header, weights))
    delta_bytes = None
    if hasattr(protocol, "DeltaHeader"):
        delta = protocol.DeltaHeader(12, 12, "0" * 64, 11, LINKS_DOWNLINK, seed, "0" * 64)
        encoded = get_codec(LINKS_DOWNLINK).encode(update, specs, seed, ACCURACY_CLIP_NORM)
        delta_bytes = len(protocol.encode_tensors(delta, encoded.tensors))
    return {"parameters": sum(math.prod(s.shape) for s in specs), "update_bytes": sizes,
            "global_bytes": global_bytes, "delta_bytes": delta_bytes, "delta_codec": LINKS_DOWNLINK}


def unit_update(specs: Iterable[Any]) -> dict[str, np.ndarray]:
    """A Gaussian update of L2 norm 1 with the given shapes (its size in bytes is all that is used)."""
    rng = np.random.default_rng(0)
    update = {s.name: rng.normal(size=s.shape).astype(np.float32) for s in specs}
    scale = np.float32(1.0 / math.sqrt(sum(float(np.sum(v.astype(np.float64) ** 2)) for v in update.values())))
    return {k: v * scale for k, v in update.items()}


# ---------------------------------------------------------------- the phases


def accuracy_phase(bench: Bench) -> None:
    """Phase 1: every codec on every seed, a seed's codecs together (so a partial run is paired already)."""
    bench.run(Cell("accuracy", SMALL, codec, seed) for seed in bench.plan.seeds for codec in bench.plan.codecs)


def large_codecs(report: dict[str, Any], plan: Plan) -> list[str]:
    """float32 and the most promising codecs: phase 1's best for each target, then ``LARGE_FALLBACK``."""
    rows = accuracy_rows(report, plan)
    winners = [v["best"] for v in target_verdicts(rows) if v["best"]]
    picked = [c for c in dict.fromkeys([*winners, *LARGE_FALLBACK]) if c != "float32"]
    return ["float32", *picked[: 1 if plan.quick else LARGE_CODECS]]


def large_phase(bench: Bench) -> None:
    """Phase 2: the 1M-parameter model, one seed, float32 and the promising codecs."""
    codecs = large_codecs(bench.report, bench.plan)
    bench.report["large_codecs"] = codecs
    bench.run(Cell("large", LARGE, codec, LARGE_SEED) for codec in codecs)


def links_cells(report: dict[str, Any], plan: Plan) -> list[Cell]:
    """Per model: float32, the best codec, and the best codec with the int8 downlink (when this tree has it)."""
    best = best_codec(accuracy_rows(report, plan))["codec"]
    downlink = LINKS_DOWNLINK if has_option("downlink_codec") else None
    cells = []
    for model in plan.links_rounds:
        cells += [Cell("links", model, "float32", 0), Cell("links", model, best, 0)]
        if downlink:
            cells.append(Cell("links", model, best, 0, downlink))
        if codec_auto():
            cells.append(Cell("links", model, "auto", 0, downlink))
    return cells


def codec_auto() -> bool:
    """Whether this tree's coordinator takes ``--codec auto`` (each device's codec by its link class)."""
    try:
        from coordinator.codec_choice import AUTO
    except ImportError:
        return False
    return bool(AUTO == "auto")


def links_phase(bench: Bench) -> None:
    cells = links_cells(bench.report, bench.plan)
    bench.report["links_cells"] = [dataclasses.asdict(c) for c in cells]
    bench.run(cells)


def cost_phase(bench: Bench) -> None:
    """Phase 4, in this process: per model, a training step and each codec's encode and decode."""
    for model in bench.plan.cost_reps:
        if model in bench.report["cost"]:
            continue
        print(f"cost: {model}", flush=True)
        bench.report["cost"][model] = measure_cost(model, bench.plan, bench.runs_dir)
        bench.save()


def model_artifact(model: str, runs_dir: Path) -> tuple[Path, Any]:
    """The model's artifact as the fleet exports it (TensorFlow in a child process), and its training split."""
    from device_profiles.prepare import choose_family, class_count, default_cache, export_artifact, split_data
    from device_profiles.run_folder import RunFolder

    config = fleet_config(runs_dir, f"cost-{model}", prefix="bench-codec",
                          **accuracy_options(ACCURACY_DEVICES, 1, 0), **MODELS[model])
    warm_artifact(config)
    train, test, _ = split_data(config)
    folder = RunFolder(config.out)
    folder.root.mkdir(parents=True, exist_ok=True)
    path = export_artifact(config, train, class_count(train, test), choose_family(config, train), folder,
                           default_cache())
    return path, train


def time_steps(trainer: Any, x: np.ndarray, y: np.ndarray, reps: int) -> tuple[list[float], Any, Any]:
    """``reps`` timed ``train_step`` calls on one full batch (ms) after warm-up; the weights before and after."""
    base = trainer.get_weights()
    batch = trainer.manifest.train_batch_size
    xs, ys = x[:batch], y[:batch]
    for _ in range(COST_WARMUP):
        trainer.train_step(xs, ys)
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        trainer.train_step(xs, ys)
        times.append((time.perf_counter() - started) * 1e3)
    return times, trainer.get_weights(), base


def measure_cost(model: str, plan: Plan, runs_dir: Path) -> dict[str, Any]:
    from edge_runtime.artifact import Artifact
    from edge_runtime.trainer import Trainer

    steps, reps = plan.cost_reps[model]
    path, train = model_artifact(model, runs_dir)
    artifact = Artifact.load(path)
    trainer = Trainer(artifact)
    times, local, base = time_steps(trainer, train.x, train.y, steps)
    step_ms = statistics.median(times)
    codecs = {}
    for codec in plan.codecs:
        codecs[codec] = codec_cost(path, codec, local, base, reps)
        print(f"  {model} {codec}: encode {codecs[codec]['encode_ms']:.3f} ms "
              f"({100 * codecs[codec]['encode_ms'] / step_ms:.0f}% of a {step_ms:.3f} ms step), decode "
              f"{codecs[codec]['decode_ms']:.3f} ms, coordinator path {codecs[codec]['coordinator_ms']:.3f} ms",
              flush=True)
    batch, devices = artifact.manifest.train_batch_size, plan.devices if model == SMALL else plan.large_devices
    epochs = accuracy_options(devices, 1, 0)["local_epochs"]
    return {"model": model, "parameters": artifact.manifest.parameter_count, "batch_size": batch,
            "step_reps": steps, "codec_reps": reps, "step_ms": step_ms, "step_p90_ms": float(np.percentile(times, 90)),
            "task_devices": devices, "task_epochs": epochs, "train_examples": len(train.y),
            "task_steps": epochs * math.ceil(len(train.y) / devices / batch), "codecs": codecs}


def encode_update(pipeline: Any, device: str, task: Any, local: Any, base: Any, residual: Any) -> Any:
    """``UpdatePipeline.encode`` as the agent calls it, with the device's residual where this tree keeps one."""
    from bench_coordinator import EXAMPLES, TRAIN_LOSS

    extra = {"residual": residual} if "residual" in inspect.signature(pipeline.encode).parameters else {}
    return pipeline.encode(device, task, local, base, EXAMPLES, TRAIN_LOSS, **extra)


def codec_cost(artifact_dir: Path, codec: str, local: Any, base: Any, reps: int) -> dict[str, Any]:
    """Median ms over ``reps`` devices (the first left out) of: the device's encode (with a residual from an earlier
    update for a biased codec) and the codec's own ``encode`` in it, the coordinator's decode, and its whole
    per-update path (fedavg's accumulator)."""
    from bench_coordinator import round_setup

    from coordinator.strategies import build_strategy
    from edge_runtime.codecs import get_codec

    fedavg = build_strategy("fedavg", {})
    manifest, state, plan = round_setup(artifact_dir, fedavg, reps + 1)
    plan = dataclasses.replace(plan, codec=codec, clip_norm=ACCURACY_CLIP_NORM)
    specs = tuple(getattr(manifest, "federated", manifest.weights))
    device = device_side(plan, specs, local, base)
    coordinator = coordinator_side(plan, state, specs, fedavg, device["payloads"],
                                   get_codec(codec).payload_limit(manifest.parameter_count))
    return {"encode_ms": statistics.median(device["encode_ms"][1:]),
            "codec_encode_ms": statistics.median(device["codec_ms"][1:]),
            "decode_ms": statistics.median(coordinator["decode_ms"][1:]),
            "coordinator_ms": statistics.median(coordinator["whole_ms"][1:]),
            "payload_bytes": len(device["payloads"][0]), "feedback": get_codec(codec).feedback,
            "residual_kept": device["residual"] is not None}


def device_side(plan: Any, specs: tuple[Any, ...], local: Any, base: Any) -> dict[str, Any]:
    """One payload per selected device, each encoded with its own task seed: the pipeline's time and, apart, the
    codec's ``encode`` on the clipped update."""
    from bench_coordinator import EXAMPLES

    from coordinator.rounds import task_seed
    from edge_runtime.codecs import get_codec
    from edge_runtime.protocol import TrainTask
    from edge_runtime.update_stages import UpdatePipeline
    from edge_runtime.updates import clip, difference

    def task(device: str) -> TrainTask:
        return TrainTask(task_id=plan.task_id, round=plan.number, model_version=plan.model_version,
                         artifact_id="bench", deadline=plan.deadline, epochs=1, lr=0.05, clip_norm=plan.clip_norm,
                         seed=task_seed(plan.seed, plan.number, device), codec=plan.codec, max_examples=EXAMPLES)

    pipeline, devices, codec = UpdatePipeline(), sorted(plan.selected), get_codec(plan.codec)
    residual = getattr(encode_update(pipeline, devices[0], task(devices[0]), local, base, None), "residual", None)
    clipped, _ = clip(difference(local, base), plan.clip_norm)
    out: dict[str, Any] = {"encode_ms": [], "codec_ms": [], "payloads": [], "residual": residual}
    for device in devices:
        started = time.perf_counter()
        out["payloads"].append(encode_update(pipeline, device, task(device), local, base, residual).payload)
        out["encode_ms"].append((time.perf_counter() - started) * 1e3)
        started = time.perf_counter()
        codec.encode(clipped, specs, task(device).seed, plan.clip_norm)
        out["codec_ms"].append((time.perf_counter() - started) * 1e3)
    return out


def coordinator_side(plan: Any, state: Any, specs: tuple[Any, ...], strategy: Any, payloads: list[bytes],
                     limit: int) -> dict[str, list[float]]:
    """Each payload decoded (``decode_tensors`` + ``codec.decode``), then offered to an open round as the
    coordinator does (``decode_tensors`` + ``OpenRound.offer_update``)."""
    from coordinator.rounds import OpenRound, task_seed
    from edge_runtime.codecs import get_codec
    from edge_runtime.protocol import UpdateHeader, decode_tensors

    codec, current = get_codec(plan.codec), OpenRound(plan, state, specs, strategy)
    out: dict[str, list[float]] = {"decode_ms": [], "whole_ms": []}
    for device, payload in zip(sorted(plan.selected), payloads, strict=True):
        started = time.perf_counter()
        _header, tensors = decode_tensors(payload, UpdateHeader, limit)
        codec.decode(tensors, specs, task_seed(plan.seed, plan.number, device))
        out["decode_ms"].append((time.perf_counter() - started) * 1e3)
        started = time.perf_counter()
        header, tensors = decode_tensors(payload, UpdateHeader, limit)
        refused = current.offer_update(device, True, header, tensors)
        out["whole_ms"].append((time.perf_counter() - started) * 1e3)
        if refused is not None:
            raise SystemExit(f"the benchmark's own {plan.codec} update was refused: {refused}")
    return out


# ---------------------------------------------------------------- summaries


def up_bytes(report: dict[str, Any], run: dict[str, Any]) -> tuple[float | None, str]:
    """Uplink bytes per update: measured by the coordinator's round lines, else the codec's exact payload size."""
    measured = run["traffic"]["up_per_device"]
    if measured is not None:
        return measured, "measured"
    return report["payloads"].get(run["model"], {}).get("update_bytes", {}).get(run["codec"]), "computed"


def down_bytes(report: dict[str, Any], run: dict[str, Any]) -> tuple[float | None, str]:
    """Downlink bytes per device and round: measured by the round lines, else the payload every device holding the
    model receives per version (the float32 global model; the int8 delta where the run used one)."""
    measured = run["traffic"]["down_per_device"]
    if measured is not None:
        return measured, "measured"
    sizes = report["payloads"].get(run["model"], {})
    if run.get("downlink_applied") and sizes.get("delta_bytes"):
        return sizes["delta_bytes"], "computed"
    return sizes.get("global_bytes"), "computed"


def paired(report: dict[str, Any], cell: Cell, reference: Cell) -> dict[str, Any] | None:
    """One codec run against float32's on the same seed (and phase and model): bytes, ratio, points lost."""
    run, base = report["runs"].get(cell.key), report["runs"].get(reference.key)
    if run is None or base is None:
        return None
    (up, up_src), (base_up, _) = up_bytes(report, run), up_bytes(report, base)
    down, down_src = down_bytes(report, run)

    def lost(field: str) -> float | None:
        return None if base[field] is None or run[field] is None else 100 * (base[field] - run[field])

    return {"seed": cell.seed, "final": run["final_accuracy"], "last3": run["last3_mean"], "up": up, "down": down,
            "up_source": up_src, "down_source": down_src, "ratio": base_up / up if up and base_up else None,
            "loss_points": lost("final_accuracy"), "loss_last3_points": lost("last3_mean"),
            "notes": suspicious(run).strip(" ()")}


def codec_row(codec: str, pairs: list[dict[str, Any]], seeds: int) -> dict[str, Any]:
    finals = [p["final"] or 0.0 for p in pairs]

    def avg(field: str) -> float | None:
        values = [p[field] for p in pairs if p[field] is not None]
        return mean(values) if len(values) == len(pairs) else None

    return {"codec": codec, "seeds": [p["seed"] for p in pairs], "final": finals, "mean_final": mean(finals),
            "half_range_points": 50 * (max(finals) - min(finals)) if finals else None,
            "mean_last3": avg("last3"), "up": avg("up"), "down": avg("down"), "ratio": avg("ratio"),
            "loss_points": avg("loss_points"), "loss_last3_points": avg("loss_last3_points"),
            "up_source": pairs[0]["up_source"] if pairs else None,
            "down_source": pairs[0]["down_source"] if pairs else None, "complete": len(pairs) == seeds,
            "notes": "; ".join(dict.fromkeys(filter(None, (p["notes"] for p in pairs))))}


def meets(row: dict[str, Any], ratio: float, loss: float) -> bool:
    return (row["complete"] and row["ratio"] is not None and row["loss_points"] is not None
            and row["ratio"] >= ratio and row["loss_points"] <= loss)


def accuracy_rows(report: dict[str, Any], plan: Plan) -> list[dict[str, Any]]:
    """Per codec over the seeds run so far: bytes, ratio to float32 and points lost, paired by seed."""
    rows = []
    for codec in plan.codecs:
        pairs = [paired(report, Cell("accuracy", SMALL, codec, s), Cell("accuracy", SMALL, "float32", s))
                 for s in plan.seeds]
        done = [p for p in pairs if p is not None]
        if done:
            row = codec_row(codec, done, len(plan.seeds))
            row["targets"] = [meets(row, r, p) for r, p in TARGETS]
            rows.append(row)
    return rows


def target_verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per target: the codecs that meet it, and the one among them with the highest ratio."""
    out = []
    for ratio, loss in TARGETS:
        holding = [r for r in rows if r["codec"] != "float32" and meets(r, ratio, loss)]
        best = max(holding, key=lambda r: r["ratio"], default=None)
        out.append({"ratio": ratio, "loss_points": loss, "codecs": [r["codec"] for r in holding],
                    "best": best and best["codec"], "best_ratio": best and best["ratio"],
                    "best_loss_points": best and best["loss_points"], "holds": best is not None})
    return out


def best_codec(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The links phase's codec: the highest ratio meeting the 30x target, else the 10x one, else the highest ratio
    within the 30x target's loss, else ``DEFAULT_BEST``."""
    for verdict in reversed(target_verdicts(rows)):
        if verdict["best"]:
            return {"codec": verdict["best"], "why": f"highest ratio meeting {verdict['ratio']:g}x at "
                                                     f"<= {verdict['loss_points']:g} points"}
    loss = TARGETS[-1][1]
    near = [r for r in rows if r["codec"] != "float32" and r["ratio"] and r["loss_points"] is not None
            and r["loss_points"] <= loss]
    if near:
        return {"codec": max(near, key=lambda r: r["ratio"])["codec"],
                "why": f"no codec met a target: the highest ratio within {loss:g} points"}
    return {"codec": DEFAULT_BEST, "why": "no accuracy result to choose by: the default"}


def large_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for codec in report.get("large_codecs", []):
        pair = paired(report, Cell("large", LARGE, codec, LARGE_SEED), Cell("large", LARGE, "float32", LARGE_SEED))
        if pair is not None:
            rows.append({"codec": codec, **pair})
    return rows


def links_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Per links run: bytes, the simulated round time (mean, median), and its drop from float32's."""
    rows = []
    for spec in report.get("links_cells", []):
        cell = Cell(**spec)
        run = report["runs"].get(cell.key)
        base = report["runs"].get(Cell("links", cell.model, "float32", cell.seed).key)
        if run is None or not run["sim_round_s"]:
            continue
        up, up_src = up_bytes(report, run)
        down, down_src = down_bytes(report, run)
        sim = run["sim_round_s"]
        base_mean = statistics.mean(base["sim_round_s"]) if base and base["sim_round_s"] else None
        sizes = report["payloads"].get(cell.model, {})
        delta = sizes.get("delta_bytes") if run["downlink_applied"] else None
        rows.append({"model": cell.model, "codec": cell.codec, "downlink": cell.downlink, "delta": delta,
                     "downlink_applied": run["downlink_applied"], "up": up, "down": down, "up_source": up_src,
                     "down_source": down_src, "rounds": len(sim), "mean_s": statistics.mean(sim),
                     "median_s": statistics.median(sim), "closed_by": run["closed_by"], "speedup": run["speedup"],
                     "drop": None if not base_mean else 1 - statistics.mean(sim) / base_mean,
                     "final_accuracy": run["final_accuracy"], "notes": suspicious(run).strip(" ()")})
    return rows


def expected_links(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """From the catalog alone: each constrained profile's download + upload time for each links row's bytes."""
    from device_profiles.profiles import load_profiles

    profiles = load_profiles()
    names = [part.split(":")[0] for part in LINKS_PROFILES.split(",")]
    out = []
    for row in rows:
        if row["up"] is None or row["down"] is None:
            continue
        down = row["delta"] if row["delta"] is not None else row["down"]
        for name in names:
            link = profiles[name].network
            out.append({"model": row["model"], "codec": row["codec"], "downlink": row["downlink"], "profile": name,
                        "link": f"{link.kind}, {link.up_kbps:g}/{link.down_kbps:g} kbps up/down, "
                                f"{link.latency_ms:g} ms",
                        "download_s": link.download_s(int(down)), "upload_s": link.upload_s(int(row["up"]))})
    return out


def summarize(report: dict[str, Any], plan: Plan) -> None:
    rows = accuracy_rows(report, plan)
    report["accuracy"] = rows
    report["verdicts"] = target_verdicts(rows)
    report["best_codec"] = best_codec(rows)
    report["large"] = large_rows(report)
    report["links"] = links_rows(report)
    report["links_expected"] = expected_links(report["links"])


# ---------------------------------------------------------------- report


def size(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def times(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


def source_mark(*sources: str | None) -> str:
    return "" if all(s == "measured" for s in sources if s) else " †"


def target_cell(row: dict[str, Any], index: int) -> str:
    ratio, loss = TARGETS[index]
    if row["codec"] == "float32":
        return "-"
    why = []
    if row["ratio"] is not None and row["ratio"] < ratio:
        why.append(f"{row['ratio']:.1f}x")
    if row["loss_points"] is not None and row["loss_points"] > loss:
        why.append(f"{row['loss_points']:+.1f} pts")
    if not row["complete"]:
        why.append("seeds missing")
    return ok(row["targets"][index]) + (f" ({', '.join(why)})" if why else "")


def bytes_note(report: dict[str, Any]) -> str:
    fields = {f for run in report["runs"].values() for f in run["traffic"]["fields"]}
    have = [f for f in ("bytes_up_per_device", "bytes_down_per_device") if f in fields]
    if len(have) == 2:
        return ("Bytes are the coordinator's round lines': uplink `bytes_up_per_device` (accepted updates' payload "
                "bytes over their number), downlink `bytes_down_per_device` (what each selected device fetches for "
                "its task: the task and the global model, as the coordinator counts it).")
    return ("Bytes marked † are computed, not counted by the coordinator: this tree's round lines have "
            f"{' and '.join(f'`{f}`' for f in have) or 'neither'} of `bytes_up_per_device` / "
            "`bytes_down_per_device`. Uplink †: the exact size of the payload the codec makes for the model's "
            "shapes (`encode_tensors` of an `UpdateHeader` with a fleet-sized device id and the coordinator's task "
            "id length, and the codec's tensors). Downlink †: the payload every device holding the model receives "
            "per new version, the float32 global model (`GlobalHeader`), or the int8 delta (`DeltaHeader`) where "
            "the run used one. Both are the same for every seed.")


def render_accuracy(report: dict[str, Any]) -> list[str]:
    fleet, seeds = report["settings"]["fleet"], report["settings"]["seeds"]
    head = " / ".join(map(str, seeds))
    lines = ["### Bytes and accuracy per codec: the digits cnn", "",
             f"`bench_fleet.py`'s accuracy task with `--codec` the only change: the digits `cnn` ("
             f"{report['payloads'].get(SMALL, {}).get('parameters', 9930):,} parameters), {fleet['devices']} "
             f"devices, `partition={fleet['partition']}`, {fleet['rounds']} rounds, `fraction={fleet['fraction']}`, "
             f"`local_epochs={fleet['local_epochs']}`, `server_lr={fleet['server_lr']}`, "
             f"`clip_norm={fleet['clip_norm']}`, seeds {head}. Each codec's ratio and points lost are against "
             "float32's run on the same seed (same split, partition and profiles), averaged over the seeds; "
             "accuracy is the final test accuracy, mean ± half its range over the seeds; points lost are float32's "
             "final minus the codec's (last three rounds beside it: one run moves by up to 2 points, see the "
             "strategies section's noise floor). The biased codecs (sign, topk) run with the devices' error "
             "feedback; rotated-sign is unbiased (EDEN's scale) and runs without. " + bytes_note(report), "",
             "| codec | uplink bytes/update | vs float32 | downlink bytes/device/round "
             f"| final accuracy (seeds {head}) | mean of last 3 rounds | points lost (final / last 3) "
             "| 10x at ≤ 1 pt | 30x at ≤ 2 pts | notes |",
             "| --- | ---: | ---: | ---: | --- | ---: | --- | --- | --- | --- |"]
    for r in report["accuracy"]:
        lines.append(f"| `{r['codec']}` | {size(r['up'])}{source_mark(r['up_source'])} | {times(r['ratio'])} "
                     f"| {size(r['down'])}{source_mark(r['down_source'])} | {pct(r['mean_final'])} ± "
                     f"{num(r['half_range_points'])} ({' / '.join(pct(a) for a in r['final'])}) "
                     f"| {pct(r['mean_last3'])} | {points(r['loss_points'])} / {points(r['loss_last3_points'])} "
                     f"| {target_cell(r, 0)} | {target_cell(r, 1)} | {r['notes']} |")
    lines.append("")
    for v in report["verdicts"]:
        met = ", ".join(f"`{c}`" for c in v["codecs"])
        lines.append(f"- Target {v['ratio']:g}x fewer uplink bytes at ≤ {v['loss_points']:g} point(s) lost: "
                     + (f"met by {met}; highest ratio `{v['best']}` ({times(v['best_ratio'])}, "
                        f"{points(v['best_loss_points'])} points): **pass**." if v["holds"] else
                        "no codec meets it: **MISS**."))
    return [*lines, ""]


def render_large(report: dict[str, Any]) -> list[str]:
    large = report["settings"]["large"]
    params = report["payloads"].get(LARGE, {}).get("parameters")
    lines = ["### A model of about 1M parameters", "",
             f"The same task with the digits cnn widened by a dense layer of {MODELS[LARGE]['hidden'][0]} units "
             f"(`--hidden {MODELS[LARGE]['hidden'][0]}`, {size(params)} parameters), {large['devices']} devices, "
             f"{large['rounds']} rounds, seed {LARGE_SEED} only (time), float32 and the codecs phase 1 found most "
             "promising (each target's highest-ratio codec, then a fixed list). One seed: a difference of a point "
             "or two is within one run's noise. Ratio and points lost are against float32's run here. "
             + bytes_note(report), "",
             "| codec | uplink bytes/update | vs float32 | downlink bytes/device/round | final accuracy "
             "| last 3 rounds | points lost (final / last 3) | notes |",
             "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for r in report["large"]:
        lines.append(f"| `{r['codec']}` | {size(r['up'])}{source_mark(r['up_source'])} | {times(r['ratio'])} "
                     f"| {size(r['down'])}{source_mark(r['down_source'])} | {pct(r['final'])} | {pct(r['last3'])} "
                     f"| {points(r['loss_points'])} / {points(r['loss_last3_points'])} | {r['notes']} |")
    return [*lines, ""]


def auto_note(report: dict[str, Any]) -> str:
    """What ``--codec auto`` chose on these links (its default table), when the links phase ran it."""
    if not any(r["codec"] == "auto" for r in report.get("links", [])):
        return ""
    from coordinator.codec_choice import CodecTable
    from device_profiles.profiles import load_profiles

    table, profiles = CodecTable(), load_profiles()
    names = [part.split(":")[0] for part in LINKS_PROFILES.split(",")]
    mix: set[str] = set()
    for run in report["runs"].values():
        if run["phase"] == "links" and run["codec"] == "auto":
            mix.update(run["traffic"].get("codec_mix") or {})
    return (f" `auto` is `--codec auto`: each device's codec from its link class by the coordinator's default table "
            f"(constrained `{table.constrained}`, cellular `{table.cellular}`); the accepted updates came in "
            f"{', '.join(f'`{c}`' for c in sorted(mix)) or 'codecs not reported'}, so its uplink bytes are a mean "
            f"over a mix ({', '.join(f'{n} up {profiles[n].network.up_kbps:g} kbps' for n in names)}).")


def delta_cell(row: dict[str, Any]) -> str:
    return "" if row["delta"] is None else f" (int8 delta {size(row['delta'])} ‡)"


def render_links(report: dict[str, Any]) -> list[str]:
    best = report.get("best_codec", {})
    rounds = ", ".join(f"{m} {n}" for m, n in report["settings"]["links_rounds"].items())
    speedups = ", ".join(f"{m} {LINKS_SPEEDUP[m]:g}" for m in report["settings"]["links_rounds"])
    lines = ["### Round time on constrained links", "",
             f"A fleet of the catalog's constrained profiles, `profiles={LINKS_PROFILES}` (LTE-M gateways, "
             f"3G-class low-end phones), {LINKS_DEVICES} devices, seed 0, rounds back to back "
             f"(`round_interval=0`), rounds per model: {rounds}; the accuracy task's other options. With a finite "
             f"`--speedup` (per model: {speedups}) each device waits out its link: latency + size / bandwidth for "
             "the global model's download and the update's upload, and its training time times its slowdown. "
             "Simulated round time is each round's `duration_s` (selection to commit, test evaluation included) "
             "times the speedup; the host's own time in a round (MQTT, the 20 device threads, evaluation) is "
             f"multiplied too. The codec is phase 1's best: `{best.get('codec')}` ({best.get('why')}); "
             f"`--downlink-codec {LINKS_DOWNLINK}` adds the global model as an int8 delta. Drop: 1 - mean round "
             "time / float32's. " + bytes_note(report) + " ‡: the int8 delta a device one version behind downloads "
             "instead of the model, computed (`encode_tensors` of a `DeltaHeader` and the int8 codec's tensors for "
             "the model's shapes); the catalog estimate below uses it for those rows." + auto_note(report), "",
             "| model | codec | downlink | uplink bytes/update | downlink bytes/device/round | simulated round, "
             "mean / median (s) | drop vs float32 | closed by | final accuracy | notes |",
             "| --- | --- | --- | ---: | ---: | --- | ---: | --- | ---: | --- |"]
    for r in report["links"]:
        down = r["downlink"] if r["downlink_applied"] else "float32 (default)"
        closed = ", ".join(f"{k} {v}" for k, v in r["closed_by"].items())
        reference = r["codec"] == "float32" and not r["downlink"]
        drop = "-" if r["drop"] is None or reference else f"{100 * r['drop']:.0f}%"
        lines.append(f"| {r['model']} | `{r['codec']}` | {down} | {size(r['up'])}{source_mark(r['up_source'])} "
                     f"| {size(r['down'])}{source_mark(r['down_source'])}{delta_cell(r)} "
                     f"| {r['mean_s']:.1f} / {r['median_s']:.1f} "
                     f"| {drop} | {closed} | {pct(r['final_accuracy'])} | {r['notes']} |")
    lines += ["", "What the catalog's links alone make of those bytes (latency + size / bandwidth, download then "
              "upload; no training, no waiting for other devices):", "",
              "| model | codec | downlink | profile | link | download (s) | upload (s) | both (s) |",
              "| --- | --- | --- | --- | --- | ---: | ---: | ---: |"]
    for e in report["links_expected"]:
        lines.append(f"| {e['model']} | `{e['codec']}` | {e['downlink'] or 'float32'} | {e['profile']} "
                     f"| {e['link']} | {e['download_s']:.2f} | {e['upload_s']:.2f} "
                     f"| {e['download_s'] + e['upload_s']:.2f} |")
    return [*lines, ""]


def render_cost(report: dict[str, Any]) -> list[str]:
    lines = ["### Encode and decode cost", "",
             "In the benchmark process, no broker, one thread. A training step is `Trainer.train_step` on one full "
             f"batch of the model's training split (median of the timed steps after {COST_WARMUP} warm-up steps). "
             "Encode is the device's whole path from trained weights to payload, `UpdatePipeline.encode` (difference, "
             "clip, error feedback with a residual kept from an earlier update for a biased codec, the codec, "
             "`encode_tensors`), for the update those steps made; the codec's own `encode` on the clipped update is "
             "shown apart. Decode is `decode_tensors` + `codec.decode`; the coordinator's path is `decode_tensors` + "
             "`OpenRound.offer_update` (non-finite check, decode, norm check, fedavg's accumulator). Medians over one "
             "payload per device, each with its own task seed, the first left out. A task's training is the mean "
             "device's: local epochs x ceil(examples per device / batch) steps, in the fleet runs above. Target: "
             f"encode ≤ {100 * TARGET_ENCODE_SHARE:g}% of one training step for the digits cnn.", "",
             "| model | codec | payload (bytes) | encode (ms) | share of a step | share of a task's training "
             "| codec's encode alone (ms) | decode (ms) | coordinator path (ms) | target |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for model, cost in report["cost"].items():
        for codec, c in cost["codecs"].items():
            share = c["encode_ms"] / cost["step_ms"]
            target = ok(share <= TARGET_ENCODE_SHARE) if model == SMALL else "-"
            lines.append(f"| {model} | `{codec}` | {size(c['payload_bytes'])} | {c['encode_ms']:.3f} "
                         f"| {100 * share:.0f}% | {100 * share / cost['task_steps']:.0f}% "
                         f"| {c['codec_encode_ms']:.3f} | {c['decode_ms']:.3f} | {c['coordinator_ms']:.3f} "
                         f"| {target} |")
    lines.append("")
    for model, cost in report["cost"].items():
        lines.append(f"- {model}: {cost['parameters']:,} parameters, batch {cost['batch_size']}, one training step "
                     f"{cost['step_ms']:.3f} ms median ({cost['step_p90_ms']:.3f} ms p90, {cost['step_reps']} steps); "
                     f"a task: {cost['task_epochs']} epochs x ceil({cost['train_examples']:,} / "
                     f"{cost['task_devices']} devices / {cost['batch_size']}) = {cost['task_steps']} steps; "
                     f"{cost['codec_reps']} payloads per codec.")
    holding = [c for c, v in report["cost"].get(SMALL, {}).get("codecs", {}).items()
               if v["encode_ms"] <= TARGET_ENCODE_SHARE * report["cost"][SMALL]["step_ms"]]
    if SMALL in report["cost"]:
        lines.append(f"- Target, encode ≤ {100 * TARGET_ENCODE_SHARE:g}% of one digits-cnn training step: "
                     + (f"met by {', '.join(f'`{c}`' for c in holding)}: **pass**." if holding else
                        "no codec meets it: **MISS**."))
    return [*lines, ""]


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    loads = f"{report['loadavg_start'][0]:.2f} at the start, {report['loadavg_end'][0]:.2f} at the end"
    lines = [START, "## Update codecs: bytes, accuracy, round time and cost", "",
             f"Every fleet run is `run_fleet` from the benchmark process against the local Mosquitto ({BROKER}), a "
             "fresh federation per run, `--codec` naming the uplink codec (`edge_runtime/codecs/`; float32 is the "
             "default). Issue 14's targets: at least 10x fewer uplink bytes at no more than 1 point of accuracy "
             "lost, at least 30x at no more than 2; encode at most 10% of a training step on the digits cnn.", "",
             "Reproduce: `python bench/bench_codecs.py` (`--phases accuracy,large,links,cost`; `--resume` "
             "continues an interrupted run; raw numbers, every run's round lines: `bench/results/codecs.json`).", "",
             f"Measured {report['date']} on {m['cpu']} ({m['cores']} cores, {m['memory_mb']:,} MB), {m['platform']}, "
             f"Python {m['python']}; {pkgs}. {len(report['runs'])} fleet runs, {report['bench_seconds'] / 60:.0f} "
             f"min in all; load average (1 min) {loads}.", "",
             *(f"{note}\n" for note in report.get("notes", []))]
    if report.get("accuracy"):
        lines += render_accuracy(report)
    if report.get("large"):
        lines += render_large(report)
    if report.get("links"):
        lines += render_links(report)
    if report.get("cost"):
        lines += render_cost(report)
    return "\n".join([*lines, END])


# ---------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20 devices, 5 rounds, one seed, few codecs; writes only "
                                                        "to the temporary folder")
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)} (all)")
    p.add_argument("--resume", action="store_true", help="keep the runs already in the json, run the rest (without "
                                                         "it, the phases run start afresh and the others' results "
                                                         "in the json are kept)")
    p.add_argument("--report-only", action="store_true", help="render the json's runs, run nothing")
    p.add_argument("--runs", type=Path, help="keep the run folders here (default: a temporary folder, removed)")
    p.add_argument("--note", action="append", default=[], help="a sentence about the conditions, kept in the json "
                                                                "and printed under the section's header")
    args = p.parse_args(argv)
    args.phases = tuple(x.strip() for x in args.phases.split(",") if x.strip())
    unknown = [x for x in args.phases if x not in PHASES]
    if unknown or not args.phases:
        p.error(f"--phases: expected some of {', '.join(PHASES)}, got {', '.join(unknown) or 'nothing'}")
    return args


def settings_of(plan: Plan) -> dict[str, Any]:
    return {"fleet": fleet_settings(plan.quick)["accuracy"] | {"devices": plan.devices, "rounds": plan.rounds},
            "seeds": list(plan.seeds), "codecs": list(plan.codecs),
            "large": {"devices": plan.large_devices, "rounds": plan.large_rounds, "seed": LARGE_SEED},
            "links_rounds": plan.links_rounds, "links_profiles": LINKS_PROFILES, "links_devices": LINKS_DEVICES,
            "links_speedup": LINKS_SPEEDUP, "links_timeout_s": LINKS_TIMEOUT, "cost_reps": plan.cost_reps,
            "models": {k: {o: list(v) if isinstance(v, tuple) else v for o, v in m.items()}
                       for k, m in MODELS.items()},
            "targets": {"ratio_loss": TARGETS, "encode_share": TARGET_ENCODE_SHARE}}


def load_report(plan: Plan, resume: bool) -> dict[str, Any]:
    """A fresh report, or the saved one's results: all of them with ``resume`` (refused if it measured other
    numbers), else those of the phases not run now (none if it measured other numbers)."""
    report: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "plan": plan.identity(), "machine": machine_info(), "settings": settings_of(plan),
                              "runs": {}, "payloads": {}, "cost": {}, "bench_seconds_before": 0.0}
    saved = json.loads(plan.results.read_text(encoding="utf-8")) if plan.results.is_file() else None
    if saved is None or saved.get("plan") != json.loads(json.dumps(report["plan"])):
        if resume and saved is not None:
            raise SystemExit(f"{plan.results} measured other settings than this run's: start afresh without --resume")
        return report
    report.update({k: saved[k] for k in ("runs", "payloads", "cost", "notes", "large_codecs", "links_cells",
                                         "loadavg_start", "loadavg_end") if k in saved})
    report["bench_seconds_before"] = saved.get("bench_seconds", 0.0)
    if resume:
        report["date"] = saved.get("date", report["date"])
    else:  # the phases run now start afresh; the others' results stay
        report["runs"] = {k: v for k, v in report["runs"].items() if v["phase"] not in plan.phases}
        report["cost"] = {} if "cost" in plan.phases else report["cost"]
    print(f"kept from {plan.results}: {len(report['runs'])} runs and {len(report['cost'])} cost models", flush=True)
    return report


PHASE_RUNNERS = {"accuracy": accuracy_phase, "large": large_phase, "links": links_phase, "cost": cost_phase}


def main() -> int:
    args = parse_args(sys.argv[1:])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("coordinator").setLevel(logging.ERROR)  # late updates are counted per round, as in the CLI
    plan = Plan.build(args.quick, args.phases)
    report = load_report(plan, args.resume or args.report_only)
    runs_dir = args.runs or Path(tempfile.mkdtemp(prefix="bench-codecs-"))
    runs_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(plan, runs_dir, keep_runs=args.runs is not None, report=report)
    if not args.report_only:
        report["loadavg_start"] = os.getloadavg()
    try:
        for phase in () if args.report_only else plan.phases:
            PHASE_RUNNERS[phase](bench)
    finally:
        if args.runs is None:
            shutil.rmtree(runs_dir, ignore_errors=True)
    if not args.report_only:
        report["loadavg_end"] = os.getloadavg()
    report["notes"] = list(dict.fromkeys([*report.get("notes", []), *args.note]))
    summarize(report, plan)
    bench.save()
    section = render(report)
    print(section)
    if not plan.quick:
        update_section(ROOT / "BENCHMARKS.md", section, START, END)
        print(f"wrote {plan.results} and BENCHMARKS.md")
    else:
        print(f"wrote {plan.results} (a quick run: bench/results and BENCHMARKS.md left alone)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
