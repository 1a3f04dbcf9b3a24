"""The coordinator's configuration: one frozen value, from a TOML file and command-line flags.

Every flag has a TOML key of the same name (``round-timeout = 30``); a flag
given on the command line wins over the file. An unknown key or a bad value
is refused naming it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from coordinator.errors import ConfigError
from edge_runtime.errors import ProtocolError
from edge_runtime.protocol import DEFAULT_FEDERATION, check_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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
    rounds: int = 10
    fraction: float = 0.1
    min_clients: int = 2
    over_select: float = 1.3
    min_reports: int = 2
    round_timeout: float = 60.0
    local_epochs: int = 1
    lr: float | None = None
    clip_norm: float = 5.0
    server_lr: float = 1.0
    eval_every: int = 5
    test_data: Path | None = None
    seed: int = 0
    max_payload: int | None = None
    resume: bool = False

    def __post_init__(self) -> None:
        _want(self.rounds >= 1, "rounds", "an integer >= 1", self.rounds)
        _want(0 < self.fraction <= 1, "fraction", "a number in (0, 1]", self.fraction)
        _want(self.min_clients >= 1, "min-clients", "an integer >= 1", self.min_clients)
        _want(self.over_select >= 1, "over-select", "a factor >= 1 (1.3 asks 30% more devices than the goal)",
              self.over_select)
        _want(1 <= self.min_reports <= self.min_clients, "min-reports",
              f"an integer from 1 to min-clients ({self.min_clients})", self.min_reports)
        _want(self.round_timeout > 0, "round-timeout", "seconds > 0", self.round_timeout)
        _want(self.local_epochs >= 1, "local-epochs", "an integer >= 1", self.local_epochs)
        _want(self.lr is None or self.lr > 0, "lr", "a learning rate > 0", self.lr)
        _want(self.clip_norm > 0, "clip-norm", "an L2 bound > 0", self.clip_norm)
        _want(self.server_lr > 0, "server-lr", "a number > 0", self.server_lr)
        _want(self.eval_every >= 0, "eval-every", "an integer >= 0 (0: never)", self.eval_every)
        _want(self.max_payload is None or self.max_payload > 0, "max-payload", "bytes > 0", self.max_payload)
        _want(self.mqtt_version in ("auto", "5", "3.1.1"), "mqtt-version", "auto, 5 or 3.1.1", self.mqtt_version)
        try:
            check_name(self.federation, "federation")
        except ProtocolError as exc:
            raise ConfigError("configuration", "federation", "1-64 characters from A-Z a-z 0-9 _ . -",
                              self.federation) from exc


def _want(ok: bool, key: str, expected: str, found: object) -> None:
    if not ok:
        raise ConfigError("configuration", key, expected, found)


def key_of(name: str) -> str:
    return name.replace("_", "-")


def build_config(file: Path | None, overrides: Mapping[str, Any]) -> CoordinatorConfig:
    """Values from ``file`` (TOML), then ``overrides`` (flags given on the command line, None = not given)."""
    values: dict[str, Any] = _read_toml(file) if file is not None else {}
    given = {name: value for name, value in overrides.items() if value is not None and value is not False}
    values.update(given)
    for required in ("artifact", "state_dir"):
        if required not in values:
            raise ConfigError(str(file or "command line"), key_of(required),
                              f"--{key_of(required)} on the command line or {key_of(required)} in the file", None)
    try:
        return CoordinatorConfig(**values)
    except ConfigError as exc:
        source = "command line" if file is None or exc.key.replace("-", "_") in given else str(file)
        raise ConfigError(source, exc.key, exc.expected, exc.found) from None


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(Path(file).read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(file), "(file)", "a readable TOML file", str(exc)) from exc
    kinds = {f.name: f.type for f in fields(CoordinatorConfig)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in kinds:
            raise ConfigError(str(file), key, f"one of {sorted(key_of(k) for k in kinds)}", "an unknown key")
        values[name] = _typed(str(file), key, str(kinds[name]), value)
    return values


def _typed(source: str, key: str, kind: str, value: Any) -> Any:
    if "Path" in kind and isinstance(value, str):
        return Path(value).expanduser()
    if "bool" in kind and isinstance(value, bool):
        return value
    if "int" in kind and isinstance(value, int) and not isinstance(value, bool):
        return value
    if "float" in kind and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if "str" in kind and isinstance(value, str):
        return value
    expected = kind.replace(" | None", "").replace("Path", "path string")
    raise ConfigError(source, key, f"a {expected}", value)
