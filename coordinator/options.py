"""Options of a command as one frozen dataclass, from a TOML file and command-line flags.

Every field has a TOML key of the same name with dashes (``round-timeout = 30``);
a flag given on the command line wins over the file. An unknown key or a value
of the wrong type is refused naming it; the dataclass's own checks name a bad
value and say whether it came from the file or the command line.
"""

from __future__ import annotations

import difflib
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from coordinator.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


def want(ok: bool, key: str, expected: str, found: object) -> None:
    """Refuse a value in a dataclass's checks: ``key`` as the user writes it, what was expected, what was found."""
    if not ok:
        raise ConfigError("configuration", key, expected, found)


def key_of(name: str) -> str:
    return name.replace("_", "-")


def build_options(cls: type[T], file: Path | None, overrides: Mapping[str, Any], required: Sequence[str] = ()) -> T:
    """Values from ``file`` (TOML), then ``overrides`` (flags given on the command line, None = not given)."""
    values: dict[str, Any] = read_toml(cls, file) if file is not None else {}
    given = {name: value for name, value in overrides.items() if value is not None and value is not False}
    values.update(given)
    for name in required:
        if name not in values:
            raise ConfigError(str(file or "command line"), key_of(name),
                              f"--{key_of(name)} on the command line or {key_of(name)} in the file", None)
    try:
        return cls(**values)
    except ConfigError as exc:
        source = "command line" if file is None or exc.key.replace("-", "_") in given else str(file)
        raise ConfigError(source, exc.key, exc.expected, exc.found) from None


def read_toml(cls: type[Any], file: Path) -> dict[str, Any]:
    try:
        raw = tomllib.loads(Path(file).read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(file), "(file)", "a readable TOML file", str(exc)) from exc
    kinds = {f.name: f.type for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name not in kinds:
            raise ConfigError(str(file), key, _known_keys(key, [key_of(k) for k in kinds]), "an unknown key")
        values[name] = _typed(str(file), key, str(kinds[name]), value)
    return values


def _known_keys(key: str, known: list[str]) -> str:
    """What an unknown key should have been: the closest known key if one is close, else all of them."""
    close = difflib.get_close_matches(key_of(key), known, n=1)
    return f"a known key (did you mean {close[0]!r}?)" if close else f"one of {sorted(known)}"


def _typed(source: str, key: str, kind: str, value: Any) -> Any:
    if kind.startswith("tuple[tuple[str, str]"):  # a TOML table of strings, kept as (key, value) pairs
        if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
            return tuple(value.items())
        raise ConfigError(source, key, f'a table of strings ([{key}] with lines like name = "value")', value)
    if kind.startswith("tuple[int") and isinstance(value, list) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        return tuple(value)
    if "Path" in kind and isinstance(value, str):
        return Path(value).expanduser()
    if "bool" in kind and isinstance(value, bool):
        return value
    if "int" in kind and not kind.startswith("tuple") and isinstance(value, int) and not isinstance(value, bool):
        return value
    if "float" in kind and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    if "str" in kind and isinstance(value, str):
        return value
    names = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
             "Path": "a path string", "tuple[int, ...]": "a list of integers"}
    expected = " or ".join(names.get(part, part) for part in kind.split(" | ") if part != "None")
    raise ConfigError(source, key, expected, value)
