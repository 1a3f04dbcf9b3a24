"""``edgefl fleet``'s options: one frozen value, from flags and an optional TOML file (``fleet.toml``).

Keys are the flags' names (``round-timeout = 60``, ``hidden = [64, 32]``,
``speedup = 60`` or ``"max"``); a flag wins over the file. A bad value is
refused naming its key, before anything starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coordinator.config import PIPELINE_OPTIONS, CoordinatorConfig
from coordinator.errors import ConfigError
from coordinator.options import build_options, key_of, want
from device_profiles.attacks import ATTACK_FORMAT, AttackSpec
from device_profiles.clock import Speedup
from device_profiles.partition import PartitionSpec, parse_partition
from edge_runtime.data import DEFAULT_LABEL_COLUMN

EMBEDDED = "embedded"
# paho's network loop uses select(), which cannot watch file descriptors above 1024, and each connection holds
# three: a process keeps well below that many devices, and more processes are started when needed.
MAX_DEVICES_PER_PROCESS = 250
DEFAULT_PARTITION = "dirichlet:0.5"
DEFAULT_TEST_FRACTION = 0.2
DEFAULT_FILTERS = (16, 32)
DEFAULT_BATCH_SIZE = 16
DEFAULT_LR = 0.05
NORMALIZE = ("none", "standard")
# Under --speedup max a simulated day lasts day-seconds of real time. A round's real time grows with the fleet
# (1.2 to 5 s at 300 devices on a busy 2-core host), so the day does too: at 48 s (the old default), a
# 300-device fleet's rounds took 2.5 simulated hours each, and over a quarter of the devices they selected were
# interrupted as the availability slots turned.
MIN_DAY_SECONDS = 48.0
DAY_SECONDS_PER_DEVICE = 0.96
# Options that shape the exported model: an artifact given with --artifact has its own.
MODEL_OPTIONS = ("model", "hidden", "filters", "batch_size", "momentum", "normalize")


@dataclass(frozen=True)
class FleetConfig:
    # the fleet
    devices: int = 50
    dataset: str = "digits"
    partition: str | None = None  # None: DEFAULT_PARTITION; refused for a folder of per-device files
    profiles: str = "mixed"
    profile_file: Path | None = None
    policy: Path | None = None
    min_examples: int = 1
    test_fraction: float | None = None  # None: DEFAULT_TEST_FRACTION, unless test_data is given
    test_data: Path | None = None  # a held-out set of its own: nothing is held out of the devices' data
    label_column: str = DEFAULT_LABEL_COLUMN
    attack: str | None = None  # KIND:FRACTION of hostile devices (device_profiles.attacks); None: none
    local_noise_multiplier: float | None = None  # local DP on every device (edge_runtime.local_dp); None: none
    # the model: an exported artifact, or one exported from the options below (None: their defaults)
    artifact: Path | None = None
    model: str | None = None  # None: cnn for images (height, width, channels), mlp for anything else
    hidden: tuple[int, ...] | None = None
    filters: tuple[int, ...] | None = None
    batch_size: int | None = None
    lr: float | None = None  # None: DEFAULT_LR, or the artifact's own with --artifact
    momentum: float | None = None
    normalize: str | None = None  # none or standard (None: standard)
    # rounds
    rounds: int = 40
    fraction: float = 0.2
    min_clients: int = 3
    min_reports: int = 2
    over_select: float = 1.3
    round_timeout: float | None = None  # seconds of the coordinator's clock; None: deadline_s's default
    round_interval: float = 1800.0
    local_epochs: int = 2
    clip_norm: float = 10.0
    eval_every: int = 0
    # the update pipeline (coordinator.config.PIPELINE_OPTIONS): None is the coordinator's default
    codec: str | None = None
    codec_table: tuple[tuple[str, str], ...] | None = None  # [codec-table]: link class = codec, for codec = "auto"
    downlink_codec: str | None = None
    max_examples: int | None = None
    weighting: str | None = None
    prox_mu: float | None = None
    strategy: str | None = None
    reset_strategy: bool = False
    server_lr: float | None = None
    server_momentum: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    tau: float | None = None
    trim: float | None = None
    attackers: int | None = None
    krum_select: int | None = None
    dp_noise_multiplier: float | None = None  # central DP (docs/PRIVACY.md); None or 0: off
    dp_clip: float | str | None = None
    dp_target_quantile: float | None = None
    dp_clip_lr: float | None = None
    dp_clipped_count_stddev: float | None = None
    target_epsilon: float | None = None
    target_delta: float | None = None
    dp_test_seed: int | None = None  # tests only
    secure_aggregation: bool = False
    secure_dropout: float | None = None
    # running it
    broker: str = EMBEDDED
    federation: str = "fleet"
    speedup: str | float = "max"
    day_seconds: float | None = None  # None: DAY_SECONDS_PER_DEVICE x devices, at least MIN_DAY_SECONDS
    start_hour: float = 0.0
    processes: int = 1
    shard: str = "1/1"
    seed: int = 0
    out: Path = Path("runs/fleet")
    backend: str | None = None

    def __post_init__(self) -> None:
        want(self.devices >= 1, "devices", "an integer >= 1", self.devices)
        want(self.min_examples >= 1, "min-examples", "an integer >= 1", self.min_examples)
        self._check_data_options()
        self._check_model_options()
        want(self.day_seconds is None or self.day_seconds > 0, "day-seconds", "seconds > 0", self.day_seconds)
        want(0 <= self.start_hour < 24, "start-hour", "an hour in [0, 24)", self.start_hour)
        want(self.processes >= 1, "processes", "an integer >= 1", self.processes)
        want(self.backend in (None, "ai_edge_litert", "tflite_runtime", "tensorflow"), "backend",
             "ai_edge_litert, tflite_runtime or tensorflow", self.backend)
        want(self.broker == EMBEDDED or self.broker.startswith(("mqtt://", "mqtts://")), "broker",
             "embedded, or mqtt://HOST[:PORT] / mqtts://HOST[:PORT]", self.broker)
        self.partition_spec  # noqa: B018 -- parse now so a bad spec is refused before anything starts
        self.attack_spec  # noqa: B018 -- likewise
        z = self.local_noise_multiplier
        want(z is None or (isinstance(z, (int, float)) and not isinstance(z, bool) and 0 < z < float("inf")),
             "local-noise-multiplier", "a finite number > 0", z)
        want(not (z and self.secure_aggregation), "local-noise-multiplier", "no local noise with "
             "--secure-aggregation: the secure quantizer clamps every value to the bound, so local noise would "
             "be cut off and the sum refused; use --dp-noise-multiplier (noise on the sum) instead", z)
        count = self.shard_index[1]
        want(count == 1 or self.broker != EMBEDDED, "shard",
             "a shared broker (--broker mqtt://...) when the fleet is split over several machines", self.shard)
        # The round and training options are the coordinator's: its own checks refuse a bad one, by the same name.
        self.coordinator_config(Path("artifact"), Path("state"), None, "mqtt://127.0.0.1", "auto", 1.0)

    def _check_data_options(self) -> None:
        want(self.test_fraction is None or 0 < self.test_fraction < 1, "test-fraction", "a fraction in (0, 1)",
             self.test_fraction)
        want(self.test_data is None or self.test_fraction is None, "test-fraction",
             "no value when test-data is given (the test set is that file; nothing is held out of the devices)",
             self.test_fraction)

    def _check_model_options(self) -> None:
        want(self.model in (None, "mlp", "cnn"), "model", "mlp or cnn", self.model)
        want(self.hidden is None or all(h >= 1 for h in self.hidden), "hidden", "sizes >= 1", self.hidden)
        want(self.filters is None or (bool(self.filters) and all(f >= 1 for f in self.filters)), "filters",
             "sizes >= 1", self.filters)
        want(self.batch_size is None or self.batch_size >= 1, "batch-size", "an integer >= 1", self.batch_size)
        want(self.momentum is None or 0 <= self.momentum < 1, "momentum", "a number in [0, 1)", self.momentum)
        want(self.normalize in (None, *NORMALIZE), "normalize", " or ".join(NORMALIZE), self.normalize)
        if self.artifact is not None:
            for name in MODEL_OPTIONS:
                want(getattr(self, name) is None, key_of(name), "no value when artifact is given (the artifact "
                     "fixes the model; export another one to change it)", getattr(self, name))

    def coordinator_config(self, artifact: Path, state_dir: Path, test_data: Path | None, broker: str,
                           mqtt_version: str, clock_rate: float) -> CoordinatorConfig:
        """The coordinator's options for this fleet; ``clock_rate`` converts the simulated round interval to
        the coordinator's clock, which is the wall clock under ``--speedup max``."""
        simulated = not self.speedup_value.is_max
        return CoordinatorConfig(
            artifact=artifact, state_dir=state_dir, broker=broker, federation=self.federation,
            mqtt_version=mqtt_version, rounds=self.rounds, fraction=self.fraction, min_clients=self.min_clients,
            over_select=self.over_select, min_reports=self.min_reports, round_timeout=self.deadline_s,
            round_interval=self.round_interval if simulated else self.round_interval / clock_rate,
            local_epochs=self.local_epochs, lr=self.lr, clip_norm=self.clip_norm, eval_every=self.eval_every,
            test_data=test_data, seed=self.seed, expect_devices=self.devices, **self.pipeline_options)

    @property
    def pipeline_options(self) -> dict[str, Any]:
        """The update-pipeline options given (the rest take the coordinator's defaults)."""
        return {name: getattr(self, name) for name in PIPELINE_OPTIONS if getattr(self, name) is not None}

    @property
    def device_files(self) -> bool:
        """Whether ``dataset`` is a folder of per-device files (each one device's data, used as it is)."""
        return Path(self.dataset).is_dir()

    @property
    def partition_spec(self) -> PartitionSpec:
        """The partition of a dataset to be split (a folder of per-device files has none)."""
        try:
            return parse_partition(self.partition or DEFAULT_PARTITION)
        except ValueError as exc:
            raise ConfigError("configuration", "partition", f"a valid spec ({exc})", self.partition) from None

    @property
    def attack_spec(self) -> AttackSpec | None:
        if self.attack is None:
            return None
        try:
            return AttackSpec.parse(self.attack)
        except ValueError:
            raise ConfigError("configuration", "attack", ATTACK_FORMAT, self.attack) from None

    @property
    def speedup_value(self) -> Speedup:
        try:
            return Speedup.parse(self.speedup)
        except ValueError:
            raise ConfigError("configuration", "speedup", "a factor > 0 (60: a simulated minute per real second) "
                                                           "or max", self.speedup) from None

    @property
    def shard_index(self) -> tuple[int, int]:
        """``(i, n)`` of ``--shard i/n``: this machine runs the i-th of n equal slices of the devices (1-based)."""
        head, sep, tail = self.shard.partition("/")
        try:
            index, count = int(head), int(tail)
        except ValueError:
            index = count = 0
        if not sep or not 1 <= index <= count:
            raise ConfigError("configuration", "shard", "i/n with 1 <= i <= n, e.g. 1/1 or 2/3", self.shard)
        return index, count

    @property
    def runs_coordinator(self) -> bool:
        """The first shard runs the coordinator (and the embedded broker, on a single machine)."""
        return self.shard_index[0] == 1

    @property
    def deadline_s(self) -> float:
        """The round deadline: ``round_timeout``, else 10 simulated minutes, or 5 real seconds under ``max``
        (where nothing simulated waits and a slow host is the only reason to be late)."""
        if self.round_timeout is not None:
            return self.round_timeout
        return 5.0 if self.speedup_value.is_max else 600.0

    @property
    def day_length_s(self) -> float:
        """Real seconds per simulated day under ``--speedup max``: ``day_seconds``, else one that grows with the
        fleet."""
        if self.day_seconds is not None:
            return self.day_seconds
        return max(MIN_DAY_SECONDS, DAY_SECONDS_PER_DEVICE * self.devices)

    def worker_processes(self, devices: int) -> int:
        """``processes``, or more if that would put over ``MAX_DEVICES_PER_PROCESS`` devices in one."""
        return max(self.processes, -(-devices // MAX_DEVICES_PER_PROCESS))

    @property
    def held_out_fraction(self) -> float:
        """The share of the data held out for testing: none with ``test_data``."""
        if self.test_data is not None:
            return 0.0
        return DEFAULT_TEST_FRACTION if self.test_fraction is None else self.test_fraction

    def hidden_sizes(self, family: str) -> tuple[int, ...]:
        return self.hidden if self.hidden is not None else ((64,) if family == "mlp" else ())


def build_fleet_config(file: Path | None, overrides: Mapping[str, Any]) -> FleetConfig:
    return build_options(FleetConfig, file, overrides)
