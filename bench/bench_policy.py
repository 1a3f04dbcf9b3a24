"""What checking the eligibility policy between training steps costs.

The device agent asks its policy after every training step, so a charger
pulled out stops training within one step. This measures that check beside
the step it follows, in one run: the same ``Trainer.fit`` on the same batches
with no check, with the policy over this machine's signals (psutil, /proc,
nmcli where present), and with the policy over a signals file. Runs are
interleaved and the median of the repetitions is reported.

    python bench/bench_policy.py            # writes bench/results/policy.json and its BENCHMARKS.md section
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from bench_markdown import cpu_name, package_version, update_section  # run as `python bench/<script>.py`
from bench_training import build_configs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
START, END = "<!-- policy:start -->", "<!-- policy:end -->"
POLICY = """require-charging = true
min-battery-percent = 50
require-unmetered = true
max-cpu-percent = 90
max-temperature-c = 85
min-free-memory-mb = 64
min-free-disk-mb = 64
allowed-hours = ["00:00-24:00"]
daily-budget-seconds = 86400
unknown-signals = "ignore"
"""


def checkers(folder: Path) -> dict[str, Callable[[int, float], None] | None]:
    from edge_runtime.policy import Scheduler
    from edge_runtime.policy_file import load_policy
    from edge_runtime.signals import system_reader

    (folder / "policy.toml").write_text(POLICY)
    (folder / "signals.json").write_text(json.dumps({"power": "charging", "battery_percent": 80,
                                                     "network": "unmetered", "temperature_c": 40}))
    policy = load_policy(folder / "policy.toml")
    system = Scheduler(policy, system_reader(folder))
    from_file = Scheduler(policy, system_reader(folder, signals_file=folder / "signals.json"))
    for scheduler in (system, from_file):
        scheduler.begin_task()
        assert scheduler.check().eligible, scheduler.check().reasons

    def check(scheduler: Scheduler) -> Callable[[int, float], None]:
        def on_step(step: int, loss: float) -> None:
            if not scheduler.check().eligible:
                raise RuntimeError("the benchmark's policy stopped holding")
        return on_step

    return {"none": None, "system signals": check(system), "signals file": check(from_file)}


def measure(key: str, spec: Any, x: np.ndarray, y: np.ndarray, folder: Path, steps: int,
            repeats: int) -> dict[str, Any]:
    from edge_runtime.artifact import Artifact
    from edge_runtime.trainer import Trainer
    from model_export.exporter import export_model

    export_model(spec, folder / key)
    trainer = Trainer(Artifact.load(folder / key), num_threads=1)
    start = trainer.get_weights()
    variants = checkers(folder)
    times: dict[str, list[float]] = {name: [] for name in variants}
    trainer.fit(x, y, steps=20)  # warm-up
    for _ in range(repeats):
        for name, on_step in variants.items():
            trainer.set_weights(start)
            began = time.perf_counter()
            trainer.fit(x, y, steps=steps, on_step=on_step)
            times[name].append((time.perf_counter() - began) / steps * 1e6)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {"steps": steps, "repeats": repeats, "us_per_step": median,
            "overhead_us": {n: median[n] - median["none"] for n in median if n != "none"},
            "overhead_pct": {n: 100 * (median[n] - median["none"]) / median["none"] for n in median if n != "none"}}


def render(report: dict[str, Any]) -> str:
    lines = [START, "## Policy checks between training steps", "",
             f"`python bench/bench_policy.py`, {report['date']}, {report['machine']['cpu']}, "
             f"ai-edge-litert {report['machine']['ai-edge-litert']}, 1 interpreter thread. The agent asks the "
             "policy after every step; this is what that costs (median of "
             f"{next(iter(report['models'].values()))['repeats']} interleaved runs of `Trainer.fit`). "
             "Power and the network route are re-read at most every 50 ms, the other system signals every 1-5 s, "
             "a signals file at every check (one `stat`); while no reading changes, the scheduler re-uses its "
             "decision for up to 1 s.", "",
             "| model | step, no check | + check, this machine's signals | + check, signals file |",
             "| --- | --- | --- | --- |"]
    for key, m in report["models"].items():
        us, pct = m["us_per_step"], m["overhead_pct"]
        lines.append(f"| {key} | {us['none']:.0f} µs | {us['system signals']:.0f} µs "
                     f"({pct['system signals']:+.0f}%) | {us['signals file']:.0f} µs ({pct['signals file']:+.0f}%) |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", nargs="*", default=["mlp-breast-cancer", "cnn-digits"])
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        for config in build_configs(args.only):
            print(f"{config.key} ...", flush=True)
            models[config.key] = measure(config.key, config.spec, config.x, config.y, Path(tmp), args.steps,
                                         args.repeats)
            print(json.dumps(models[config.key]["us_per_step"]), flush=True)
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "ai-edge-litert": package_version("ai-edge-litert")}
    report = {"date": dt.date.today().isoformat(), "models": models, "machine": machine}
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "policy.json").write_text(json.dumps(report, indent=2) + "\n")
    update_section(ROOT / "BENCHMARKS.md", render(report), START, END)
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
