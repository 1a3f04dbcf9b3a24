"""The update pipeline's command-line options, shared by ``edgefl coordinator`` and ``edgefl fleet``.

One place says what each option means and its default; both commands take
the same names as flags and as TOML keys.
"""

from __future__ import annotations

import argparse
import math

from coordinator.codec_choice import AUTO
from coordinator.downlink import downlink_codec
from coordinator.rounds import DEFAULT_MAX_EXAMPLES
from coordinator.strategies import STRATEGIES
from edge_runtime.argtypes import positive_float, positive_int
from edge_runtime.codecs import CODEC_NAMES, DEFAULT_CODEC, codec_name
from edge_runtime.protocol import DOWNLINK_CODECS, NO_DELTAS


def downlink_name(text: str) -> str:
    """``text`` if it names a downlink codec or ``none``; else argparse shows why not."""
    try:
        downlink_codec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def codec_or_auto(text: str) -> str:
    """``auto``, or ``text`` if it names a codec; else argparse shows why not."""
    try:
        return AUTO if text == AUTO else codec_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, or auto") from None


def clip_or_adaptive(text: str) -> float | str:
    """``adaptive``, or an L2 bound > 0; else argparse shows why not."""
    if text == "adaptive":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected an L2 bound > 0 or adaptive, found {text!r}") from None
    return value


def add_pipeline_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "update pipeline", "how updates travel, how much one may weigh, and how they are aggregated; each strategy "
                           "takes only its own options (docs/STRATEGIES.md)")
    group.add_argument("--strategy", choices=sorted(STRATEGIES), help="aggregation strategy (fedavg)")
    group.add_argument("--codec", type=codec_or_auto, metavar="CODEC",
                       help=f"how devices encode updates: {', '.join(CODEC_NAMES)}, or auto: each device's by its "
                            "link (wired, wifi, cellular, constrained), from a table a TOML [codec-table] may "
                            f"override (docs/COMPRESSION.md; {DEFAULT_CODEC})")
    group.add_argument("--downlink-codec", type=downlink_name, metavar="CODEC",
                       help=f"also publish each new global model as a delta from the previous one in this codec "
                            f"({', '.join(DOWNLINK_CODECS)}), which devices one version behind fetch instead of the "
                            f"full model; its rounding enters the model (docs/PROTOCOL.md 5.12; {NO_DELTAS})")
    group.add_argument("--max-examples", type=positive_int,
                       help="a device trains on at most this many examples per epoch and reports at most this "
                            f"many; a larger claim is refused ({DEFAULT_MAX_EXAMPLES})")
    group.add_argument("--weighting", choices=["examples", "uniform"],
                       help="weight of an update in a mean: its example count, or 1 (examples; the robust rules and "
                            "--dp-noise-multiplier always weigh 1)")
    group.add_argument("--prox-mu", type=float,
                       help="FedProx: devices add this times (w - global) to each travelling weight's gradient, "
                            "with any strategy; needs an artifact exported with the proximal term (0: none)")
    group.add_argument("--secure-aggregation", action="store_true",
                       help="SecAgg+: devices mask their updates so that the coordinator learns only their sum; "
                            "only devices that support it are selected (docs/SECURITY.md)")
    group.add_argument("--secure-dropout", type=float, metavar="FRACTION",
                       help="with --secure-aggregation: the fraction of devices expected to vanish after sharing "
                            "their keys; each device's number of neighbours is chosen so that a strict majority of "
                            "them survives it (0.1: 16 neighbours at 100 devices; 0.3: 84)")
    group.add_argument("--reset-strategy", action="store_true",
                       help="with --resume: start the strategy afresh from the checkpoint's weights (needed when "
                            "the checkpoint was made with another strategy)")
    group.add_argument("--server-lr", type=positive_float,
                       help="server learning rate (fedavg, fedavgm, robust rules: 1.0; fedadam, fedyogi: 0.01; "
                            "fedadagrad: 0.1)")
    group.add_argument("--server-momentum", type=float, help="fedavgm: server momentum in [0, 1) (0.9)")
    group.add_argument("--beta1", type=float, help="fedadam, fedyogi, fedadagrad: first-moment decay in [0, 1) "
                                                   "(0.9; fedadagrad 0)")
    group.add_argument("--beta2", type=float, help="fedadam, fedyogi: second-moment decay in [0, 1) (0.99)")
    group.add_argument("--tau", type=positive_float, help="fedadam, fedyogi, fedadagrad: adaptivity (1e-3)")
    group.add_argument("--trim", type=float, help="trimmed-mean: fraction dropped from each side, in [0, 0.5) "
                                                  "(0.1)")
    group.add_argument("--attackers", type=int, help="krum, multi-krum: attackers assumed per round, f (1)")
    group.add_argument("--krum-select", type=positive_int, help="multi-krum: updates averaged, m (default: "
                                                                "n - f)")
    add_privacy_arguments(parser)


def add_privacy_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "differential privacy", "central DP-FedAvg around any streaming strategy: Gaussian noise on the sum of "
                                "clipped updates, uniform weights, the goal as fixed denominator, and an accountant "
                                "(docs/PRIVACY.md)")
    group.add_argument("--dp-noise-multiplier", type=float, metavar="Z",
                       help="noise standard deviation on the sum, in units of the clip bound (0: no DP)")
    group.add_argument("--dp-clip", type=clip_or_adaptive, metavar="C",
                       help="with DP: the L2 bound devices clip to, or adaptive (from 0.1 towards "
                            "--dp-target-quantile of the update norms); replaces --clip-norm (default: --clip-norm)")
    group.add_argument("--dp-target-quantile", type=float, help="adaptive clipping: the fraction of updates left "
                                                               "unclipped it aims at (0.5)")
    group.add_argument("--dp-clip-lr", type=positive_float, help="adaptive clipping: geometric learning rate of the "
                                                                 "bound (0.2)")
    group.add_argument("--dp-clipped-count-stddev", type=positive_float,
                       help="adaptive clipping: noise on the count of unclipped updates (0.05 x the goal, at "
                            "least the noise multiplier)")
    group.add_argument("--target-epsilon", type=positive_float,
                       help="stop before the round that would take epsilon over this (default: no budget)")
    group.add_argument("--target-delta", type=float,
                       help="delta of the epsilon reported and budgeted (1 / devices^1.1, devices known at the "
                            "first round)")
    group.add_argument("--dp-test-seed", type=int, help=argparse.SUPPRESS)  # tests only: reproducible noise
