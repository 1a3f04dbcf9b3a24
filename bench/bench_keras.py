"""Keras models on the device vs in Keras: time per training step, peak memory, and bytes per round.

The models are ``model_export.keras_examples``'s, exported once by the parent:

* ``mobilenet-full``: the MobileNet-style digits network, every layer trained;
* ``mobilenet-frozen``: the same with its base frozen (``--trainable-from head_conv``); on the Keras side the
  same layers are ``trainable = False``;
* ``text``: the bag-of-embeddings text classifier on its synthetic corpus.

Each side runs in a fresh child process, as in ``bench_training.py`` (whose timing and ``VmHWM`` helpers are
reused): the device worker imports ``edge_runtime`` and numpy only (it records whether TensorFlow was
imported) and times the artifact's ``train`` signature runner; the Keras worker loads the same ``.keras``
file and times ``model.train_on_batch``. Both get the same batches in the same order; the first
``--warmup`` steps are excluded. Each worker prints one JSON line.

The device worker also measures the bytes a round moves with this artifact: its trained weights minus the
initial ones, encoded by ``edge_runtime``'s ``UpdatePipeline`` for a ``float32`` and a ``float16`` task (the
payload a device publishes), the global model a device downloads (``GlobalHeader`` and the travelling
weights, as the coordinator encodes it), and the artifact bundle, downloaded once per artifact.

Run from the project root: ``python bench/bench_keras.py`` (``--help`` for options). It writes
``bench/results/keras.json`` and its section of ``BENCHMARKS.md``. Timings are only worth keeping from a
quiet machine: the load average at the start and the end of the run is recorded next to them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bench_markdown import ok, update_section  # bench/: run as `python bench/<script>.py`
from bench_training import RESULT_PREFIX, batch_order, machine_info, peak_rss_mb, time_steps

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- keras:start -->", "<!-- keras:end -->"
TARGET_RSS_RATIO = 0.2
BATCH = 32
LEARNING_RATE = 0.001  # Adam, as keras_examples recommends (its rate does not change a step's cost)


@dataclass(frozen=True)
class Config:
    key: str
    model: Path  # the .keras file
    data: Path  # the training split, .npz
    trainable_from: str | None
    target_speedup: float
    about: str


# ---------------------------------------------------------------- workers (child processes)


def device_worker(artifact_dir: Path, data: Path, warmup: int, threads: int | None) -> dict[str, Any]:
    started = time.perf_counter()
    from edge_runtime import Artifact, Trainer

    imported = time.perf_counter()
    trainer = Trainer(Artifact.load(artifact_dir), num_threads=threads)
    train = trainer._runner("train")  # the SignatureRunner Trainer.fit calls once per batch
    m = trainer.manifest
    fixed = {"mask": np.ones(m.train_batch_size, np.float32), "lr": np.float32(m.optimizer.learning_rate)}
    if m.proximal:
        fixed["mu"] = np.float32(0.0)
    out: dict[str, Any] = {"worker": "device", "backend": trainer.backend.name, "ready_at": time.time(),
           "import_s": imported - started, "load_s": time.perf_counter() - imported,
           "threads": threads or "runtime default (1)"}
    out |= time_steps(lambda bx, by: float(train(x=bx, y=by, **fixed)["loss"]), data, warmup)
    out["peak_rss_mb"] = peak_rss_mb()
    out["tensorflow_imported"] = any(name.split(".")[0] == "tensorflow" for name in sys.modules)
    out["bytes"] = round_bytes(trainer, out["steps"] * m.train_batch_size, out["last_loss"])
    return out


def round_bytes(trainer: Any, examples: int, loss: float) -> dict[str, int]:
    """What one round moves for this artifact, encoded by the runtime's own code."""
    from edge_runtime.manifest import MANIFEST_FILE
    from edge_runtime.protocol import GlobalHeader, TrainTask, artifact_id, bundle_files, encode_tensors
    from edge_runtime.update_stages import UpdatePipeline
    from edge_runtime.weights import select

    artifact = trainer.artifact
    files = {name: (artifact.folder / name).read_bytes()
             for name in (MANIFEST_FILE, trainer.manifest.tflite_file, trainer.manifest.weights_file)}
    identity = artifact_id(files[MANIFEST_FILE])
    initial = select(artifact.initial_weights(), trainer.manifest.federated)
    local = select(trainer.get_weights(), trainer.manifest.federated)
    sizes = {"global_model": len(encode_tensors(GlobalHeader(1, 1, identity), initial)),
             "artifact_once": len(bundle_files(files, MANIFEST_FILE))}
    for codec in ("float32", "float16"):
        task = TrainTask("bench", round=1, model_version=1, artifact_id=identity, deadline=1e12, epochs=1,
                         lr=0.001, clip_norm=1e6, seed=0, codec=codec)
        update = UpdatePipeline().encode("dev-00000", task, local, initial, examples, loss)
        sizes[f"update_{codec}"] = len(update.payload)
    return sizes


def keras_worker(model_path: Path, trainable_from: str | None, data: Path, warmup: int) -> dict[str, Any]:
    started = time.perf_counter()
    import keras
    import tensorflow as tf

    imported = time.perf_counter()
    model = keras.saving.load_model(model_path, compile=False)
    if trainable_from is not None:
        names = [layer.name for layer in model.layers]
        for layer in model.layers[:names.index(trainable_from)]:
            layer.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    out: dict[str, Any] = {"worker": "keras", "backend": f"tensorflow {tf.__version__} / keras {keras.__version__}",
           "ready_at": time.time(), "import_s": imported - started, "load_s": time.perf_counter() - imported,
           "threads": f"TensorFlow default ({os.cpu_count()} cores)",
           "trainable_parameters": int(sum(np.prod(w.shape) for w in model.trainable_weights))}
    out |= time_steps(lambda bx, by: float(np.ravel(model.train_on_batch(bx, by))[0]), data, warmup)
    out["peak_rss_mb"] = peak_rss_mb()
    return out


# ---------------------------------------------------------------- parent: models, export, runs


def build_configs(folder: Path, only: list[str]) -> list[Config]:
    """Write the examples (a short pre-training: the weights' values do not change a step's cost)."""
    from model_export.keras_examples import DIGITS_HEAD, write_digits, write_text

    digits = write_digits(folder / "digits", pretrain_epochs=2)
    text = write_text(folder / "text")
    configs = [
        Config("mobilenet-full", digits.model, digits.train, None, 2.0,
               "MobileNet-style digits network, every layer trained (BatchNormalization: see below)"),
        Config("mobilenet-frozen", digits.model, digits.train, DIGITS_HEAD, 3.0,
               f"the same, base frozen: trained from {DIGITS_HEAD} on"),
        Config("text", text.model, text.train, None, 3.0, "Embedding(500, 32), average, Dense 32 relu, Dense 4"),
    ]
    return [c for c in configs if not only or c.key in only]


def prepare(config: Config, folder: Path, steps: int, warmup: int) -> tuple[Path, Path]:
    """Export ``config``'s artifact and write its batches; return both paths."""
    from edge_runtime.manifest import OptimizerConfig
    from model_export.keras_export import KerasExport, export_keras, load_keras_model

    artifact = folder / "artifacts" / config.key
    options = KerasExport(batch_size=BATCH, optimizer=OptimizerConfig("adam", LEARNING_RATE),
                          trainable_from=config.trainable_from)
    export_keras(load_keras_model(config.model), artifact, options)
    with np.load(config.data) as split:
        x, y = split["x"], split["y"]
    data = folder / f"{config.key}.npz"
    np.savez(data, x=x, y=y, order=batch_order(len(y), BATCH, warmup + steps, seed=1))
    return artifact, data


def run_worker(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one worker in a fresh process; its JSON result plus spawn-to-ready wall time."""
    spawned = time.time()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *cmd], capture_output=True, text=True,
                          env=env, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"worker {' '.join(cmd[:2])} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["startup_s"] = result.pop("ready_at") - spawned
    return result


def measure(config: Config, folder: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    artifact, data = prepare(config, folder, args.steps, args.warmup)
    common = ["--data", str(data), "--warmup", str(args.warmup)]
    device = run_worker(["--worker", "device", "--artifact", str(artifact), *common], env)
    device_all = run_worker(["--worker", "device", "--artifact", str(artifact), "--threads", str(os.cpu_count()),
                             *common], env)
    frozen = ["--trainable-from", config.trainable_from] if config.trainable_from else []
    keras = run_worker(["--worker", "keras", "--model", str(config.model), *frozen, *common], env)
    manifest = json.loads((artifact / "manifest.json").read_text())
    speedup, rss_ratio = keras["median_ms"] / device["median_ms"], device["peak_rss_mb"] / keras["peak_rss_mb"]
    return {"about": config.about, "batch": BATCH, "optimizer": f"adam lr {LEARNING_RATE}",
            "travelling_parameters": sum(int(np.prod(w["shape"])) for w in manifest["weights"]),
            "frozen_values": manifest["exporter"]["frozen_parameters"], "device": device, "keras": keras,
            "device_all_cores": device_all, "speedup": speedup,
            "speedup_all_cores": keras["median_ms"] / device_all["median_ms"], "rss_ratio": rss_ratio,
            "targets": {"speedup_min": config.target_speedup, "speedup_holds": speedup >= config.target_speedup,
                        "rss_ratio_max": TARGET_RSS_RATIO, "rss_ratio_holds": rss_ratio <= TARGET_RSS_RATIO}}


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    report: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "machine": machine_info(), "steps": args.steps, "warmup": args.warmup,
                              "load_average_start": os.getloadavg()[0], "configs": {}}
    with tempfile.TemporaryDirectory(prefix="edgefl-bench-keras-") as tmp:
        for config in build_configs(Path(tmp), args.configs):
            c = report["configs"][config.key] = measure(config, Path(tmp), args, env)
            d, k = c["device"], c["keras"]
            print(f"{config.key:17s} device {d['median_ms']:7.3f} ms  keras {k['median_ms']:7.3f} ms  speed-up "
                  f"{c['speedup']:5.1f}x  RSS {d['peak_rss_mb']:4.0f} / {k['peak_rss_mb']:4.0f} MB  "
                  f"update {d['bytes']['update_float32']:,} B", flush=True)
    report["load_average_end"] = os.getloadavg()[0]
    return report


# ---------------------------------------------------------------- reporting


def render_markdown(report: dict[str, Any]) -> str:
    m, configs = report["machine"], report["configs"]
    pkgs = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines = [START, "## Keras models: training step, memory and bytes per round", "",
             "`model_export.keras_examples`' models, exported by `edgefl export keras`, trained one step at a time "
             "by the device runtime (the artifact's `train` signature runner on ai-edge-litert, TensorFlow never "
             "imported) and by Keras `train_on_batch` on the same `.keras` file (default Keras settings), each in a "
             "fresh process, same batches in the same order, Adam on both sides. Method as in the training-step "
             "section above: median and p90 after warm-up, peak RSS is `VmHWM`; the device runs LiteRT's default "
             "of one thread, TensorFlow all cores.", "",
             "Reproduce: `python bench/bench_keras.py` (raw numbers: `bench/results/keras.json`).", "",
             f"Measured {report['date']} on {m['cpu']} ({m['cpu_count']} CPUs), {m['platform']}, Python "
             f"{m['python']}; {pkgs}. {report['steps']} timed steps after {report['warmup']} warm-up steps, batch "
             f"{BATCH}. Load average (1 min) {report['load_average_start']:.2f} at the start, "
             f"{report['load_average_end']:.2f} at the end.", "",
             "| config | parameters trained (frozen values) | device median / p90 (ms) | Keras median / p90 (ms) "
             f"| speed-up (device on {m['cpu_count']} threads) | target | peak RSS device / Keras (MB) "
             "| RSS ratio (target ≤ 0.2) |", "| --- | ---: | ---: | ---: | --- | --- | ---: | --- |"]
    for key, c in configs.items():
        d, k, t = c["device"], c["keras"], c["targets"]
        lines.append(f"| {key} | {c['travelling_parameters']:,} ({c['frozen_values']:,}) | {d['median_ms']:.3f} / "
                     f"{d['p90_ms']:.3f} | {k['median_ms']:.3f} / {k['p90_ms']:.3f} | {c['speedup']:.1f}x "
                     f"({c['speedup_all_cores']:.1f}x) | ≥ {t['speedup_min']:g}x {ok(t['speedup_holds'])} | "
                     f"{d['peak_rss_mb']:.0f} / {k['peak_rss_mb']:.0f} | {c['rss_ratio']:.2f} "
                     f"{ok(t['rss_ratio_holds'])} |")
    return "\n".join([*lines, "", *render_bytes(configs), "", *render_notes(configs), END])


def render_bytes(configs: dict[str, Any]) -> list[str]:
    lines = ["### Bytes per round", "",
             "Payload sizes as the runtime encodes them (safetensors with its header): a device's update, its "
             "download of the global model, and the artifact it fetches once.", "",
             "| config | update, float32 | update, float16 | global model | round (float32 up + down) | "
             "artifact, once |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for key, c in configs.items():
        b = c["device"]["bytes"]
        lines.append(f"| {key} | {b['update_float32']:,} | {b['update_float16']:,} | {b['global_model']:,} | "
                     f"{b['update_float32'] + b['global_model']:,} | {b['artifact_once']:,} |")
    if "mobilenet-full" in configs and "mobilenet-frozen" in configs:
        full, frozen = (configs[k]["device"]["bytes"] for k in ("mobilenet-full", "mobilenet-frozen"))
        per_round = [b["update_float32"] + b["global_model"] for b in (full, frozen)]
        lines += ["", f"Per round, the frozen base moves {per_round[0] / per_round[1]:.1f}x fewer bytes than the full "
                      f"model ({per_round[1]:,} against {per_round[0]:,} with float32 updates). Its artifact, fetched "
                      f"once, is {full['artifact_once'] / frozen['artifact_once']:.1f}x smaller too: the base is in it "
                      "as constants, without the gradient ops and optimizer slots the full model's training needs."]
    return lines


def render_notes(configs: dict[str, Any]) -> list[str]:
    notes = ["### What the numbers compare", "",
             "- Mean loss over the steps (device / Keras), a check that both sides trained the same model: "
             + "; ".join(f"{key} {c['device']['mean_loss']:.4f} / {c['keras']['mean_loss']:.4f}"
                         for key, c in configs.items()) + ". They differ where the two sides do different things: "
             "Dropout draws its own random masks on each side, and in `mobilenet-full` Keras normalizes each "
             "batch with its own statistics and updates the moving ones (its default in training), while the "
             "artifact always normalizes with the frozen moving statistics (docs/ARTIFACT.md, section 11); with a "
             "frozen base Keras also uses the moving statistics. In `text`, Keras's Adam treats the Embedding's "
             "sparse gradient (IndexedSlices) its own way, and the two part from the second step; with SGD the "
             "text model's losses agree to five decimals.",
             "- TensorFlow imported by a device process: "
             + ("yes" if any(c["device"]["tensorflow_imported"] for c in configs.values()) else "no") + "."]
    return notes


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=200, help="timed steps per worker (%(default)s)")
    p.add_argument("--warmup", type=int, default=20, help="untimed steps first (%(default)s)")
    p.add_argument("--configs", nargs="*", default=[], help="only these configs (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "keras.json")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--worker", choices=["device", "keras"], help=argparse.SUPPRESS)
    p.add_argument("--artifact", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--trainable-from", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> int:
    args = parse_args()
    if args.worker is not None:
        result = (device_worker(args.artifact, args.data, args.warmup, args.threads) if args.worker == "device"
                  else keras_worker(args.model, args.trainable_from, args.data, args.warmup))
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
