"""``edgefl export`` and ``edgefl demo``. TensorFlow is imported only when they run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from edge_runtime.argtypes import int_list, name_list, positive_float, positive_int
from edge_runtime.data import DEFAULT_LABEL_COLUMN, read_arrays
from edge_runtime.manifest import OPTIMIZERS, Normalization, OptimizerConfig
from edge_runtime.native_logs import native_logs_hidden
from model_export.errors import ExportError, SpecError
from model_export.graph_model import LOSSES
from model_export.spec import ModelSpec, standardization


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("export", help="export a model to a builtin-only TFLite training artifact",
                              description="Export a model to an artifact folder (model.tflite with train, evaluate, "
                                          "infer, get_weights and set_weights signatures; manifest.json; "
                                          "weights.safetensors): a built-in mlp or cnn, or your own Keras model. "
                                          "Needs the export extra.")
    kinds = p.add_subparsers(dest="family", required=True, metavar="{mlp,cnn,keras}")
    training = argparse.ArgumentParser(add_help=False)
    training.add_argument("--out", required=True, type=Path, help="artifact folder to write")
    training.add_argument("--batch-size", type=positive_int, default=32,
                          help="static batch size of the train signature (32)")
    training.add_argument("--optimizer", choices=OPTIMIZERS, default="sgd",
                          help="optimizer in the train signature (sgd)")
    training.add_argument("--lr", type=positive_float, help="default learning rate (sgd 0.05, adam 0.001)")
    training.add_argument("--momentum", type=float, default=0.0, help="sgd momentum (0)")
    training.add_argument("--name", default="", help="model name recorded in the manifest")
    for family in ("mlp", "cnn"):
        f = kinds.add_parser(family, parents=[training], help=f"the built-in {family}",
                             description=f"Export the built-in {family} family.")
        f.add_argument("--input-shape", required=True, type=int_list, help="per-example shape, e.g. 30 or 28,28,1")
        f.add_argument("--classes", required=True, type=positive_int, help="number of classes")
        f.add_argument("--hidden", type=int_list,
                       help="dense hidden sizes, e.g. 64,32 (mlp default 64; cnn default none)")
        f.add_argument("--filters", type=int_list, default=(16, 32), help="cnn: 3x3 conv filters per block (16,32)")
        f.add_argument("--normalize-from", type=Path, metavar="DATA",
                       help="compute per-feature mean/std from this .npz/.csv and normalize inside the model")
        f.add_argument("--label-column", default=DEFAULT_LABEL_COLUMN, help="label column for a .csv (label)")
        f.add_argument("--norm-mean", type=float, help="one mean for every feature, instead of --normalize-from")
        f.add_argument("--norm-std", type=positive_float, help="one std for every feature, instead of --normalize-from")
        f.add_argument("--seed", type=int, default=0, help="seed of the initial weights (0)")
        f.set_defaults(handler=run_export)
    k = kinds.add_parser("keras", parents=[training], help="your own Keras model (.keras file)",
                         description="Export a Sequential or functional Keras model saved with model.save(...keras). "
                                     "Every layer must be in the supported set (docs/ARTIFACT.md, section 11); "
                                     "anything else is refused before conversion, every problem listed.")
    k.add_argument("model", type=Path, metavar="MODEL.keras", help="the saved Keras model")
    k.add_argument("--trainable-from", metavar="LAYER",
                   help="freeze every layer LAYER depends on (a frozen base: constants, forward only, never sent)")
    k.add_argument("--personal", type=name_list, default=(), metavar="LAYER,...",
                   help="layers whose weights train on the device and never leave it")
    k.add_argument("--loss", choices=LOSSES, help="loss to train (default: the model's compiled loss)")
    k.add_argument("--from-logits", action="store_true", help="with --loss: the model outputs logits")
    k.add_argument("--no-proximal", dest="proximal", action="store_false",
                   help="leave FedProx's mu input out of the train signature")
    k.set_defaults(handler=run_export_keras)

    d = subparsers.add_parser("demo", help="export the digits cnn and train it locally through TFLite",
                              description="Export a cnn for scikit-learn's bundled 8x8 digits, then train and "
                                          "evaluate it through the TFLite artifact alone.")
    d.add_argument("--out", type=Path, default=Path("runs/demo"), help="folder for the artifact and data")
    d.add_argument("--epochs", type=positive_int, default=15, help="local epochs (%(default)s)")
    d.set_defaults(handler=run_demo)


def spec_from_args(args: argparse.Namespace) -> ModelSpec:
    default_lr = 0.05 if args.optimizer == "sgd" else 0.001
    optimizer = OptimizerConfig(args.optimizer, default_lr if args.lr is None else args.lr, momentum=args.momentum)
    hidden = args.hidden if args.hidden is not None else ((64,) if args.family == "mlp" else ())
    return ModelSpec(family=args.family, input_shape=args.input_shape, num_classes=args.classes, hidden=hidden,
                     filters=args.filters, batch_size=args.batch_size, optimizer=optimizer,
                     normalization=_normalization(args), seed=args.seed, name=args.name)


def run_export(args: argparse.Namespace) -> int:
    export = load_exporter(args.verbose)
    manifest = export(spec_from_args(args), args.out)
    print(f"wrote {args.out}: {manifest.model_name}, {manifest.parameter_count} parameters, "
          f"train batch {manifest.train_batch_size}, optimizer {manifest.optimizer.name}, builtin ops only")
    return 0


def run_export_keras(args: argparse.Namespace) -> int:
    load_exporter(args.verbose)
    from model_export.keras_export import KerasExport, export_keras, load_keras_model

    model = load_keras_model(args.model)
    default_lr = 0.05 if args.optimizer == "sgd" else 0.001
    options = KerasExport(
        batch_size=args.batch_size,
        optimizer=OptimizerConfig(args.optimizer, default_lr if args.lr is None else args.lr, momentum=args.momentum),
        loss=None if args.loss is None else _keras_loss(args.loss, args.from_logits),
        trainable_from=args.trainable_from, personal=tuple(args.personal), proximal=args.proximal, name=args.name)
    manifest = export_keras(model, args.out, options)
    frozen = manifest.exporter.get("frozen_parameters", 0)
    personal = sum(w.size for w in manifest.personal)
    print(f"wrote {args.out}: {manifest.model_name}, {manifest.parameter_count} parameters travel, "
          f"{personal} personal, {frozen} frozen; train batch {manifest.train_batch_size}, "
          f"optimizer {manifest.optimizer.name}, builtin ops only")
    return 0


def _keras_loss(name: str, from_logits: bool) -> Any:
    import keras

    classes = {"sparse_categorical_crossentropy": keras.losses.SparseCategoricalCrossentropy,
               "binary_crossentropy": keras.losses.BinaryCrossentropy}
    return classes[name](from_logits=from_logits)


def run_demo(args: argparse.Namespace) -> int:
    from model_export.demo import run

    return run(args.out, args.epochs, args.verbose)


def normalization_from(path: Path, label_column: str) -> Normalization:
    """Per-feature mean and std of a data file's ``x`` (a zero std becomes 1)."""
    x, _ = read_arrays(path, label_column)
    return standardization(x)


def _normalization(args: argparse.Namespace) -> Normalization | None:
    if args.normalize_from and (args.norm_mean is not None or args.norm_std is not None):
        raise SpecError("normalization", "either --normalize-from or --norm-mean/--norm-std, not both",
                        f"--normalize-from {args.normalize_from}")
    if args.normalize_from:
        return normalization_from(args.normalize_from, args.label_column)
    if args.norm_mean is None and args.norm_std is None:
        return None
    mean = 0.0 if args.norm_mean is None else args.norm_mean
    std = 1.0 if args.norm_std is None else args.norm_std
    return Normalization((mean,), (std,))


def load_exporter(verbosity: int = 0) -> Any:
    """``export_model``, importing TensorFlow now; a clear error names the extra if it is missing.

    TensorFlow's start-up lines (absl's preamble, oneDNN, CUDA, the cuInit error of a machine without GPU) are
    hidden at ``verbosity`` 0; at 1 (``-v``) they show, and at 2 (``-vv``) so does everything TensorFlow's C++
    side logs afterwards (``TF_CPP_MIN_LOG_LEVEL`` otherwise defaults to 2 here: errors only).
    """
    if verbosity < 2:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        with native_logs_hidden(verbosity == 0):
            import tensorflow as tf

            tf.config.list_physical_devices("GPU")  # the probe for a GPU (and its complaint if none) happens now
            from model_export.exporter import export_model
    except ImportError as exc:
        raise ExportError(f"exporting needs TensorFlow: pip install 'edgefl[export]' ({exc})") from exc
    return export_model
