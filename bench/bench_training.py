"""Training-step benchmark: the device runtime (ai-edge-litert, no TensorFlow) vs Keras ``train_on_batch``.

For each configuration the parent exports the model once, writes the training data and
a batch order to an ``.npz``, then runs two fresh child processes one after the other:

* ``--worker device``: ``edge_runtime`` and numpy only (it checks that TensorFlow was
  never imported). Steps are timed on the artifact's ``train`` signature runner, the
  object ``Trainer.fit`` calls once per batch, fed the exact batches Keras gets.
  ``Trainer.fit`` is timed as well (between ``on_step`` callbacks, its own shuffle of
  the same data) to show what the public API adds per step.
* ``--worker keras``: the same spec as a plain compiled Keras model
  (``model_export.reference.keras_model``, default Keras settings) starting from the
  artifact's initial weights, timed on ``model.train_on_batch(x, y)``.

Both gather each batch outside the timed region and time the call with
``time.perf_counter``; the first ``--warmup`` steps are excluded. Peak RSS is the
process's ``VmHWM`` from ``/proc/self/status``: ``ru_maxrss`` is carried across
``exec`` on Linux, so a child of this (TensorFlow-importing) parent would report the
parent's peak. Elsewhere ``ru_maxrss`` is the fallback. Each worker prints one JSON line.

Run from the project root: ``python bench/bench_training.py`` (``--help`` for options).
It writes ``bench/results/training.json`` and its section of ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from bench_markdown import (  # bench/bench_markdown.py: run as `python bench/<script>.py`
    cpu_name,
    ok,
    package_version,
    update_section,
)

if TYPE_CHECKING:
    from model_export.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
RESULT_PREFIX = "BENCH_RESULT "
START, END = "<!-- training:start -->", "<!-- training:end -->"
TARGET_SPEEDUP, TARGET_RSS_RATIO = 3.0, 0.2
PACKAGES = ("tensorflow", "keras", "ai-edge-litert", "numpy")
LOG_KEYWORDS = ("xnnpack", "delegate")
Step = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class Config:
    key: str
    spec: ModelSpec
    x: np.ndarray
    y: np.ndarray
    data: str


# ---------------------------------------------------------------- workers (child processes)


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def time_steps(step: Step, data: Path, warmup: int) -> dict[str, Any]:
    """Run ``step`` over the batches listed in ``data``; per-step statistics of the timed ones."""
    with np.load(data, allow_pickle=False) as archive:
        x, y, order = archive["x"], archive["y"], archive["order"]
    times, losses = [], []
    for idx in order:
        bx, by = x[idx], y[idx]
        started = time.perf_counter()
        losses.append(step(bx, by))
        times.append((time.perf_counter() - started) * 1e3)
    timed = times[warmup:]
    return {"steps": len(timed), "warmup": warmup, "median_ms": statistics.median(timed),
            "p90_ms": statistics.quantiles(timed, n=10)[-1], "min_ms": min(timed), "first_step_ms": times[0],
            "mean_loss": float(np.mean(losses)), "last_loss": losses[-1]}


def device_worker(artifact_dir: Path, data: Path, warmup: int, threads: int | None) -> dict[str, Any]:
    started = time.perf_counter()
    from edge_runtime import Artifact, Trainer

    imported = time.perf_counter()
    trainer = Trainer(Artifact.load(artifact_dir), num_threads=threads)
    train = trainer._runner("train")  # the train SignatureRunner that Trainer.fit calls once per batch
    batch = trainer.manifest.train_batch_size
    mask, lr = np.ones(batch, np.float32), np.float32(trainer.manifest.optimizer.learning_rate)
    out = {"worker": "device", "backend": trainer.backend.name, "ready_at": time.time(),
           "import_s": imported - started, "load_s": time.perf_counter() - imported,
           "threads": threads or "runtime default (1)"}
    out |= time_steps(lambda bx, by: float(train(x=bx, y=by, mask=mask, lr=lr)["loss"]), data, warmup)
    out["peak_rss_mb"] = peak_rss_mb()  # taken before the Trainer.fit pass, which copies the data set
    out["trainer_fit_median_ms"] = trainer_fit_median_ms(trainer, data, out["steps"])
    out["tensorflow_imported"] = any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
    return out


def trainer_fit_median_ms(trainer: Any, data: Path, steps: int) -> float:
    """Median time between ``on_step`` callbacks of ``Trainer.fit``: the public API's cost per step."""
    with np.load(data, allow_pickle=False) as archive:
        x, y = archive["x"], archive["y"]
    stamps: list[float] = []
    trainer.fit(x, y, steps=steps + 1, on_step=lambda _step, _loss: stamps.append(time.perf_counter()))
    return statistics.median(np.diff(stamps) * 1e3)


def keras_worker(artifact_dir: Path, data: Path, warmup: int) -> dict[str, Any]:
    started = time.perf_counter()
    import keras
    import tensorflow as tf

    from edge_runtime import Artifact
    from model_export.reference import keras_model
    from model_export.spec import ModelSpec

    imported = time.perf_counter()
    artifact = Artifact.load(artifact_dir)
    m = artifact.manifest
    spec = ModelSpec.from_manifest(m)
    model = keras_model(spec, artifact.initial_weights())
    out = {"worker": "keras", "backend": f"tensorflow {tf.__version__} / keras {keras.__version__}",
           "ready_at": time.time(), "import_s": imported - started, "load_s": time.perf_counter() - imported,
           "threads": f"TensorFlow default (intra-op {tf.config.threading.get_intra_op_parallelism_threads()}"
                      f" = all {os.cpu_count()} cores)"}
    out |= time_steps(lambda bx, by: float(model.train_on_batch(bx, by)[0]), data, warmup)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


# ---------------------------------------------------------------- parent: data, export, runs


def batch_order(n: int, batch: int, count: int, seed: int) -> np.ndarray:
    """``count`` batches of indices into ``n`` examples: seeded shuffles, one epoch after another."""
    rng = np.random.default_rng(seed)
    epochs = -(-count * batch // n)
    return np.concatenate([rng.permutation(n) for _ in range(epochs)])[:count * batch].reshape(count, batch)


def build_configs(only: list[str]) -> list[Config]:
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    from edge_runtime.manifest import OptimizerConfig
    from model_export.demo import DIGITS_SPEC, digits_split
    from model_export.spec import ModelSpec, standardization

    sgd = OptimizerConfig("sgd", 0.05, momentum=0.9)
    bc = load_breast_cancer()
    x_bc, _, y_bc, _ = train_test_split(bc.data.astype(np.float32), bc.target.astype(np.int32),
                                        test_size=0.25, random_state=0, stratify=bc.target)
    norm = standardization(x_bc)
    digits, _ = digits_split()
    rng = np.random.default_rng(0)
    configs = [
        Config("mlp-breast-cancer", ModelSpec(family="mlp", input_shape=(30,), num_classes=2, hidden=(64, 32),
                                              optimizer=sgd, normalization=norm, name="breast-cancer-mlp"),
               x_bc, y_bc, f"sklearn load_breast_cancer, {len(y_bc)}-row training split, normalized in the model"),
        Config("cnn-digits", DIGITS_SPEC, digits.x, digits.y, f"sklearn load_digits, {len(digits)}-row training split"),
        Config("cnn-28x28", ModelSpec(family="cnn", input_shape=(28, 28, 1), num_classes=10, filters=(16, 32),
                                      hidden=(128,), optimizer=sgd, name="cnn-28x28"),
               rng.random((2048, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 2048, dtype=np.int32),
               "2048 random 28x28x1 images and random labels (numpy): timing only, nothing to learn"),
    ]
    return [c for c in configs if not only or c.key in only]


def prepare(config: Config, folder: Path, steps: int, warmup: int) -> tuple[Path, Path]:
    """Export ``config``'s artifact and write its data and batch order; return both paths."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from model_export.exporter import export_model

    artifact = folder / config.key
    export_model(config.spec, artifact)
    data = folder / f"{config.key}.npz"
    order = batch_order(len(config.y), config.spec.batch_size, warmup + steps, seed=1)
    np.savez(data, x=config.x, y=config.y, order=order)
    return artifact, data


def run_worker(kind: str, artifact: Path, data: Path, args: argparse.Namespace, env: dict[str, str],
               threads: int | None = None) -> dict[str, Any]:
    """Run one worker in a fresh process and return its JSON result plus spawn-to-ready wall time."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--artifact", str(artifact),
           "--data", str(data), "--warmup", str(args.warmup)]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    spawned = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{kind} worker failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["startup_s"] = result.pop("ready_at") - spawned
    notes = [line.strip() for line in proc.stderr.splitlines() if any(k in line.lower() for k in LOG_KEYWORDS)]
    result["log_notes"] = sorted(set(notes))
    return result


def summarize(config: Config, device: dict[str, Any], keras: dict[str, Any],
              device_all: dict[str, Any]) -> dict[str, Any]:
    from model_export.spec import weight_specs

    speedup = keras["median_ms"] / device["median_ms"]
    rss_ratio = device["peak_rss_mb"] / keras["peak_rss_mb"]
    return {"model": config.spec.name, "family": config.spec.family, "input_shape": list(config.spec.input_shape),
            "params": sum(w.size for w in weight_specs(config.spec)), "batch": config.spec.batch_size,
            "optimizer": f"{config.spec.optimizer.name} lr {config.spec.optimizer.learning_rate} "
                         f"momentum {config.spec.optimizer.momentum}",
            "data": config.data, "device": device, "keras": keras, "device_all_cores": device_all,
            "speedup": speedup, "rss_ratio": rss_ratio,
            "speedup_all_cores": keras["median_ms"] / device_all["median_ms"],
            "targets": {"speedup_min": TARGET_SPEEDUP, "speedup_holds": speedup >= TARGET_SPEEDUP,
                        "rss_ratio_max": TARGET_RSS_RATIO, "rss_ratio_holds": rss_ratio <= TARGET_RSS_RATIO}}


def machine_info() -> dict[str, Any]:
    cpu = cpu_name()
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "packages": {p: package_version(p) for p in PACKAGES}}




# ---------------------------------------------------------------- parent: reporting


def render_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines = [START, "## Training step: device runtime vs Keras", "",
             "Per training step, the device process (`edge_runtime` on ai-edge-litert, TensorFlow never imported) "
             "against Keras `train_on_batch` in a TensorFlow process: same model, same initial weights, same batch "
             "size, same batches in the same order, each side in its own fresh process, one run. Times are the "
             "median and p90 of the timed steps after warm-up (`time.perf_counter` around the call); RSS is the "
             "process's peak (`VmHWM`). Start-up is spawn to model ready (interpreter start, imports, model load), "
             "kept apart from the step times. Default threading on both sides: LiteRT's default of 1 interpreter "
             "thread, TensorFlow's default of all cores; the device is measured a second time with as many "
             "interpreter threads as there are cores, to compare at equal threads. The device side is timed on "
             "the artifact's `train` signature runner, the call `Trainer.fit` makes per batch; "
             "`Trainer.fit`'s own per-step time is shown as well.",
             "", "Reproduce: `python bench/bench_training.py` (raw numbers: `bench/results/training.json`).", "",
             f"Measured {report['date']} on {m['cpu']} ({m['cpu_count']} CPUs), {m['platform']}, "
             f"Python {m['python']}; {pkgs}. {report['steps']} timed steps after {report['warmup']} warm-up steps.",
             "", f"| config | params | batch | speed-up (target ≥ 3x) | speed-up, device on all {m['cpu_count']} "
             "cores like TensorFlow | RSS ratio (target ≤ 0.2) |",
             "| --- | ---: | ---: | --- | --- | --- |"]
    for key, c in report["configs"].items():
        t = c["targets"]
        lines.append(f"| {key} | {c['params']:,} | {c['batch']} | {c['speedup']:.1f}x {ok(t['speedup_holds'])} "
                     f"| {c['speedup_all_cores']:.1f}x | {c['rss_ratio']:.2f} {ok(t['rss_ratio_holds'])} |")
    for key, c in report["configs"].items():
        lines += ["", *render_config(key, c)]
    return "\n".join([*lines, END])


def render_config(key: str, c: dict[str, Any]) -> list[str]:
    d, k, t = c["device"], c["keras"], c["targets"]
    rows = [("median step (ms)", f"{d['median_ms']:.3f}", f"{k['median_ms']:.3f}",
             f"speed-up {c['speedup']:.1f}x, target ≥ 3x: {ok(t['speedup_holds'])}"),
            ("p90 step (ms)", f"{d['p90_ms']:.3f}", f"{k['p90_ms']:.3f}", ""),
            (f"median step, device on {c['device_all_cores']['threads']} threads (ms)",
             f"{c['device_all_cores']['median_ms']:.3f}", f"{k['median_ms']:.3f}",
             f"speed-up {c['speedup_all_cores']:.1f}x"),
            ("peak RSS (MB)", f"{d['peak_rss_mb']:.0f}", f"{k['peak_rss_mb']:.0f}",
             f"{c['rss_ratio']:.2f}, target ≤ 0.2: {ok(t['rss_ratio_holds'])}"),
            ("start-up + import + load (s)", f"{d['startup_s']:.2f}", f"{k['startup_s']:.2f}", ""),
            ("first step, excluded (ms)", f"{d['first_step_ms']:.1f}", f"{k['first_step_ms']:.1f}", ""),
            ("mean loss over all steps", f"{d['mean_loss']:.4f}", f"{k['mean_loss']:.4f}",
             "same batches: parity check"),
            ("`Trainer.fit` median step (ms)", f"{d['trainer_fit_median_ms']:.3f}", "", "public API, own shuffle")]
    return [f"### {key}: {c['model']} ({c['family']}, input {tuple(c['input_shape'])}, {c['params']:,} parameters, "
            f"batch {c['batch']}, {c['optimizer']})", "", f"Data: {c['data']}. "
            f"TensorFlow imported by the device process: {'yes' if d['tensorflow_imported'] else 'no'}.", "",
            "| per step | device (ai-edge-litert) | Keras `train_on_batch` | ratio |", "| --- | ---: | ---: | --- |",
            *(f"| {a} | {b} | {e} | {r} |" for a, b, e, r in rows)]





def run_all(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)  # before prepare() quiets TensorFlow, so the workers' logs stay as users see them
    report: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine_info(), "steps": args.steps, "warmup": args.warmup,
                              "threads": args.threads, "configs": {}}
    with tempfile.TemporaryDirectory(prefix="edgefl-bench-") as tmp:
        for config in build_configs(args.configs):
            artifact, data = prepare(config, Path(tmp), args.steps, args.warmup)
            device = run_worker("device", artifact, data, args, env, threads=args.threads)
            device_all = run_worker("device", artifact, data, args, env, threads=os.cpu_count())
            print(f"{config.key:18s} device  median {device['median_ms']:8.3f} ms  p90 {device['p90_ms']:8.3f} ms  "
                  f"peak RSS {device['peak_rss_mb']:6.0f} MB  start-up {device['startup_s']:.2f} s", flush=True)
            keras = run_worker("keras", artifact, data, args, env)
            print(f"{config.key:18s} keras   median {keras['median_ms']:8.3f} ms  p90 {keras['p90_ms']:8.3f} ms  "
                  f"peak RSS {keras['peak_rss_mb']:6.0f} MB  start-up {keras['startup_s']:.2f} s", flush=True)
            report["configs"][config.key] = summary = summarize(config, device, keras, device_all)
            print(f"{config.key:18s} speed-up {summary['speedup']:.1f}x ({summary['speedup_all_cores']:.1f}x with "
                  f"{os.cpu_count()} device threads)  RSS ratio {summary['rss_ratio']:.2f}", flush=True)
    return report


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="timed steps per worker (%(default)s)")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (%(default)s)")
    p.add_argument("--threads", type=int, help="device interpreter threads (default: the runtime's default, 1)")
    p.add_argument("--configs", nargs="*", default=[], help="only these configs (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "training.json")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--worker", choices=["device", "keras"], help=argparse.SUPPRESS)
    p.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if args.worker is not None:
        result = (device_worker(args.artifact, args.data, args.warmup, args.threads) if args.worker == "device"
                  else keras_worker(args.artifact, args.data, args.warmup))
        print(RESULT_PREFIX + json.dumps(result), flush=True)
        return 0
    if args.steps < 10 or args.warmup < 1:
        raise SystemExit("need --steps >= 10 and --warmup >= 1")
    report = run_all(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    update_section(args.markdown, render_markdown(report), START, END)
    print(f"wrote {args.out} and {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
