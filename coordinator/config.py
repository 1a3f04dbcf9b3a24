"""The coordinator's configuration: one frozen value, from a TOML file and command-line flags.

Every flag has a TOML key of the same name (``round-timeout = 30``); a flag
given on the command line wins over the file. An unknown key or a bad value
is refused naming it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from coordinator.codec_choice import AUTO, CodecTable, round_codecs
from coordinator.downlink import downlink_codec
from coordinator.errors import ConfigError
from coordinator.options import build_options, key_of, want
from coordinator.rounds import DEFAULT_MAX_EXAMPLES
from coordinator.strategies import HYPERPARAMETERS, Strategy, build_strategy
from edge_runtime.codecs import CODEC_NAMES, DEFAULT_CODEC, codec_problem
from edge_runtime.errors import ProtocolError
from edge_runtime.manifest import Manifest
from edge_runtime.protocol import DEFAULT_FEDERATION, NO_DELTAS, check_name

if TYPE_CHECKING:
    from coordinator.strategies.dp_fedavg import DpOptions

# The update-pipeline options, the same in every command that runs a coordinator (edgefl fleet too).
PIPELINE_OPTIONS = ("codec", "codec_table", "downlink_codec", "max_examples", "weighting", "prox_mu", "strategy",
                    "reset_strategy", *HYPERPARAMETERS, "dp_noise_multiplier", "dp_clip", "dp_target_quantile",
                    "dp_clip_lr", "dp_clipped_count_stddev", "target_epsilon", "target_delta", "dp_test_seed",
                    "secure_aggregation", "secure_dropout")
# Central DP's options other than the noise multiplier: refused while it is 0 (no DP).
DP_OPTIONS = ("dp_clip", "dp_target_quantile", "dp_clip_lr", "dp_clipped_count_stddev", "target_epsilon",
              "target_delta", "dp_test_seed")

@dataclass(frozen=True)
class CoordinatorConfig:
    artifact: Path
    state_dir: Path
    broker: str = "mqtt://127.0.0.1:1883"
    federation: str = DEFAULT_FEDERATION
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    mqtt_version: str = "auto"
    connect_timeout: float | None = None  # edgefl coordinator: give up a first connection after this; None: retry
    rounds: int = 10
    fraction: float = 0.1
    min_clients: int = 2
    over_select: float = 1.3
    min_reports: int = 2
    round_timeout: float = 60.0
    round_interval: float = 0.0
    expect_devices: int = 0
    local_epochs: int = 1
    lr: float | None = None
    clip_norm: float = 5.0
    # the update pipeline: how updates travel, how much one may weigh, how they are aggregated
    codec: str = DEFAULT_CODEC  # a codec name, or auto: each device's by its link (coordinator.codec_choice)
    codec_table: tuple[tuple[str, str], ...] = ()  # [codec-table] in TOML: link class = codec, over the defaults
    downlink_codec: str = NO_DELTAS  # the global model also travels as a delta in this codec (coordinator.downlink)
    max_examples: int = DEFAULT_MAX_EXAMPLES
    weighting: str = "examples"
    prox_mu: float = 0.0  # FedProx: devices add prox_mu * (w - global) to each travelling weight's gradient
    strategy: str = "fedavg"
    reset_strategy: bool = False
    server_lr: float | None = None
    server_momentum: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    tau: float | None = None
    trim: float | None = None
    attackers: int | None = None
    krum_select: int | None = None
    # central differential privacy (coordinator.strategies.dp_fedavg, docs/PRIVACY.md); 0: off
    dp_noise_multiplier: float = 0.0
    dp_clip: float | str | None = None  # a fixed bound or "adaptive"; None: clip-norm
    dp_target_quantile: float | None = None
    dp_clip_lr: float | None = None
    dp_clipped_count_stddev: float | None = None
    target_epsilon: float | None = None
    target_delta: float | None = None
    dp_test_seed: int | None = None  # tests only: reproducible noise; never in a real deployment
    secure_aggregation: bool = False  # SecAgg+: the coordinator learns only the sum (coordinator.secure_round)
    secure_dropout: float | None = None  # the drop-out after sharing the graph's degree is planned for; None: 0.1
    eval_every: int = 5
    test_data: Path | None = None
    seed: int = 0
    max_payload: int | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        want(self.rounds >= 1, "rounds", "an integer >= 1", self.rounds)
        want(0 < self.fraction <= 1, "fraction", "a number in (0, 1]", self.fraction)
        want(self.min_clients >= 1, "min-clients", "an integer >= 1", self.min_clients)
        want(self.over_select >= 1, "over-select", "a factor >= 1 (1.3 asks 30% more devices than the goal)",
              self.over_select)
        want(1 <= self.min_reports <= self.min_clients, "min-reports",
              f"an integer from 1 to min-clients ({self.min_clients})", self.min_reports)
        want(self.round_timeout > 0, "round-timeout", "seconds > 0", self.round_timeout)
        want(0 <= self.round_interval < math.inf, "round-interval", "seconds >= 0 (0: back to back)",
             self.round_interval)
        want(self.expect_devices >= 0, "expect-devices", "an integer >= 0 (0: do not wait)", self.expect_devices)
        want(self.local_epochs >= 1, "local-epochs", "an integer >= 1", self.local_epochs)
        want(self.lr is None or self.lr > 0, "lr", "a learning rate > 0", self.lr)
        want(self.clip_norm > 0, "clip-norm", "an L2 bound > 0", self.clip_norm)
        want(self.codec == AUTO or codec_problem(self.codec) is None, "codec",
             f"auto or one of {', '.join(CODEC_NAMES)} (docs/COMPRESSION.md)", self.codec)
        self.link_codecs  # noqa: B018 -- refuses an unknown link class or codec name in codec-table, naming it
        downlink = _downlink_problem(self.downlink_codec)
        want(downlink is None, "downlink-codec", f"{NO_DELTAS} or an unbiased codec ({downlink})", self.downlink_codec)
        want(self.max_examples >= 1, "max-examples", "an integer >= 1", self.max_examples)
        want(self.weighting in ("examples", "uniform"), "weighting", "examples or uniform", self.weighting)
        want(math.isfinite(self.prox_mu) and self.prox_mu >= 0, "prox-mu", "a finite number >= 0 (0: no proximal "
             "term)", self.prox_mu)
        want(math.isfinite(self.dp_noise_multiplier) and self.dp_noise_multiplier >= 0, "dp-noise-multiplier",
             "a finite number >= 0 (0: no differential privacy)", self.dp_noise_multiplier)
        for name in DP_OPTIONS if self.dp_noise_multiplier == 0 else ():
            want(getattr(self, name) is None, key_of(name), "no value without --dp-noise-multiplier > 0",
                 getattr(self, name))
        strategy = self.build_strategy()  # refuses an unknown strategy, an option it does not take, or a bad value
        if self.secure_aggregation:
            self._check_secure(strategy)
        want(self.secure_dropout is None or self.secure_aggregation, "secure-dropout",
             "no value without --secure-aggregation", self.secure_dropout)
        want(self.secure_dropout is None or 0 <= self.secure_dropout < 0.5, "secure-dropout",
             "a fraction in [0, 0.5): the threshold is a strict majority of a neighbourhood", self.secure_dropout)
        want(self.eval_every >= 0, "eval-every", "an integer >= 0 (0: never)", self.eval_every)
        want(self.max_payload is None or self.max_payload > 0, "max-payload", "bytes > 0", self.max_payload)
        want(self.mqtt_version in ("auto", "5", "3.1.1"), "mqtt-version", "auto, 5 or 3.1.1", self.mqtt_version)
        want(self.connect_timeout is None or self.connect_timeout > 0, "connect-timeout",
             "seconds > 0 (or no value: retry until stopped)", self.connect_timeout)
        try:
            check_name(self.federation, "federation")
        except ProtocolError as exc:
            raise ConfigError("configuration", "federation", "1-64 characters from A-Z a-z 0-9 _ . -",
                              self.federation) from exc

    def _check_secure(self, strategy: Strategy[Any]) -> None:
        """What secure aggregation cannot go with (docs/SECURITY.md says why)."""
        key = "secure-aggregation"
        want(self.codec == DEFAULT_CODEC, key, f"the default codec ({DEFAULT_CODEC}; found --codec {self.codec}): a "
             "secure round sends its own encoding, 16-bit levels in 32-bit words that sum; a top-k codec would "
             "reveal which coordinates a device touched, and int8, int4 and sign scale per block and device, which "
             "does not sum", True)
        want(strategy.streaming, key, f"a streaming strategy (found --strategy {self.strategy}): a robust rule "
             "needs every update, and the coordinator sees only their sum", True)
        want(not (self.dp_noise_multiplier and self.dp_clip == "adaptive"), key, "a fixed --dp-clip: adaptive "
             "clipping needs each device's clipped bit, which would have to be summed securely too", True)
        want(self.min_clients >= 3, key, f"--min-clients >= 3 (found {self.min_clients}): with two devices each "
             "would learn the other's update from the sum", True)

    @property
    def planned_dropout(self) -> float:
        """The drop-out after sharing a secure round's degree is planned for (``--secure-dropout``)."""
        from edge_runtime.secagg.graph import DEFAULT_DROPOUT  # secure aggregation's modules need cryptography

        return _or(self.secure_dropout, DEFAULT_DROPOUT)

    @functools.cached_property
    def link_codecs(self) -> CodecTable:
        """The codec for each link class under ``--codec auto``: the defaults with ``codec-table``'s entries."""
        return CodecTable.with_overrides(self.codec_table)

    @property
    def round_codecs(self) -> tuple[str, ...]:
        """Every codec a task may name: the payload limit allows for the largest."""
        return round_codecs(self.codec, self.link_codecs)

    def build_strategy(self) -> Strategy[Any]:
        """The configured strategy; with DP on, wrapped in DP-FedAvg (which refuses a robust rule)."""
        inner = build_strategy(self.strategy, {name: getattr(self, name) for name in HYPERPARAMETERS})
        if self.dp_noise_multiplier == 0:
            return inner
        try:  # imported here: its accountant needs dp-accounting, which a run without DP does not
            from coordinator.strategies.dp_fedavg import DpFedAvg
        except ImportError as exc:
            raise ConfigError("configuration", "dp-noise-multiplier", "0, or the dp-accounting package installed "
                              f"(pip install dp-accounting): {exc}", self.dp_noise_multiplier) from exc
        return cast(Strategy[Any], DpFedAvg(inner, self.dp_options()))  # its name is its inner strategy's

    def dp_options(self) -> DpOptions:
        """Central DP's options (a ``DpOptions``), defaults filled in; only with DP on."""
        from coordinator.strategies.dp_fedavg import ADAPTIVE, CLIP_LR, TARGET_QUANTILE, DpOptions

        clip = self.dp_clip if self.dp_clip is not None else self.clip_norm
        want(clip == ADAPTIVE or not isinstance(clip, str), "dp-clip", f"an L2 bound > 0 or {ADAPTIVE}", clip)
        return DpOptions(self.dp_noise_multiplier, None if clip == ADAPTIVE else float(clip),
                         _or(self.dp_target_quantile, TARGET_QUANTILE), _or(self.dp_clip_lr, CLIP_LR),
                         self.dp_clipped_count_stddev, self.target_epsilon, self.target_delta, self.dp_test_seed)


def check_proximal(prox_mu: float, manifest: Manifest) -> None:
    """Refuse ``prox-mu`` > 0 for an artifact whose train signature has no proximal term: every device would
    report its task failed."""
    want(prox_mu == 0 or manifest.proximal, "prox-mu",
         f"0 for artifact {manifest.model_name!r}, exported without FedProx's proximal term (its train signature "
         "takes no mu; artifact format 1 never does); re-export the model with this edgefl to use --prox-mu",
         prox_mu)


def build_config(file: Path | None, overrides: Mapping[str, Any]) -> CoordinatorConfig:
    """Values from ``file`` (TOML), then ``overrides`` (flags given on the command line, None = not given)."""
    return build_options(CoordinatorConfig, file, overrides, required=("artifact", "state_dir"))


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _downlink_problem(name: str) -> str | None:
    try:
        downlink_codec(name)
    except ValueError as exc:
        return str(exc)
    return None

