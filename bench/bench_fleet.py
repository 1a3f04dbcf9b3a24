"""Fleet emulation benchmark: memory and round time at 100 and 1,000 devices, and federated vs central accuracy.

Two measurements of ``edgefl fleet`` in one run, against the local Mosquitto:

* **Scale.** ``run_fleet`` is called in this process (so this process is the
  fleet's main process, running the coordinator) for N = 100 and N = 1000
  devices, rounds back to back. A background thread samples every 0.2 s the
  RSS of this process and of all its descendants (the device workers, an
  embedded broker if any), keeping the peak of their sum and the peak of each
  role; Mosquitto, a shared system service, is sampled apart and reported
  beside the sum, not in it. The artifact is exported beforehand in a separate
  process (the fleet then copies it from its cache), so TensorFlow never
  enters the measured process.
* **Accuracy.** The digits cnn trained by a federated run over a Dirichlet
  partition, beside the ceiling: the same artifact (same initial weights)
  trained centrally with ``edge_runtime.Trainer`` on the run's own
  ``data/train.npz`` and evaluated on its ``data/test.npz`` after every epoch.

Run from the project root: ``python bench/bench_fleet.py`` writes
``bench/results/fleet.json`` and its section of ``BENCHMARKS.md``.
``--quick`` (a smoke run with small numbers), ``--skip-scale`` and
``--skip-accuracy`` write only to the temporary folder and print the section.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from bench_markdown import cpu_name, ok, package_version, update_section  # run as `python bench/<script>.py`

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from device_profiles.fleet import run_fleet  # noqa: E402 -- after the path is set
from device_profiles.fleet_config import FleetConfig  # noqa: E402
from device_profiles.summary import FleetSummary  # noqa: E402

START, END = "<!-- bench_fleet:start -->", "<!-- bench_fleet:end -->"
PACKAGES = ("ai-edge-litert", "paho-mqtt", "numpy")
BROKER = "mqtt://127.0.0.1:1883"
MB = 2**20  # MB here are MiB, so the target reads as 4 GB = 4096 MB
SAMPLE_S = 0.2

# Scale: rounds back to back; a simulated day lasts 24 real minutes, so availability barely moves during a round.
SCALE_DEVICES, SCALE_DEVICES_QUICK = (100, 1000), (20, 100)
SCALE_ROUNDS, SCALE_ROUNDS_QUICK = 10, 3
SCALE_FRACTION = 0.1
TARGET_DEVICES, TARGET_RSS_MB = 1000, 4096

# Accuracy: easy to tune here; printed with the report.
ACCURACY_DEVICES, ACCURACY_DEVICES_QUICK = 100, 20
ACCURACY_ROUNDS, ACCURACY_ROUNDS_QUICK = 30, 5
ACCURACY_PARTITION = "dirichlet:0.5"
ACCURACY_FRACTION = 0.3
ACCURACY_LOCAL_EPOCHS = 5
ACCURACY_MIN_CLIENTS = 3
ACCURACY_SERVER_LR = 2.0  # measured here: 1.0 ends 2-5 points lower after 30 rounds on this partition
ACCURACY_CLIP_NORM = 50.0  # a bound, not a privacy setting: five local epochs move the weights further than 10
ACCURACY_ROUND_TIMEOUT = 5.0  # real seconds: a round with a drop-out waits for its deadline
# Rounds half an hour apart on the default 48-second simulated day: the 30 rounds span 15 simulated hours, so
# devices of every time zone take part as their nights come, instead of whichever half is eligible at the start.
ACCURACY_ROUND_INTERVAL = 1800.0
ACCURACY_DAY_SECONDS = 48.0
CENTRAL_EPOCHS = 30
ACCURACY_SEEDS, ACCURACY_SEEDS_QUICK = (0, 1, 2), (0,)  # one run is noisy (±1.5 points seen): the mean decides
CENTRAL_LR: float | None = None  # None: the artifact's own learning rate, the one the devices train with
TARGET_GAP_POINTS = 3.0  # "within": |central final - federated final| <= this many percentage points

ROUND_INTERVAL = 0.0
DAY_SECONDS = 1440.0
SPEEDUP = "max"


# ---------------------------------------------------------------- RSS sampling


def rss_mb(proc: psutil.Process) -> float | None:
    """A process's RSS in MB, or None once it has exited."""
    try:
        return float(proc.memory_info().rss) / MB
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def role_of(proc: psutil.Process, own_cmdline: list[str]) -> str | None:
    """What a descendant of the fleet's main process is, from its command line; None for a fork not yet exec'd."""
    try:
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    if cmdline == own_cmdline:  # between fork and exec it is a copy of this process: not a process of its own yet
        return None
    text = " ".join(cmdline)
    if "device_profiles.worker" in text:
        return "workers"
    if "broker" in text:
        return "broker"
    return "other"


def find_mosquitto() -> psutil.Process | None:
    """The system's Mosquitto: the oldest process of that name (tests may start private ones later)."""
    found = [p for p in psutil.process_iter(["name", "create_time"]) if p.info["name"] == "mosquitto"]
    oldest = min(found, key=lambda p: p.info["create_time"], default=None)
    if oldest is None:
        print("no process named mosquitto found: its RSS is not reported")
        return None
    try:
        oldest.memory_info()
    except psutil.AccessDenied:
        print(f"mosquitto (pid {oldest.pid}): RSS not readable by this user, not reported")
        return None
    return oldest


@dataclass
class RssPeaks:
    """Peaks over one run: the sum over the fleet's processes, each role's sum, each role's largest process."""

    samples: int = 0
    main_at_start_mb: float = 0.0
    sum_mb: float = 0.0
    by_role_mb: dict[str, float] = field(default_factory=dict)
    largest_process_mb: dict[str, float] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    mosquitto_at_start_mb: float | None = None
    mosquitto_mb: float | None = None


class RssSampler:
    """Samples this process and its descendants (and Mosquitto apart) every ``interval`` s on a thread."""

    def __init__(self, interval: float = SAMPLE_S) -> None:
        self.interval = interval
        self.peaks = RssPeaks()
        self._me = psutil.Process()
        self._cmdline = self._me.cmdline()
        self._mosquitto = find_mosquitto()
        self._roles: dict[int, str] = {}
        self._pids: dict[str, set[int]] = {}
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-rss", daemon=True)

    def __enter__(self) -> RssSampler:
        self.peaks.main_at_start_mb = rss_mb(self._me) or 0.0
        self.peaks.mosquitto_at_start_mb = rss_mb(self._mosquitto) if self._mosquitto else None
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peaks.processes = {role: len(pids) for role, pids in sorted(self._pids.items())}
        if self._error is not None:
            raise RuntimeError("the RSS sampler failed") from self._error

    def _run(self) -> None:
        try:
            while True:
                self._sample()
                if self._stop.wait(self.interval):
                    return
        except BaseException as exc:  # handed to the main thread, which raises it in __exit__
            self._error = exc

    def _sample(self) -> None:
        by_role: dict[str, float] = {"main": rss_mb(self._me) or 0.0}
        largest = dict(by_role)
        for child in self._me.children(recursive=True):
            role = self._roles.get(child.pid) or role_of(child, self._cmdline)
            rss = rss_mb(child)
            if role is None or rss is None:
                continue
            if role != "other":  # "other" is read again: it may still be exec'ing
                self._roles[child.pid] = role
            self._pids.setdefault(role, set()).add(child.pid)
            by_role[role] = by_role.get(role, 0.0) + rss
            largest[role] = max(largest.get(role, 0.0), rss)
        peaks = self.peaks
        peaks.samples += 1
        peaks.sum_mb = max(peaks.sum_mb, sum(by_role.values()))
        for role, value in by_role.items():
            peaks.by_role_mb[role] = max(peaks.by_role_mb.get(role, 0.0), value)
            peaks.largest_process_mb[role] = max(peaks.largest_process_mb.get(role, 0.0), largest[role])
        if self._mosquitto is not None:
            rss = rss_mb(self._mosquitto)
            if rss is not None:
                peaks.mosquitto_mb = max(peaks.mosquitto_mb or 0.0, rss)


# ---------------------------------------------------------------- running the fleet


@dataclass
class RoundLog:
    """The fleet's ``on_round`` callback: keeps every round line and prints a short one."""

    label: str
    rounds: int
    lines: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, line: dict[str, Any]) -> None:
        self.lines.append(line)
        test = line.get("test")
        accuracy = f"{test['accuracy']:.3f}" if test else "-"
        print(f"  {self.label} round {line['round']}/{self.rounds} {line['status']}: eligible {line['eligible']}, "
              f"selected {line['selected']}, reported {line['reported']}, acc {accuracy}, "
              f"{line['duration_s']:.2f} s", flush=True)


def fleet_config(out: Path, label: str, prefix: str = "bench-fleet", **options: Any) -> FleetConfig:
    """A fleet on the local Mosquitto with a fresh federation; by default rounds back to back on a slow day."""
    settings = {"speedup": SPEEDUP, "round_interval": ROUND_INTERVAL, "day_seconds": DAY_SECONDS, **options}
    return FleetConfig(broker=BROKER, federation=f"{prefix}-{label}-{uuid.uuid4().hex[:8]}", out=out / label,
                       **settings)


def warm_artifact(config: FleetConfig) -> float:
    """Export the run's artifact into the fleet's cache in a child process (TensorFlow stays out of this one)."""
    from device_profiles.prepare import write_config_toml

    toml = config.out.with_name(config.out.name + "-warm.toml")
    write_config_toml(toml, config)
    started = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--warm-artifact", str(toml)], check=True, cwd=ROOT)
    return time.perf_counter() - started


def warm_artifact_main(toml: Path) -> int:
    """``--warm-artifact FLEET.toml``: prepare the data and export (or find) the artifact, in a scratch folder."""
    from device_profiles.fleet_config import build_fleet_config
    from device_profiles.prepare import choose_family, class_count, default_cache, export_artifact, prepare_data
    from device_profiles.run_folder import RunFolder

    with tempfile.TemporaryDirectory(prefix="bench-fleet-warm-") as tmp:
        config = build_fleet_config(toml, {"out": Path(tmp)})
        folder = RunFolder(config.out)
        train, test, _ = prepare_data(config, folder)
        export_artifact(config, train, class_count(train, test), choose_family(config, train), folder,
                        default_cache())
    return 0


def mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def run_scale(runs: Path, devices: int, rounds: int) -> dict[str, Any]:
    config = fleet_config(runs, f"scale-{devices}", devices=devices, rounds=rounds, fraction=SCALE_FRACTION)
    print(f"scale: {devices} devices, {rounds} rounds", flush=True)
    warm_s = warm_artifact(config)
    log = RoundLog(f"N={devices}", rounds)
    started = time.perf_counter()
    with RssSampler() as sampler:
        summary = run_fleet(config, on_round=log, note=print)
    call_s = time.perf_counter() - started
    durations = [line["duration_s"] for line in log.lines]
    peaks = sampler.peaks
    return {
        "devices": devices,
        "worker_processes": peaks.processes.get("workers", 0),
        "worker_processes_expected": config.worker_processes(devices),
        "rounds": summary.rounds,
        "committed": summary.committed,
        "round_wall_mean_s": mean(durations),
        "round_wall_max_s": max(durations, default=None),
        "run_wall_s": summary.wall_time_s,
        "run_fleet_call_s": round(call_s, 2),
        "artifact_warm_up_s": round(warm_s, 2),
        "rss": asdict(peaks),
        "mean_eligible": mean([line["eligible"] for line in log.lines]),
        "mean_selected": mean([line["selected"] for line in log.lines]),
        "mean_reported": mean([line["reported"] for line in log.lines]),
        "final_accuracy": summary.final_accuracy,
        "federation": config.federation,
    }


def central_ceiling(run: Path, epochs: int, lr: float | None, seed: int = 0) -> dict[str, Any]:
    """The run's artifact trained on the run's whole training split; test accuracy after every epoch."""
    from edge_runtime import Artifact, Trainer

    artifact = Artifact.load(run / "artifact")
    trainer = Trainer(artifact)
    with np.load(run / "data" / "train.npz") as train, np.load(run / "data" / "test.npz") as test:
        x, y, x_test, y_test = train["x"], train["y"], test["x"], test["y"]
    started = time.perf_counter()
    accuracies, losses = [], []
    for epoch in range(epochs):  # one fit per epoch: the optimizer state carries over, the shuffle is seed + epoch
        losses.append(trainer.fit(x, y, epochs=1, lr=lr, seed=seed + epoch).mean_loss)
        accuracies.append(trainer.evaluate(x_test, y_test).accuracy)
    best = int(np.argmax(accuracies))
    optimizer = artifact.manifest.optimizer
    return {"epochs": epochs, "train_examples": len(y), "test_examples": len(y_test),
            "optimizer": optimizer.name, "momentum": optimizer.momentum,
            "lr": lr if lr is not None else optimizer.learning_rate, "batch_size": artifact.manifest.train_batch_size,
            "final_accuracy": accuracies[-1], "best_accuracy": accuracies[best], "best_epoch": best + 1,
            "accuracy_per_epoch": accuracies, "train_loss_per_epoch": losses,
            "seconds": round(time.perf_counter() - started, 2)}


def accuracy_options(devices: int, rounds: int, seed: int) -> dict[str, Any]:
    """The ``FleetConfig`` options of an accuracy run (``bench_strategies.py`` runs the same, strategy aside)."""
    return {"seed": seed, "devices": devices, "rounds": rounds, "partition": ACCURACY_PARTITION,
            "fraction": ACCURACY_FRACTION, "local_epochs": ACCURACY_LOCAL_EPOCHS, "min_clients": ACCURACY_MIN_CLIENTS,
            "server_lr": ACCURACY_SERVER_LR, "clip_norm": ACCURACY_CLIP_NORM, "round_timeout": ACCURACY_ROUND_TIMEOUT,
            "round_interval": ACCURACY_ROUND_INTERVAL, "day_seconds": ACCURACY_DAY_SECONDS}


def federated_result(summary: FleetSummary, lines: list[dict[str, Any]], devices: int) -> dict[str, Any]:
    """What an accuracy run learned, from its summary and round lines."""
    return {"devices": devices, "rounds": summary.rounds, "committed": summary.committed,
            "final_accuracy": summary.final_accuracy, "best_accuracy": summary.best_accuracy,
            "best_round": summary.best_round, "wall_time_s": summary.wall_time_s,
            "accuracy_per_round": [line["test"]["accuracy"] if line.get("test") else None for line in lines],
            "mean_selected": mean([line["selected"] for line in lines]),
            "mean_reported": mean([line["reported"] for line in lines])}


def run_accuracy(runs: Path, devices: int, rounds: int, seed: int) -> dict[str, Any]:
    """One federated run and its central ceiling; the seed sets the split, partition, profiles and selection."""
    config = fleet_config(runs, f"accuracy-{seed}", **accuracy_options(devices, rounds, seed))
    print(f"accuracy: {devices} devices, {rounds} rounds, seed {seed}", flush=True)
    warm_artifact(config)
    log = RoundLog("federated", rounds)
    summary = run_fleet(config, on_round=log, note=print)
    print(f"accuracy: central ceiling, {CENTRAL_EPOCHS} epochs", flush=True)
    central = central_ceiling(config.out, CENTRAL_EPOCHS, CENTRAL_LR, seed=seed)
    federated = federated_result(summary, log.lines, devices)
    final = federated["final_accuracy"]
    gap = None if final is None else 100 * (central["final_accuracy"] - final)
    gap_best = None if final is None else 100 * (central["best_accuracy"] - final)
    return {"seed": seed, "federated": federated, "central": central, "gap_points": gap,
            "gap_to_central_best_points": gap_best, "federation": config.federation}


def accuracy_over_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean over the seeds decides the target; every run is kept."""
    gaps = [r["gap_points"] for r in runs]
    mean_gap = None if any(g is None for g in gaps) else float(np.mean(gaps))
    return {"runs": runs, "seeds": [r["seed"] for r in runs],
            "mean_federated_final": mean([r["federated"]["final_accuracy"] or 0.0 for r in runs]),
            "mean_central_final": mean([r["central"]["final_accuracy"] for r in runs]),
            "mean_gap_points": mean_gap, "gap_points_range": [min(gaps), max(gaps)] if mean_gap is not None else None,
            "target_holds": mean_gap is not None and abs(mean_gap) <= TARGET_GAP_POINTS}


# ---------------------------------------------------------------- report


def settings(quick: bool) -> dict[str, Any]:
    return {
        "common": {"broker": BROKER, "speedup": SPEEDUP, "round_interval": ROUND_INTERVAL,
                   "day_seconds": DAY_SECONDS, "sample_s": SAMPLE_S, "mb": "MiB (2**20 bytes)"},
        "scale": {"devices": list(SCALE_DEVICES_QUICK if quick else SCALE_DEVICES),
                  "rounds": SCALE_ROUNDS_QUICK if quick else SCALE_ROUNDS, "fraction": SCALE_FRACTION,
                  "target": f"{TARGET_DEVICES} devices in <= {TARGET_RSS_MB} MB summed RSS"},
        "accuracy": {"devices": ACCURACY_DEVICES_QUICK if quick else ACCURACY_DEVICES,
                     "rounds": ACCURACY_ROUNDS_QUICK if quick else ACCURACY_ROUNDS,
                     "partition": ACCURACY_PARTITION, "fraction": ACCURACY_FRACTION,
                     "local_epochs": ACCURACY_LOCAL_EPOCHS, "min_clients": ACCURACY_MIN_CLIENTS,
                     "server_lr": ACCURACY_SERVER_LR, "clip_norm": ACCURACY_CLIP_NORM,
                     "round_timeout_s": ACCURACY_ROUND_TIMEOUT, "round_interval": ACCURACY_ROUND_INTERVAL,
                     "day_seconds": ACCURACY_DAY_SECONDS,
                     "central_epochs": CENTRAL_EPOCHS, "central_lr": CENTRAL_LR,
                     "target": f"|central final - federated final| <= {TARGET_GAP_POINTS:g} points"},
        "defaults": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(FleetConfig()).items()
                     if k in ("model", "dataset", "partition", "profiles", "filters", "batch_size", "lr",
                              "momentum", "min_reports", "over_select", "round_timeout", "local_epochs",
                              "test_fraction", "clip_norm", "seed")},
    }


def machine_info() -> dict[str, Any]:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "memory_mb": round(psutil.virtual_memory().total / MB),
            "platform": platform.platform(), "python": platform.python_version(),
            "packages": {p: package_version(p) for p in PACKAGES}}


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def roles_cell(rss: dict[str, Any]) -> str:
    """``main 175 → 194, workers 1100 (4, largest 300)``: main from its RSS at the start of the run."""
    cells = []
    for role, value in rss["by_role_mb"].items():
        count = rss["processes"].get(role, 1)
        if role == "main":
            cells.append(f"main {rss['main_at_start_mb']:.0f} → {value:.0f}")
        elif count > 1:
            cells.append(f"{role} {value:.0f} ({count}, largest {rss['largest_process_mb'][role]:.0f})")
        else:
            cells.append(f"{role} {value:.0f}")
    return ", ".join(cells)


def scale_target(row: dict[str, Any]) -> str:
    if row["devices"] != TARGET_DEVICES:
        return "-"
    return f"≤ {TARGET_RSS_MB}: {ok(row['rss']['sum_mb'] <= TARGET_RSS_MB)}"


def render_scale(rows: list[dict[str, Any]], setup: dict[str, Any]) -> list[str]:
    lines = ["### Scale", "",
             f"`fraction={setup['fraction']}`, {setup['rounds']} rounds per N, other options at their defaults. "
             f"Peak RSS is sampled every {SAMPLE_S} s over the whole `run_fleet` call (data preparation, start-up, "
             "rounds, shut-down): the benchmark process (the fleet's main process: coordinator and clock) plus "
             "every descendant process (the device workers), summed at each sample; shared pages count once per "
             "process, so the sum is an upper bound. By role: the main process from its RSS as the run started "
             "(this process ran the earlier runs too) to its peak; the workers' sum (processes, largest). "
             "Mosquitto is sampled apart (at start → peak) and not in the sum. Round wall is each round's "
             "`duration_s` (selection to commit, test evaluation included); run wall is the summary's `wall_time_s` "
             "(from the clock's start, after data preparation and before the workers start, to the end), the "
             "`run_fleet` call (everything) beside it.", "",
             "| devices | worker processes | rounds | round wall, mean / max (s) | run wall / `run_fleet` call (s) "
             "| peak RSS, sum (MB) | peak by role (MB) | Mosquitto (MB) | eligible / selected / reported (mean) "
             "| final accuracy | target |",
             "| ---: | ---: | ---: | --- | --- | ---: | --- | --- | --- | ---: | --- |"]
    for r in rows:
        rss = r["rss"]
        mosquitto = (f"{num(rss['mosquitto_at_start_mb'])} → {num(rss['mosquitto_mb'])}"
                     if rss["mosquitto_mb"] is not None else "not found")
        lines.append(f"| {r['devices']:,} | {r['worker_processes']} | {r['rounds']} ({r['committed']} committed) "
                     f"| {num(r['round_wall_mean_s'], 2)} / {num(r['round_wall_max_s'], 2)} "
                     f"| {num(r['run_wall_s'])} / {num(r['run_fleet_call_s'])} | {rss['sum_mb']:.0f} "
                     f"| {roles_cell(rss)} | {mosquitto} | {num(r['mean_eligible'])} / {num(r['mean_selected'])} / "
                     f"{num(r['mean_reported'])} | {pct(r['final_accuracy'])} | {scale_target(r)} |")
    return [*lines, ""]


def central_note(central: dict[str, Any]) -> list[str]:
    """A measured fact worth saying: central training that did not keep its best accuracy to the end."""
    drop = 100 * (central["best_accuracy"] - central["final_accuracy"])
    if drop <= TARGET_GAP_POINTS:
        return []
    return [f"The central run did not keep its best: {pct(central['best_accuracy'])} after epoch "
            f"{central['best_epoch']}, {pct(central['final_accuracy'])} after epoch {central['epochs']} "
            f"(train loss per epoch: {' '.join(f'{v:.2f}' for v in central['train_loss_per_epoch'])}), so at this "
            "learning rate its final accuracy is no ceiling; the gap to its best is shown beside it.", ""]


def render_accuracy(acc: dict[str, Any], setup: dict[str, Any]) -> list[str]:
    first = acc["runs"][0]
    central = first["central"]
    optimizer = (f"{central['optimizer']} lr {central['lr']:g}, momentum {central['momentum']:g}, "
                 f"batch {central['batch_size']}")
    lines = ["### Federated vs central accuracy", "",
             f"Federated: {first['federated']['devices']} devices, `partition={setup['partition']}`, "
             f"{setup['rounds']} rounds, `fraction={setup['fraction']}`, `local_epochs={setup['local_epochs']}`, "
             f"`min_clients={setup['min_clients']}`, `server_lr={setup['server_lr']}`, "
             f"`clip_norm={setup['clip_norm']}`, `round_timeout={setup['round_timeout_s']}` (real seconds), "
             f"rounds {setup['round_interval']:g} simulated seconds apart on a {setup['day_seconds']:g}-second "
             "simulated day (so devices of every time zone take part as their nights come), other options at "
             "their defaults; test accuracy is the coordinator's, on the run's `data/test.npz`. Central: the run's "
             f"own `artifact/` (same model, same initial weights) trained with `edge_runtime.Trainer` ({optimizer}) "
             f"on the run's `data/train.npz` ({central['train_examples']} examples) for {central['epochs']} epochs, "
             f"evaluated on the same `data/test.npz` ({central['test_examples']} examples) after each epoch. Each "
             f"seed ({', '.join(map(str, acc['seeds']))}) is a run of both, with its own split, partition, profiles "
             "and selection. The gap is central final minus federated final, in percentage points; the target is "
             f"the mean gap within {TARGET_GAP_POINTS:g} points, either way.", "",
             "| seed | central final | central best | federated final | federated best | gap (points) |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for run in acc["runs"]:
        fed, cen = run["federated"], run["central"]
        lines.append(f"| {run['seed']} | {pct(cen['final_accuracy'])} | {pct(cen['best_accuracy'])} (epoch "
                     f"{cen['best_epoch']}) | {pct(fed['final_accuracy'])} | {pct(fed['best_accuracy'])} (round "
                     f"{fed['best_round']}) | {num(run['gap_points'])} |")
    low, high = acc["gap_points_range"] or (None, None)
    lines += [f"| mean | {pct(acc['mean_central_final'])} | | {pct(acc['mean_federated_final'])} | | "
              f"{num(acc['mean_gap_points'])} (range {num(low)} to {num(high)}): within ±{TARGET_GAP_POINTS:g}: "
              f"{ok(acc['target_holds'])} |", ""]
    for run in acc["runs"]:
        per_round = " ".join("-" if a is None else f"{100 * a:.1f}" for a in run["federated"]["accuracy_per_round"])
        lines += [f"Seed {run['seed']}, federated test accuracy after each round (%): {per_round}.", ""]
        lines += central_note(run["central"])
    return lines


def render(report: dict[str, Any]) -> str:
    m, setup = report["machine"], report["settings"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines = [START, "## Fleet emulation: scale and federated accuracy", "",
             "`edgefl fleet` as a library call (`device_profiles.fleet.run_fleet`) from the benchmark process, "
             f"against the local Mosquitto ({BROKER}), a fresh federation per run; `speedup=\"{SPEEDUP}\"`, "
             f"`round_interval={ROUND_INTERVAL:g}` (rounds back to back, so a round's wall time is its own cost), "
             f"`day_seconds={DAY_SECONDS:g}` (a simulated day in 24 real minutes); the digits `cnn`, "
             f"`{setup['defaults']['partition']}` and `{setup['defaults']['profiles']}` profiles unless stated. "
             "The artifact is exported beforehand in a separate process, so TensorFlow is not in the measured "
             "process. MB are MiB.", "",
             "Reproduce: `python bench/bench_fleet.py` (raw numbers: `bench/results/fleet.json`).", "",
             f"Measured {report['date']} on {m['cpu']} ({m['cores']} cores, {m['memory_mb']:,} MB), {m['platform']}, "
             f"Python {m['python']}; {pkgs}. Load average at start {report['loadavg_start'][0]:.2f}, at end "
             f"{report['loadavg_end'][0]:.2f} (1 min); {report['bench_seconds']:.0f} s in all.", ""]
    if report.get("scale"):
        lines += render_scale(report["scale"], setup["scale"])
    if report.get("accuracy"):
        lines += render_accuracy(report["accuracy"], setup["accuracy"])
    return "\n".join([*lines, END])


# ---------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run with small numbers; writes only to /tmp")
    p.add_argument("--skip-scale", action="store_true", help="leave out the scale runs (writes only to /tmp)")
    p.add_argument("--skip-accuracy", action="store_true", help="leave out the accuracy run (writes only to /tmp)")
    p.add_argument("--runs", type=Path, help="keep the run folders here (default: a temporary folder, removed)")
    return p.parse_args(argv)


def run_all(args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    quick = args.quick
    report: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "quick": quick, "machine": machine_info(), "settings": settings(quick),
                              "loadavg_start": os.getloadavg()}
    started = time.perf_counter()
    if not args.skip_scale:
        rounds = SCALE_ROUNDS_QUICK if quick else SCALE_ROUNDS
        report["scale"] = [run_scale(runs, n, rounds) for n in (SCALE_DEVICES_QUICK if quick else SCALE_DEVICES)]
    if not args.skip_accuracy:
        report["accuracy"] = accuracy_over_seeds([
            run_accuracy(runs, ACCURACY_DEVICES_QUICK if quick else ACCURACY_DEVICES,
                         ACCURACY_ROUNDS_QUICK if quick else ACCURACY_ROUNDS, seed)
            for seed in (ACCURACY_SEEDS_QUICK if quick else ACCURACY_SEEDS)])
    report["bench_seconds"] = time.perf_counter() - started
    report["loadavg_end"] = os.getloadavg()
    return report


def print_verdicts(report: dict[str, Any]) -> None:
    for row in report.get("scale", []):
        print(f"scale N={row['devices']}: peak RSS {row['rss']['sum_mb']:.0f} MB summed "
              f"({roles_cell(row['rss'])}), Mosquitto {num(row['rss']['mosquitto_mb'])} MB, round wall mean "
              f"{num(row['round_wall_mean_s'], 2)} s, max {num(row['round_wall_max_s'], 2)} s; "
              f"target {scale_target(row)}")
    if "accuracy" in report:
        acc = report["accuracy"]
        print(f"accuracy over seeds {acc['seeds']}: federated final {pct(acc['mean_federated_final'])}, central "
              f"final {pct(acc['mean_central_final'])}, mean gap {num(acc['mean_gap_points'])} points; target "
              f"within ±{TARGET_GAP_POINTS:g}: {ok(acc['target_holds'])}")


def write_outputs(report: dict[str, Any], partial: bool) -> None:
    """The full benchmark writes the repository's files; a quick or partial run only a file in /tmp."""
    section = render(report)
    print(section)
    if partial:
        out = Path(tempfile.gettempdir()) / "bench_fleet.json"
        out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {out} (a quick or partial run: bench/results and BENCHMARKS.md left alone)")
        return
    out = ROOT / "bench" / "results" / "fleet.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    update_section(ROOT / "BENCHMARKS.md", section, START, END)
    print(f"wrote {out} and BENCHMARKS.md")


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["--warm-artifact"]:
        return warm_artifact_main(Path(argv[1]))
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("coordinator").setLevel(logging.ERROR)  # late updates are counted per round, as in the CLI
    if args.runs is not None:
        args.runs.mkdir(parents=True, exist_ok=True)
        report = run_all(args, args.runs)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
            report = run_all(args, Path(tmp))
    print_verdicts(report)
    write_outputs(report, partial=args.quick or args.skip_scale or args.skip_accuracy)
    return 0


if __name__ == "__main__":
    sys.exit(main())
