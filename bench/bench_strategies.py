"""Aggregation strategies on the fleet benchmark's digits task: accuracy against the central ceiling, a tuning
sweep of the server optimizers, and the accuracy lost to sign-flip and scale attackers.

Every run is ``bench_fleet.py``'s accuracy run (same devices, partition,
rounds, fraction, local epochs, clipping; ``bench_fleet.accuracy_options``)
with one ``--strategy`` and its hyperparameters, and optionally an
``--attack``; the central ceiling of each seed is ``bench_fleet``'s too,
trained on the first run of that seed. Four phases, in order of priority:

1. **Sweep** (seed 0): fedavg at server lr 1 and 2; fedavgm; fedadam, fedyogi
   and fedadagrad over a server-lr grid, extended by one step of
   ``LADDER`` (at most ``MAX_EXTENSIONS`` times) while the best value is on
   the grid's edge. The best of each, by the mean accuracy of the last three
   rounds (less noisy than the last round alone), goes on to the table.
2. **Accuracy** on every seed: the two fedavg rows, the tuned adaptive ones,
   and the robust rules at their defaults.
3. **Robustness** (``ROBUST_SEEDS``): 10% then 20% of ``sign-flip`` and
   ``scale`` attackers against fedavg and each robust rule; Krum and
   Multi-Krum assume ``ceil(fraction * mean selected)`` attackers per round,
   the mean from the clean fedavg run, and get clean runs with the same
   setting to compare with.

Every run's result is written to the json as soon as it ends; ``--resume``
skips the runs already there. Run from the project root: ``python
bench/bench_strategies.py`` writes ``bench/results/strategies.json`` and its
section of ``BENCHMARKS.md``; ``--quick`` (20 devices, 5 rounds, few runs)
writes only to the temporary folder and prints the section.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_fleet import (  # run as `python bench/<script>.py`; bench_fleet puts the project root on sys.path
    ACCURACY_DEVICES,
    ACCURACY_DEVICES_QUICK,
    ACCURACY_ROUNDS,
    ACCURACY_ROUNDS_QUICK,
    ACCURACY_SEEDS,
    ACCURACY_SEEDS_QUICK,
    BROKER,
    CENTRAL_EPOCHS,
    CENTRAL_LR,
    ROOT,
    RoundLog,
    accuracy_options,
    central_ceiling,
    federated_result,
    fleet_config,
    machine_info,
    mean,
    num,
    pct,
)
from bench_fleet import settings as fleet_settings
from bench_markdown import ok, update_section

from device_profiles.fleet import run_fleet

START, END = "<!-- bench_strategies:start -->", "<!-- bench_strategies:end -->"
RESULTS = ROOT / "bench" / "results" / "strategies.json"
QUICK_RESULTS = Path(tempfile.gettempdir()) / "bench_strategies_quick.json"

LADDER = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)  # server lr grid steps for the adaptive optimizers
MAX_EXTENSIONS = 2  # per optimizer: steps added past the grid's edge while the best value sits on it
ADAPTIVE_GRIDS = {"fedadam": (0.003, 0.01, 0.03, 0.1), "fedyogi": (0.003, 0.01, 0.03, 0.1),
                  "fedadagrad": (0.03, 0.1, 0.3)}
ADAPTIVE_GRIDS_QUICK = {"fedadam": (0.1,), "fedyogi": (0.1,), "fedadagrad": (0.1,)}
FEDAVGM_GRID = ({"server_lr": 1.0, "server_momentum": 0.9}, {"server_lr": 0.2, "server_momentum": 0.9},
                {"server_lr": 1.0, "server_momentum": 0.5})
FEDAVGM_GRID_QUICK = FEDAVGM_GRID[:1]
SHORT = {"server_lr": "lr", "server_momentum": "m", "attackers": "f", "krum_select": "k", "trim": "t"}  # labels
ROBUST_RULES = ("median", "trimmed-mean", "krum", "multi-krum")
KRUMS = ("krum", "multi-krum")

ATTACK_KINDS = ("sign-flip", "scale")
ATTACK_FRACTIONS, ATTACK_FRACTIONS_QUICK = (0.1, 0.2), (0.1,)
REPEATS = 1  # the clean fedavg run repeated this many times: the noise floor of a loss measured on one seed
ROBUST_SEEDS = (0,)  # robustness on one seed: a second would double its 26 runs (about 25 minutes here)
TARGET_GAP_POINTS = 1.0  # the best strategy's mean final accuracy within this of the central ceiling's
TARGET_LOSS_POINTS = 2.0  # at 10% attackers, some robust rule loses at most this while fedavg loses more
TARGET_ATTACK_FRACTION = 0.1
DIVERGED_BELOW = 0.5  # a final accuracy under this is reported as a divergence


# ---------------------------------------------------------------- what a run is


@dataclass(frozen=True)
class Setting:
    """A strategy and the hyperparameters given to it (the rest at the strategy's defaults)."""

    strategy: str
    options: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, strategy: str, **options: float) -> Setting:
        return cls(strategy, tuple(sorted(options.items())))

    @property
    def kwargs(self) -> dict[str, float]:
        return dict(self.options)

    def __str__(self) -> str:
        return " ".join([self.strategy, *(f"{k}={v:g}" for k, v in self.options)])

    def flags(self) -> str:
        """``--strategy fedadam --server-lr 0.1``: the options as ``edgefl fleet`` flags."""
        return " ".join([f"--strategy {self.strategy}",
                         *(f"--{k.replace('_', '-')} {v:g}" for k, v in self.options)])


@dataclass(frozen=True)
class Cell:
    """One fleet run: a setting, an attack (None: none), a seed, and which repetition of the same run."""

    setting: Setting
    attack: str | None
    seed: int
    repeat: int = 0

    @property
    def key(self) -> str:
        again = f" | repeat {self.repeat}" if self.repeat else ""
        return f"{self.setting} | {self.attack or 'clean'} | seed {self.seed}{again}"

    @property
    def label(self) -> str:
        """The run's folder name, short enough for a federation name (``fedadam-lr0.1-scale0.1-s0``)."""
        options = (f"{SHORT.get(k, k)}{v:g}" for k, v in self.setting.options)
        parts = [self.setting.strategy, *options, (self.attack or "clean").replace(":", ""), f"s{self.seed}"]
        return re.sub(r"[^A-Za-z0-9.-]+", "-", "-".join(parts + [f"r{self.repeat}"] * bool(self.repeat)))


@dataclass(frozen=True)
class Plan:
    """The numbers of a full or a quick run."""

    quick: bool
    devices: int
    rounds: int
    seeds: tuple[int, ...]
    robust_seeds: tuple[int, ...]
    grids: dict[str, tuple[float, ...]]
    fedavgm_grid: tuple[dict[str, float], ...]
    fractions: tuple[float, ...]
    attacked_rules: tuple[str, ...]  # the robust rules run under attack

    @classmethod
    def build(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, ACCURACY_DEVICES_QUICK, ACCURACY_ROUNDS_QUICK, ACCURACY_SEEDS_QUICK,
                       ACCURACY_SEEDS_QUICK, ADAPTIVE_GRIDS_QUICK, FEDAVGM_GRID_QUICK, ATTACK_FRACTIONS_QUICK,
                       ("trimmed-mean", "multi-krum"))
        return cls(False, ACCURACY_DEVICES, ACCURACY_ROUNDS, ACCURACY_SEEDS, ROBUST_SEEDS, ADAPTIVE_GRIDS,
                   FEDAVGM_GRID, ATTACK_FRACTIONS, ROBUST_RULES)

    @property
    def results(self) -> Path:
        return QUICK_RESULTS if self.quick else RESULTS

    def identity(self) -> dict[str, Any]:
        """What a json must match for ``--resume`` to reuse its runs."""
        return {"quick": self.quick, "devices": self.devices, "rounds": self.rounds,
                "fleet": accuracy_options(self.devices, self.rounds, 0) | {"seed": None, "server_lr": None}}


FEDAVG_LR1 = Setting.of("fedavg", server_lr=1.0)
FEDAVG_LR2 = Setting.of("fedavg", server_lr=2.0)


def krum_setting(rule: str, attackers: int) -> Setting:
    return Setting.of(rule, attackers=attackers)


# ---------------------------------------------------------------- running and keeping results


class Bench:
    """The results so far (``runs`` by cell key, ``central`` by seed), saved after every run."""

    def __init__(self, plan: Plan, runs_dir: Path, keep_runs: bool, report: dict[str, Any]) -> None:
        self.plan, self.runs_dir, self.keep_runs, self.report = plan, runs_dir, keep_runs, report
        self.started = time.perf_counter()
        self.ran = 0

    @property
    def runs(self) -> dict[str, Any]:
        return self.report["runs"]

    def result(self, cell: Cell) -> dict[str, Any]:
        return self.runs[cell.key]

    def run(self, cells: Iterable[Cell]) -> None:
        """Run every cell not already done, each one saved as it ends."""
        for cell in cells:
            if cell.key in self.runs:
                continue
            record = run_cell(cell, self.runs_dir, self.plan)
            folder = self.runs_dir / cell.label
            central = self.report["central"]
            if str(cell.seed) not in central:
                print(f"central ceiling for seed {cell.seed}, {CENTRAL_EPOCHS} epochs", flush=True)
                central[str(cell.seed)] = central_ceiling(folder, CENTRAL_EPOCHS, CENTRAL_LR, seed=cell.seed)
            if not self.keep_runs:
                shutil.rmtree(folder, ignore_errors=True)
            self.runs[cell.key] = record
            self.ran += 1
            self.save()
            elapsed = time.perf_counter() - self.started
            print(f"[{len(self.runs)} done, {self.ran} this session, {elapsed / 60:.1f} min] {cell.key}: final "
                  f"{pct(record['final_accuracy'])}, last 3 {pct(record['last3_mean'])}, "
                  f"{record['run_fleet_call_s']:.0f} s{suspicious(record)}", flush=True)

    def save(self) -> None:
        self.report["bench_seconds"] = self.report.get("bench_seconds_before", 0.0) + (
            time.perf_counter() - self.started)
        write_json(self.plan.results, self.report)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: an interrupted write leaves the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def run_cell(cell: Cell, runs_dir: Path, plan: Plan) -> dict[str, Any]:
    """One fleet run of ``cell``; what it learned and what its round lines say about refusals and the rule."""
    options = accuracy_options(plan.devices, plan.rounds, cell.seed)
    del options["server_lr"]  # the setting gives it, or the strategy's default holds
    config = fleet_config(runs_dir, cell.label, prefix="bench-strat", strategy=cell.setting.strategy,
                          attack=cell.attack, **options, **cell.setting.kwargs)
    print(f"run {cell.key}", flush=True)
    log = RoundLog(f"{cell.setting} {cell.attack or 'clean'} s{cell.seed}", plan.rounds)
    started = time.perf_counter()
    summary = run_fleet(config, on_round=log, note=print)
    call_s = time.perf_counter() - started
    federated = federated_result(summary, log.lines, plan.devices)
    tail = [a for a in federated["accuracy_per_round"][-3:] if a is not None]
    rejected: Counter[str] = Counter()
    for line in log.lines:
        rejected.update(line["rejected"])
    attack = summary.attack
    return {
        "key": cell.key, "strategy": cell.setting.strategy, "options": cell.setting.kwargs,
        "attack": cell.attack, "seed": cell.seed, "federation": config.federation,
        "final_accuracy": summary.final_accuracy, "last3_mean": mean(tail), "federated": federated,
        "abandoned": summary.abandoned, "rejected": dict(sorted(rejected.items())), "late": summary.late,
        "failures": summary.failures,
        "nulled_rounds": sum(1 for line in log.lines if line.get("nulled")),
        "final_train_loss": log.lines[-1]["train_loss"] if log.lines else None,
        "bound_met_rounds": bound_met(log.lines),
        "attackers": None if attack is None else {"devices": attack.devices,
                                                   "updates_trained": attack.updates_trained},
        "dropped": summary.dropouts.coordinator,
        "closed_by": dict(sorted(Counter(str(line["closed_by"]) for line in log.lines).items())),
        "run_fleet_call_s": round(call_s, 1), "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }


def bound_met(lines: list[dict[str, Any]]) -> list[int] | None:
    """Krum's ``bound_met`` diagnostic: [rounds where n > 2f + 2, rounds reporting it]; None for other rules."""
    flags = [line["strategy"]["bound_met"] for line in lines if "bound_met" in (line.get("strategy") or {})]
    return [sum(1 for f in flags if f), len(flags)] if flags else None


def suspicious(record: dict[str, Any]) -> str:
    """What to look at in a run, for the progress line and the tables ('' when nothing)."""
    notes = []
    final = record["final_accuracy"]
    if final is None or final < DIVERGED_BELOW:
        notes.append("diverged")
    if record["abandoned"]:
        notes.append(f"{record['abandoned']} rounds abandoned")
    if record["rejected"]:
        notes.append("rejected " + ", ".join(f"{k} {v}" for k, v in record["rejected"].items()))
    if record["nulled_rounds"]:
        notes.append(f"{record['nulled_rounds']} rounds with non-finite values")
    return f" ({'; '.join(notes)})" if notes else ""


# ---------------------------------------------------------------- the phases


def sweep(bench: Bench) -> dict[str, list[Setting]]:
    """Phase 1, on the first seed: every row of each optimizer's sweep, the best last."""
    seed = bench.plan.seeds[0]
    tried: dict[str, list[Setting]] = {"fedavg": [FEDAVG_LR1, FEDAVG_LR2],
                                       "fedavgm": [Setting.of("fedavgm", **o) for o in bench.plan.fedavgm_grid]}
    for strategy, grid in bench.plan.grids.items():
        tried[strategy] = [Setting.of(strategy, server_lr=lr) for lr in grid]
    for settings in tried.values():
        bench.run(Cell(s, None, seed) for s in settings)
    if not bench.plan.quick:
        for strategy in bench.plan.grids:
            extend(bench, tried[strategy], seed)
    return tried


def extend(bench: Bench, settings: list[Setting], seed: int) -> None:
    """Add ``LADDER`` steps past the edge the best server lr sits on, at most ``MAX_EXTENSIONS``."""
    for _ in range(MAX_EXTENSIONS):
        lrs = sorted(s.kwargs["server_lr"] for s in settings)
        best = best_setting(bench, settings, seed).kwargs["server_lr"]
        step = 1 if best == lrs[-1] else -1 if best == lrs[0] else 0
        index = LADDER.index(best) + step if best in LADDER else -1
        if step == 0 or not 0 <= index < len(LADDER):
            return
        settings.append(Setting.of(settings[0].strategy, server_lr=LADDER[index]))
        bench.run([Cell(settings[-1], None, seed)])


def best_setting(bench: Bench, settings: list[Setting], seed: int) -> Setting:
    """The setting with the highest mean accuracy over the last three rounds (ties: the earlier tried)."""
    return max(settings, key=lambda s: bench.result(Cell(s, None, seed))["last3_mean"] or 0.0)


def table_rows(bench: Bench, tried: dict[str, list[Setting]]) -> list[Setting]:
    """The accuracy table's rows: fedavg at lr 1 and 2, the sweep's best of each optimizer, the robust rules."""
    seed = bench.plan.seeds[0]
    tuned = [best_setting(bench, tried[s], seed) for s in ("fedavgm", *bench.plan.grids)]
    return [FEDAVG_LR1, FEDAVG_LR2, *tuned, *(Setting(rule) for rule in ROBUST_RULES)]


def expected_attackers(bench: Bench, fraction: float, seed: int) -> int:
    """``ceil(fraction * selected)``, selected being the clean fedavg run's mean selection per round."""
    selected = bench.result(Cell(FEDAVG_LR1, None, seed))["federated"]["mean_selected"]
    return max(1, math.ceil(fraction * selected - 1e-9))


def robust_settings(bench: Bench, fraction: float, seed: int) -> list[Setting]:
    """fedavg (also at server lr 2 at the target fraction, full runs only) and the robust rules, Krum's assuming
    the expected attackers."""
    attackers = expected_attackers(bench, fraction, seed)
    plan = bench.plan
    fedavgs = [FEDAVG_LR1, FEDAVG_LR2] if fraction == TARGET_ATTACK_FRACTION and not plan.quick else [FEDAVG_LR1]
    rules = [krum_setting(r, attackers) if r in KRUMS else Setting(r) for r in plan.attacked_rules]
    return [*fedavgs, *rules]


def robustness(bench: Bench) -> None:
    """Phase 3: each attack against fedavg and the robust rules, with the clean runs to compare with; after the
    first fraction, the clean fedavg run once more, to see how far two runs of the same cell differ."""
    for fraction in bench.plan.fractions:
        for seed in bench.plan.robust_seeds:
            settings = robust_settings(bench, fraction, seed)
            bench.run(Cell(s, None, seed) for s in settings)
            bench.run(Cell(s, f"{kind}:{fraction:g}", seed) for kind in ATTACK_KINDS for s in settings)
        bench.run(Cell(FEDAVG_LR1, None, seed, repeat) for seed in bench.plan.robust_seeds
                  for repeat in range(1, REPEATS + 1))


def repeat_spread(bench: Bench) -> list[dict[str, Any]]:
    """The clean fedavg run and its repetitions: same cell, different timing (which devices report first)."""
    out = []
    for seed in bench.plan.robust_seeds:
        runs = [find(bench, Cell(FEDAVG_LR1, None, seed, r)) for r in range(REPEATS + 1)]
        done = [r for r in runs if r is not None]
        if len(done) > 1:
            finals = [r["final_accuracy"] or 0.0 for r in done]
            out.append({"setting": str(FEDAVG_LR1), "seed": seed, "final": finals,
                        "last3": [r["last3_mean"] for r in done],
                        "spread_points": 100 * (max(finals) - min(finals))})
    return out


def run_phases(bench: Bench) -> list[Setting]:
    tried = sweep(bench)
    rows = table_rows(bench, tried)
    for seed in bench.plan.seeds:
        bench.run(Cell(s, None, seed) for s in rows)
    robustness(bench)
    bench.report["sweep_settings"] = {k: [str(s) for s in v] for k, v in tried.items()}
    bench.report["table_settings"] = [str(s) for s in rows]
    bench.report["table_rows"] = [{"strategy": s.strategy, "options": s.kwargs} for s in rows]
    return rows


def saved_rows(report: dict[str, Any]) -> list[Setting]:
    """The accuracy table's rows as ``run_phases`` saved them (for ``--report-only``)."""
    return [Setting.of(row["strategy"], **row["options"]) for row in report.get("table_rows", [])]


# ---------------------------------------------------------------- summaries


def find(bench: Bench, cell: Cell) -> dict[str, Any] | None:
    return bench.runs.get(cell.key)


def accuracy_rows(bench: Bench, rows: list[Setting]) -> list[dict[str, Any]]:
    """Per setting: final and last-3 accuracy per seed, their means, and the mean gap to central final."""
    central = bench.report["central"]
    out = []
    for setting in rows:
        runs = [find(bench, Cell(setting, None, seed)) for seed in bench.plan.seeds]
        done = [(seed, r) for seed, r in zip(bench.plan.seeds, runs, strict=True) if r is not None]
        finals = [r["final_accuracy"] or 0.0 for _, r in done]
        gaps = [100 * (central[str(seed)]["final_accuracy"] - (r["final_accuracy"] or 0.0)) for seed, r in done]
        out.append({"setting": str(setting), "flags": setting.flags(), "seeds": [seed for seed, _ in done],
                    "final": [r["final_accuracy"] for _, r in done],
                    "last3": [r["last3_mean"] for _, r in done], "mean_final": mean(finals),
                    "mean_last3": mean([r["last3_mean"] or 0.0 for _, r in done]), "mean_gap_points": mean(gaps),
                    "complete": len(done) == len(bench.plan.seeds),
                    "notes": "; ".join(filter(None, (suspicious(r).strip(" ()") for _, r in done)))})
    return out


def accuracy_verdict(rows: list[dict[str, Any]]) -> dict[str, Any]:
    complete = [r for r in rows if r["complete"]]
    best = max(complete, key=lambda r: r["mean_final"] or 0.0, default=None)
    if best is None:
        return {"best": None, "target_holds": False}
    return {"best": best["setting"], "flags": best["flags"], "mean_gap_points": best["mean_gap_points"],
            "target_holds": best["mean_gap_points"] is not None and best["mean_gap_points"] <= TARGET_GAP_POINTS}


def robustness_rows(bench: Bench) -> list[dict[str, Any]]:
    """Per attack, setting and seed run so far: the clean and attacked accuracy and the points lost."""
    out = []
    for fraction in bench.plan.fractions:
        for seed in bench.plan.robust_seeds:
            if find(bench, Cell(FEDAVG_LR1, None, seed)) is None:
                continue
            for kind in ATTACK_KINDS:
                attack = f"{kind}:{fraction:g}"
                for setting in robust_settings(bench, fraction, seed):
                    clean, hit = find(bench, Cell(setting, None, seed)), find(bench, Cell(setting, attack, seed))
                    if clean is None or hit is None:
                        continue
                    out.append(robustness_row(setting, attack, seed, clean, hit))
    return out


def robustness_row(setting: Setting, attack: str, seed: int, clean: dict[str, Any],
                   hit: dict[str, Any]) -> dict[str, Any]:
    def lost(field: str) -> float | None:
        if clean[field] is None:
            return None
        return 100 * (clean[field] - (hit[field] or 0.0))

    return {"attack": attack, "setting": str(setting), "strategy": setting.strategy, "seed": seed,
            "clean_final": clean["final_accuracy"], "attacked_final": hit["final_accuracy"],
            "loss_points": lost("final_accuracy"), "clean_last3": clean["last3_mean"],
            "attacked_last3": hit["last3_mean"], "loss_last3_points": lost("last3_mean"),
            "rejected": hit["rejected"], "abandoned": hit["abandoned"], "bound_met_rounds": hit["bound_met_rounds"],
            "attackers": hit["attackers"], "notes": suspicious(hit).strip(" ()")}


def robustness_verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per attack kind at 10% (per seed): the best robust rule's loss against fedavg's (server lr 1)."""
    verdicts = []
    for attack, seed in sorted({(r["attack"], r["seed"]) for r in rows}):
        if not attack.endswith(f":{TARGET_ATTACK_FRACTION:g}"):
            continue
        cells = [r for r in rows if r["attack"] == attack and r["seed"] == seed]
        fedavg = next((r for r in cells if r["setting"] == str(FEDAVG_LR1)), None)
        robust = [r for r in cells if r["strategy"] in ROBUST_RULES and r["loss_points"] is not None]
        best = min(robust, key=lambda r: r["loss_points"], default=None)
        fedavg_loss = None if fedavg is None else fedavg["loss_points"]
        robust_holds = best is not None and best["loss_points"] <= TARGET_LOSS_POINTS
        verdicts.append({"attack": attack, "seed": seed, "best_robust": best and best["setting"],
                         "best_robust_loss_points": best and best["loss_points"], "fedavg_loss_points": fedavg_loss,
                         "fedavg_loses_more": robust_holds and fedavg_loss is not None and best is not None
                         and fedavg_loss > best["loss_points"],
                         "target_holds": robust_holds and fedavg_loss is not None and fedavg_loss > TARGET_LOSS_POINTS,
                         "robust_within": [r["setting"] for r in robust if r["loss_points"] <= TARGET_LOSS_POINTS]})
    return verdicts


def summarize(bench: Bench, rows: list[Setting]) -> None:
    report = bench.report
    report["accuracy"] = accuracy_rows(bench, rows)
    report["accuracy_verdict"] = accuracy_verdict(report["accuracy"])
    report["robustness"] = robustness_rows(bench)
    report["robustness_verdicts"] = robustness_verdicts(report["robustness"])
    report["repeats"] = repeat_spread(bench)
    report["worst_cases"] = worst_cases(report["robustness"])


# ---------------------------------------------------------------- report


def points(value: float | None) -> str:
    return "-" if value is None else f"{value:+.1f}"


def settings_of(plan: Plan) -> dict[str, Any]:
    accuracy = fleet_settings(plan.quick)["accuracy"] | {"server_lr": "per strategy"}
    return {"fleet": accuracy, "defaults": fleet_settings(plan.quick)["defaults"], "broker": BROKER,
            "seeds": list(plan.seeds), "robust_seeds": list(plan.robust_seeds),
            "adaptive_grids": {k: list(v) for k, v in plan.grids.items()}, "fedavgm_grid": list(plan.fedavgm_grid),
            "ladder": list(LADDER), "max_extensions": MAX_EXTENSIONS, "attack_kinds": list(ATTACK_KINDS),
            "attack_fractions": list(plan.fractions),
            "targets": {"gap_points": TARGET_GAP_POINTS, "loss_points": TARGET_LOSS_POINTS,
                        "attack_fraction": TARGET_ATTACK_FRACTION}}


def render_accuracy(report: dict[str, Any]) -> list[str]:
    seeds = report["settings"]["seeds"]
    central = [report["central"].get(str(s), {}).get("final_accuracy") for s in seeds]
    head = " / ".join(str(s) for s in seeds)
    lines = ["### Accuracy per strategy", "",
             f"Final test accuracy after {report['settings']['fleet']['rounds']} rounds, per seed ({head}), their "
             "mean, the mean of the last three rounds, and the gap: central final minus federated final, in "
             "percentage points, averaged over the seeds (negative: federated above central). The central ceiling "
             "is `bench_fleet.py`'s, trained in this run on each seed's split.", "",
             f"| strategy | final, seed {head} | mean final | mean of last 3 rounds | gap to central (points) "
             "| notes |", "| --- | --- | ---: | ---: | ---: | --- |",
             f"| central ({CENTRAL_EPOCHS} epochs) | {' / '.join(pct(c) for c in central)} "
             f"| {pct(mean([c for c in central if c is not None]))} | | | |"]
    for row in report["accuracy"]:
        lines.append(f"| `{row['setting']}` | {' / '.join(pct(a) for a in row['final'])} | {pct(row['mean_final'])} "
                     f"| {pct(row['mean_last3'])} | {num(row['mean_gap_points'])} | {row['notes']} |")
    verdict = report["accuracy_verdict"]
    lines += ["", f"Target, the best strategy's mean final accuracy within {TARGET_GAP_POINTS:g} point of central: "
              f"best `{verdict['best']}`, gap {num(verdict.get('mean_gap_points'))} points: "
              f"{ok(verdict['target_holds'])}.", ""]
    return lines


def render_sweep(report: dict[str, Any]) -> list[str]:
    seed = report["settings"]["seeds"][0]
    chosen = set(report["table_settings"])
    lines = ["### Tuning sweep", "",
             f"Seed {seed} only, same task. The adaptive optimizers' server lr grid is extended by one step of "
             f"{', '.join(f'{v:g}' for v in LADDER)} (at most {MAX_EXTENSIONS}) while the best value is on its edge. "
             "The chosen setting of each (bold) has the highest mean accuracy over the last three rounds, which "
             "is less noisy than the last round alone.", "",
             "| strategy | setting | final | mean of last 3 rounds | best (round) | notes |",
             "| --- | --- | ---: | ---: | --- | --- |"]
    for strategy, settings in report["sweep_settings"].items():
        for setting in settings:
            run = report["runs"][f"{setting} | clean | seed {seed}"]
            fed = run["federated"]
            name = f"**`{setting}`**" if setting in chosen else f"`{setting}`"
            lines.append(f"| {strategy} | {name} | {pct(run['final_accuracy'])} | {pct(run['last3_mean'])} "
                         f"| {pct(fed['best_accuracy'])} ({fed['best_round']}) | {suspicious(run).strip(' ()')} |")
    return [*lines, ""]


def render_robustness(report: dict[str, Any]) -> list[str]:
    seeds = ", ".join(map(str, report["settings"]["robust_seeds"]))
    lines = ["### Robustness to attackers", "",
             f"Seed {seeds} only (time). `attack=KIND:FRACTION`: that fraction of the devices, drawn from the seed, "
             "send `sign-flip` (their update negated) or `scale` (their update's direction) at the clipping bound. "
             "Loss: the same setting's clean run (same seed) minus the attacked run, in points (negative: the "
             "attacked run ended higher). Krum and Multi-Krum assume `attackers = ceil(fraction * mean selected)` "
             "per round (the clean fedavg run's selection), their clean runs with the same setting; `bound met`: "
             "rounds with n > 2f + 2 accepted updates. Rejected: updates the coordinator refused (every attacker's "
             "update is at the bound, so the norm check should refuse none); attackers: hostile devices in the "
             "fleet, and the updates they trained (sent; some may arrive after their round closed).", "",
             "| attack | strategy | clean final | attacked final | loss (points) | loss, last 3 rounds | rejected "
             "| bound met | attackers (devices / updates) | notes |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | --- | --- |"]
    for r in report["robustness"]:
        bound = "-" if r["bound_met_rounds"] is None else "{}/{}".format(*r["bound_met_rounds"])
        rejected = ", ".join(f"{k} {v}" for k, v in r["rejected"].items()) or "none"
        hostile = "-" if r["attackers"] is None else "{devices} / {updates_trained}".format(**r["attackers"])
        lines.append(f"| {r['attack']} | `{r['setting']}` | {pct(r['clean_final'])} | {pct(r['attacked_final'])} "
                     f"| {points(r['loss_points'])} | {points(r['loss_last3_points'])} | {rejected} | {bound} "
                     f"| {hostile} | {r['notes']} |")
    lines += ["", f"Target at {TARGET_ATTACK_FRACTION:g} attackers, read strictly: some robust rule loses at most "
              f"{TARGET_LOSS_POINTS:g} points and fedavg (server lr 1) loses more than {TARGET_LOSS_POINTS:g} "
              "(an attack that does not hurt fedavg shows nothing); whether fedavg merely lost more than the best "
              "robust rule is said beside it.", ""]
    for v in report["robustness_verdicts"]:
        lines.append(f"- {v['attack']} (seed {v['seed']}): best robust `{v['best_robust']}` "
                     f"{points(v['best_robust_loss_points'])}, fedavg {points(v['fedavg_loss_points'])} (more than "
                     f"the best robust rule: {'yes' if v['fedavg_loses_more'] else 'no'}); robust rules within "
                     f"{TARGET_LOSS_POINTS:g}: {', '.join(f'`{s}`' for s in v['robust_within']) or 'none'}: "
                     f"{ok(v['target_holds'])}.")
    lines.append("")
    lines += ["", *render_worst_cases(report)]
    for r in report.get("repeats", []):
        lines.append(f"Noise floor: `{r['setting']}`, clean, seed {r['seed']}, run {len(r['final'])} times: final "
                     f"{' / '.join(pct(a) for a in r['final'])} (last 3 rounds "
                     f"{' / '.join(pct(a) for a in r['last3'])}), {r['spread_points']:.1f} points apart; a loss "
                     "within that is not told apart from no loss.")
    return [*lines, ""]


def render(report: dict[str, Any]) -> str:
    m, fleet = report["machine"], report["settings"]["fleet"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines = [START, "## Strategies: accuracy, tuning and robustness", "",
             f"`bench_fleet.py`'s accuracy task with each `--strategy`: the digits `cnn`, {fleet['devices']} devices, "
             f"`partition={fleet['partition']}`, {fleet['rounds']} rounds, `fraction={fleet['fraction']}`, "
             f"`local_epochs={fleet['local_epochs']}`, `min_clients={fleet['min_clients']}`, "
             f"`clip_norm={fleet['clip_norm']}`, `round_timeout={fleet['round_timeout_s']}` (real seconds), rounds "
             f"{fleet['round_interval']:g} simulated seconds apart on a {fleet['day_seconds']:g}-second day, "
             f"against the local Mosquitto ({BROKER}), a fresh federation per run; strategy options not shown are "
             "at their defaults (`docs/STRATEGIES.md`).", "",
             "Reproduce: `python bench/bench_strategies.py` (`--resume` continues an interrupted run; raw numbers, "
             "every run's accuracy per round and refusals: `bench/results/strategies.json`).", "",
             f"Measured {report['date']} on {m['cpu']} ({m['cores']} cores, {m['memory_mb']:,} MB), {m['platform']}, "
             f"Python {m['python']}; {pkgs}. {len(report['runs'])} fleet runs, "
             f"{report['bench_seconds'] / 60:.0f} min in all; mean `run_fleet` call "
             f"{mean([r['run_fleet_call_s'] for r in report['runs'].values()]) or 0:.0f} s; load average (1 min) "
             f"{report['loadavg_start'][0]:.2f} at the start, {report['loadavg_end'][0]:.2f} at the end.", "",
             *(f"{note}\n" for note in report.get("notes", []))]
    if report.get("accuracy"):
        lines += render_accuracy(report)
    if report.get("sweep_settings"):
        lines += render_sweep(report)
    if report.get("robustness"):
        lines += render_robustness(report)
    lines += report.get("recommendation_lines", [])
    return "\n".join([*lines, END])


# ---------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="20 devices, 5 rounds, few runs; writes only to /tmp")
    p.add_argument("--resume", action="store_true", help="keep the runs already in the json, run the rest")
    p.add_argument("--report-only", action="store_true", help="render the json's runs, run nothing")
    p.add_argument("--runs", type=Path, help="keep the run folders here (default: a temporary folder, removed)")
    p.add_argument("--wait-for", type=Path, help="before running, wait until this file exists (checked every 30 s)")
    p.add_argument("--note", action="append", default=[], help="a sentence about the conditions, kept in the json "
                                                                "and printed under the section's header")
    p.add_argument("--wait-max-s", type=float, default=1800.0, help="give up waiting after this long (1800)")
    return p.parse_args(argv)


def wait_for(path: Path, max_s: float) -> dict[str, Any]:
    started = time.monotonic()
    while not path.exists() and time.monotonic() - started < max_s:
        print(f"waiting for {path} ({(time.monotonic() - started) / 60:.1f} min so far)", flush=True)
        time.sleep(30)
    return {"file": str(path), "found": path.exists(), "waited_s": round(time.monotonic() - started)}


def load_report(plan: Plan, resume: bool) -> dict[str, Any]:
    """A fresh report, or with ``resume`` the saved one's runs (refused if it measured other numbers)."""
    report: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "plan": plan.identity(), "machine": machine_info(), "settings": settings_of(plan),
                              "runs": {}, "central": {}, "bench_seconds_before": 0.0}
    if resume and plan.results.is_file():
        saved = json.loads(plan.results.read_text(encoding="utf-8"))
        if saved.get("plan") != report["plan"]:
            raise SystemExit(f"{plan.results} measured other settings than this run's: start afresh without --resume")
        report.update(runs=saved["runs"], central=saved["central"],
                      bench_seconds_before=saved.get("bench_seconds", 0.0))
        report.update({k: saved[k] for k in ("date", "sweep_settings", "table_settings", "table_rows", "notes",
                                             "loadavg_start", "loadavg_end") if k in saved})
        print(f"resuming: {len(report['runs'])} runs in {plan.results}", flush=True)
    return report


def worst_cases(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rule (Krum's whatever ``attackers``; fedavg per server lr) and attack fraction: the lowest attacked final
    and the largest loss over the measured attacks."""
    out: list[dict[str, Any]] = []
    for r in rows:
        rule = r["setting"] if r["strategy"] == "fedavg" else r["strategy"]
        fraction = r["attack"].split(":")[1]
        found = next((w for w in out if w["rule"] == rule and w["fraction"] == fraction), None)
        if found is None:
            found = {"rule": rule, "strategy": r["strategy"], "fraction": fraction, "worst_final": 1.0,
                     "largest_loss_points": -100.0, "attacks": 0}
            out.append(found)
        found["worst_final"] = min(found["worst_final"], r["attacked_final"] or 0.0)
        found["largest_loss_points"] = max(found["largest_loss_points"], r["loss_points"] or 0.0)
        found["attacks"] += 1
    return out


def render_worst_cases(report: dict[str, Any]) -> list[str]:
    cases = report.get("worst_cases", [])
    fractions = list(dict.fromkeys(w["fraction"] for w in cases))
    lines = [f"Worst case per rule over both attack kinds ({', '.join(ATTACK_KINDS)}):", "",
             "| strategy | " + " | ".join(f"lowest attacked final, {f} | largest loss, {f}" for f in fractions) + " |",
             "| --- | " + " | ".join("---: | ---:" for _ in fractions) + " |"]
    for rule in dict.fromkeys(w["rule"] for w in cases):
        cells = []
        for f in fractions:
            w = next((w for w in cases if w["rule"] == rule and w["fraction"] == f), None)
            cells.append("- | -" if w is None else f"{pct(w['worst_final'])} | {points(w['largest_loss_points'])}")
        lines.append(f"| `{rule}` | {' | '.join(cells)} |")
    return [*lines, ""]


def recommendation(report: dict[str, Any]) -> list[str]:
    verdict = report["accuracy_verdict"]
    if verdict["best"] is None:
        return []
    rows = {r["setting"]: r for r in report["accuracy"]}
    best = rows[verdict["best"]]
    near = [r for r in report["accuracy"] if r is not best and r["complete"]
            and (best["mean_final"] or 0.0) - (r["mean_final"] or 0.0) <= TARGET_GAP_POINTS / 100]
    lines = ["### Recommended settings", "",
             f"- A fleet without attackers: `{verdict['flags']}`, the highest mean final accuracy over the seeds "
             f"({pct(best['mean_final'])}, {num(verdict['mean_gap_points'])} points below central; mean of the last "
             f"three rounds {pct(best['mean_last3'])})."
             + (f" Within {TARGET_GAP_POINTS:g} point of it, so not told apart on three seeds: "
                + "; ".join(f"`{r['flags']}` ({pct(r['mean_final'])}, last three rounds {pct(r['mean_last3'])})"
                            for r in near) + "." if near else "")]
    robust = [w for w in report.get("worst_cases", []) if w["strategy"] in ROBUST_RULES]
    by_rule: dict[str, float] = {}
    for w in robust:
        by_rule[w["rule"]] = min(by_rule.get(w["rule"], 1.0), w["worst_final"])
    if by_rule:
        rule = max(by_rule, key=lambda k: by_rule[k])
        clean = rows.get(rule, {}).get("mean_final")
        losses = [w["largest_loss_points"] for w in robust if w["rule"] == rule]
        extra = " with `--attackers` set to the attackers expected per round" if rule in KRUMS else ""
        lines.append(f"- A fleet that may hold attackers: `--strategy {rule}`{extra}, the robust rule with the "
                     f"highest worst-case final accuracy over every measured attack ({pct(by_rule[rule])}; it lost "
                     f"at most {points(max(losses))} points). Its clean accuracy, {pct(clean)} over the seeds, is the "
                     "price of that robustness.")
    return [*lines, ""]


def main() -> int:
    args = parse_args(sys.argv[1:])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("coordinator").setLevel(logging.ERROR)  # late updates are counted per round, as in the CLI
    plan = Plan.build(args.quick)
    report = load_report(plan, args.resume or args.report_only)
    if args.wait_for is not None and not args.report_only:
        report["waited"] = wait_for(args.wait_for, args.wait_max_s)
    runs_dir = args.runs or Path(tempfile.mkdtemp(prefix="bench-strategies-"))
    runs_dir.mkdir(parents=True, exist_ok=True)
    bench = Bench(plan, runs_dir, keep_runs=args.runs is not None, report=report)
    if not args.report_only:
        report["loadavg_start"] = os.getloadavg()
    try:
        rows = saved_rows(report) if args.report_only else run_phases(bench)
    finally:
        if args.runs is None:
            shutil.rmtree(runs_dir, ignore_errors=True)
    if not args.report_only:
        report["loadavg_end"] = os.getloadavg()
    report["notes"] = list(dict.fromkeys([*report.get("notes", []), *args.note]))
    summarize(bench, rows)
    report["recommendation_lines"] = recommendation(report)
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
