"""Two Keras models to bring to edgefl, with their data: ``python -m model_export.keras_examples OUT``.

``digits-transfer`` (``OUT/digits``): a MobileNet-style network for scikit-learn's bundled 8x8 digits. No
pre-trained weights are downloaded; the transfer is made here, and is honest about what it is:

1. the whole network (stem, three inverted-residual blocks, a 1x1 convolution, a 5-way classifier) is
   trained centrally with Keras on the digits 0-4, and its accuracy on held-out 0-4 digits is reported;
2. its classifier is replaced by a fresh, untrained ``Dense(5)``, and that model is ``base.keras``;
3. ``train.npz`` and ``test.npz`` hold the digits 5-9 (labels 0-4), which the base never saw. Exported with
   ``--trainable-from head_conv``, the devices fine-tune the head (the last 1x1 convolution, its
   BatchNormalization's scale and offset, the classifier: 2,501 parameters) on them. Everything before it
   and every BatchNormalization's moving statistics (11,568 values) are frozen constants of the artifact,
   never sent. The classifier alone would not be enough: the pooled features of a base trained on 0-4
   separate 5-9 to about 0.83 with a linear model (scikit-learn's logistic regression), while training the
   1x1 convolution too reaches about 0.96 centrally (``--central-epochs 20``).

``text-topics`` (``OUT/text``): a bag-of-embeddings classifier (Embedding, GlobalAveragePooling1D,
Dense relu, Dense) saved untrained as ``model.keras``, with a synthetic corpus, since no text corpus can be
downloaded here. Each of ``TOPICS`` topics ranks the vocabulary in its own random order and draws words
from a Zipf law over that ranking, mixed with a shared background Zipf law over another ranking (the
common words every topic uses). A document is 8 to 32 words, padded with id 0 at the end; ids are stored as
float32 because an artifact's ``x`` is float32.

Both ``.keras`` files are compiled with the loss the artifact trains (sparse categorical cross-entropy on
logits). ``--central-epochs`` also trains a copy centrally, to put a federated result next to a central one.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DIGITS_SPLIT = 5  # the base learns digits below this; the devices learn the others
DIGITS_HEAD = "head_conv"  # the first layer of the head: a 1x1 convolution, its BatchNormalization, the classifier
# Adam at 0.01 learned fastest in `edgefl fleet` of the optimizers tried (SGD 0.01-0.2 with momentum 0.9, Adam 0.003).
EXPORT_OPTIONS = ("--optimizer", "adam", "--lr", "0.01", "--batch-size", "16")
BN_MOMENTUM = 0.9  # Keras's 0.99 leaves the moving statistics unsettled after a few epochs of 720 digits
TOPICS, VOCABULARY, LENGTH, MIN_LENGTH = 4, 500, 32, 8
ZIPF_EXPONENT, BACKGROUND_SHARE = 1.1, 0.75
TEXT_DOCUMENTS = (4000, 1000)  # train, test


@dataclass(frozen=True)
class Accuracy:
    what: str
    value: float


@dataclass(frozen=True)
class Example:
    """What ``write_*`` wrote: the model, its data, how to export it, and the accuracies seen on the way."""

    name: str
    model: Path
    train: Path
    test: Path
    trainable_from: str | None
    export_options: tuple[str, ...]  # what to give `edgefl export keras` besides the model and --out
    accuracies: tuple[Accuracy, ...]


# ---------------------------------------------------------------- the models


def _compiled(model: Any, learning_rate: float) -> Any:
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    return model


def _inverted_residual(x: Any, expand: int, out: int, stride: int, name: str) -> Any:
    """1x1 expansion, 3x3 depthwise, 1x1 linear projection, each followed by BatchNormalization; the input is
    added back when the shapes allow it (MobileNetV2's block)."""
    from keras import layers

    y = x
    if expand != x.shape[-1]:
        y = layers.Conv2D(expand, 1, use_bias=False, name=f"{name}_expand")(y)
        y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_expand_bn")(y)
        y = layers.ReLU(6.0, name=f"{name}_expand_relu")(y)
    y = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_dw_bn")(y)
    y = layers.ReLU(6.0, name=f"{name}_dw_relu")(y)
    y = layers.Conv2D(out, 1, use_bias=False, name=f"{name}_project")(y)
    y = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"{name}_project_bn")(y)
    if stride == 1 and x.shape[-1] == out:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def mobilenet_digits(classes: int, seed: int = 0, learning_rate: float = 0.01) -> Any:
    """The MobileNet-style network for ``(8, 8, 1)`` digits of raw values 0..16, compiled; its last layer is
    ``head``."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 1), name="pixels")
    x = layers.Rescaling(1.0 / 16.0, name="scale")(inputs)
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    x = _inverted_residual(x, 32, 16, 1, "block1")
    x = _inverted_residual(x, 64, 32, 2, "block2")
    x = _inverted_residual(x, 64, 32, 1, "block3")
    x = layers.Conv2D(64, 1, use_bias=False, name="head_conv")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="head_bn")(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    outputs = layers.Dense(classes, name="classifier")(x)
    return _compiled(keras.Model(inputs, outputs, name="mobilenet-digits"), learning_rate)


def text_classifier(seed: int = 0, learning_rate: float = 0.01) -> Any:
    """Embedding, average over the words, a hidden Dense, a ``TOPICS``-way head; compiled."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    return _compiled(keras.Sequential([
        keras.Input((LENGTH,), name="words"),
        layers.Embedding(VOCABULARY, 32, name="embedding"),
        layers.GlobalAveragePooling1D(name="average"),
        layers.Dense(32, activation="relu", name="hidden"),
        layers.Dense(TOPICS, name="head"),
    ], name="text-topics"), learning_rate)


# ---------------------------------------------------------------- the data


def digits_halves(seed: int = 0) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The digits as ``(8, 8, 1)`` float32 pixels 0..16: those below ``DIGITS_SPLIT``, and the others relabelled
    from 0, each shuffled."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.images.reshape(-1, 8, 8, 1).astype(np.float32), digits.target.astype(np.int32)
    rng = np.random.default_rng(seed)
    low, high = rng.permutation(np.flatnonzero(y < DIGITS_SPLIT)), rng.permutation(np.flatnonzero(y >= DIGITS_SPLIT))
    return (x[low], y[low]), (x[high], y[high] - DIGITS_SPLIT)


def _zipf(ranking: np.ndarray) -> np.ndarray:
    """A Zipf law over the words, the word ``ranking[r]`` having weight ``1 / (r + 1) ** ZIPF_EXPONENT``."""
    p = np.zeros(VOCABULARY)
    p[ranking] = 1.0 / np.arange(1, len(ranking) + 1) ** ZIPF_EXPONENT
    law: np.ndarray = p / p.sum()
    return law


def topic_corpus(documents: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``documents`` synthetic documents ``(documents, LENGTH)`` float32 word ids, and their topics (balanced).

    The rankings depend on ``seed`` alone, so two calls with one seed draw from the same topics."""
    rng = np.random.default_rng(seed)
    words = np.arange(1, VOCABULARY)  # id 0 is the padding
    background = _zipf(rng.permutation(words))
    laws = [(1 - BACKGROUND_SHARE) * _zipf(rng.permutation(words)) + BACKGROUND_SHARE * background
            for _ in range(TOPICS)]
    y = rng.permutation(np.arange(documents) % TOPICS).astype(np.int32)
    x = np.zeros((documents, LENGTH), np.float32)
    draws = np.random.default_rng((seed, documents))
    for row, topic in enumerate(y):
        size = draws.integers(MIN_LENGTH, LENGTH + 1)
        x[row, :size] = draws.choice(VOCABULARY, size=size, p=laws[topic])
    return x, y


# ---------------------------------------------------------------- writing the examples


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def _save_data(folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> None:
    np.savez(folder / "train.npz", x=train[0], y=train[1])
    np.savez(folder / "test.npz", x=test[0], y=test[1])


def write_digits(out: Path, pretrain_epochs: int = 30, central_epochs: int = 0, seed: int = 0) -> Example:
    """Pre-train on digits 0-4, then write ``base.keras`` (that base under a fresh head) and the 5-9 data."""
    (x_low, y_low), (x_high, y_high) = digits_halves(seed)
    held = len(y_low) // 5
    pretrained = mobilenet_digits(DIGITS_SPLIT, seed)
    pretrained.fit(x_low[held:], y_low[held:], batch_size=32, epochs=pretrain_epochs, verbose=0)
    accuracies = [Accuracy(f"pre-training, digits 0-{DIGITS_SPLIT - 1}, {held} held out",
                           _accuracy(pretrained, x_low[:held], y_low[:held]))]
    model = mobilenet_digits(10 - DIGITS_SPLIT, seed + 1)  # the fresh head's initial weights
    for layer in model.layers:
        if layer.name != "classifier":
            layer.set_weights(pretrained.get_layer(layer.name).get_weights())
    cut = len(y_high) // 4
    train, test = (x_high[cut:], y_high[cut:]), (x_high[:cut], y_high[:cut])
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "base.keras")
    _save_data(out, train, test)
    if central_epochs:
        accuracies.append(Accuracy(f"central fine-tuning from {DIGITS_HEAD} on, {central_epochs} epochs",
                                   _central(out / "base.keras", DIGITS_HEAD, train, test, central_epochs)))
    return Example("digits-transfer", out / "base.keras", out / "train.npz", out / "test.npz", DIGITS_HEAD,
                   ("--trainable-from", DIGITS_HEAD, *EXPORT_OPTIONS), tuple(accuracies))


def write_text(out: Path, central_epochs: int = 0, seed: int = 0) -> Example:
    """Write the untrained text classifier as ``model.keras`` and the synthetic corpus."""
    x, y = topic_corpus(sum(TEXT_DOCUMENTS), seed)
    train, test = (x[:TEXT_DOCUMENTS[0]], y[:TEXT_DOCUMENTS[0]]), (x[TEXT_DOCUMENTS[0]:], y[TEXT_DOCUMENTS[0]:])
    out.mkdir(parents=True, exist_ok=True)
    text_classifier(seed).save(out / "model.keras")
    _save_data(out, train, test)
    accuracies = []
    if central_epochs:
        accuracies.append(Accuracy(f"central training, {central_epochs} epochs",
                                   _central(out / "model.keras", None, train, test, central_epochs)))
    return Example("text-topics", out / "model.keras", out / "train.npz", out / "test.npz", None, EXPORT_OPTIONS,
                   tuple(accuracies))


def _central(path: Path, trainable_from: str | None, train: tuple[np.ndarray, np.ndarray],
             test: tuple[np.ndarray, np.ndarray], epochs: int) -> float:
    """Test accuracy after training a copy of the saved model centrally (layers before ``trainable_from``
    frozen, which in Keras also makes BatchNormalization use its moving statistics)."""
    import keras

    model = keras.saving.load_model(path, compile=False)
    if trainable_from is not None:
        for layer in model.layers[:[layer.name for layer in model.layers].index(trainable_from)]:
            layer.trainable = False
    _compiled(model, 0.01).fit(*train, batch_size=32, epochs=epochs, verbose=0)
    return _accuracy(model, *test)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder to write digits/ and text/ into")
    p.add_argument("--pretrain-epochs", type=int, default=30, help="central pre-training of the digits base (30)")
    p.add_argument("--central-epochs", type=int, default=0, help="also train a copy centrally, for comparison (0)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    examples = (write_digits(args.out / "digits", args.pretrain_epochs, args.central_epochs, args.seed),
                write_text(args.out / "text", args.central_epochs, args.seed))
    for example in examples:
        print(f"{example.name}: {example.model}, {example.train}, {example.test}")
        for accuracy in example.accuracies:
            print(f"  {accuracy.what}: test accuracy {accuracy.value:.3f}")
        artifact = example.model.parent / "artifact"
        print(f"  next: edgefl export keras {example.model} {' '.join(example.export_options)} --out {artifact}\n"
              f"        edgefl fleet --artifact {artifact} --dataset {example.train} --test-data {example.test} "
              "--devices 20 --rounds 10")
    return 0


if __name__ == "__main__":
    sys.exit(main())
