"""docs/DEPLOY.md and its examples stay true: the policy loads, the unit's command and every documented command parse,
and the key table names exactly the keys the loader accepts, with their defaults."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
from pathlib import Path

import pytest

from edge_runtime.broker_args import CREDENTIAL_ENVS, PASSWORD_ENV
from edge_runtime.cli import build_parser
from edge_runtime.errors import PolicyError, SignalError
from edge_runtime.policy_file import _KEYS, Policy, load_policy
from edge_runtime.signals import parse_signals

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "docs" / "DEPLOY.md"
POLICY = ROOT / "docs" / "examples" / "policy.toml"
UNIT = ROOT / "docs" / "examples" / "edgefl-device.service"
NETWORK_KEYS = ("network.metered-interfaces", "network.unmetered-interfaces")
SHELL_OPERATORS = {"|", "||", "&&", ";", ">", ">>", "<", "2>&1", "&"}
PATH_OPTIONS = ("policy", "signals", "cache_dir", "data", "tls_ca")  # options that must reach the namespace


# -- helpers (each has a test below showing that it can fail) --------------------------------------

def parse_edgefl(argv: list[str]) -> argparse.Namespace:
    """Parse ``edgefl`` arguments as the CLI does; AssertionError with argparse's message instead of SystemExit.

    Also checks that every path option written on the line reaches the namespace: argparse silently drops a
    parent's option when a subcommand defines the same one (``edgefl device --policy F status``).
    """
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"edgefl {shlex.join(argv)}: {stderr.getvalue().strip()}") from None
    for name in PATH_OPTIONS:
        flag = "--" + name.replace("_", "-")
        if flag in argv and getattr(args, name, None) is None:
            raise AssertionError(f"edgefl {shlex.join(argv)}: {flag} is written but ignored (put it after the "
                                 f"subcommand)")
    return args


def code_lines(markdown: str, languages: tuple[str, ...] = ("sh", "console")) -> list[str]:
    """Lines of the fenced blocks in ``languages``: continuations joined, console prompts kept as written."""
    lines: list[str] = []
    fence: str | None = None
    for raw in markdown.splitlines():
        stripped = raw.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip() if fence is None else None
            continue
        if fence in languages:
            if lines and lines[-1].endswith("\\"):
                lines[-1] = lines[-1][:-1] + " " + stripped
            else:
                lines.append(stripped if fence == "sh" else raw)
    return lines


def edgefl_argv(line: str) -> list[str] | None:
    """The arguments after ``edgefl`` when ``line`` runs it (optionally via ``$``, ``sudo [-u USER]`` or a venv
    path), else None. Stops at the first shell operator."""
    if line.startswith("$ "):
        line = line[2:]
    elif line.startswith(("$", "#")) or not line:
        return None
    tokens = shlex.split(line, comments=True)
    if tokens[:1] == ["sudo"]:
        tokens = tokens[3:] if tokens[1:2] == ["-u"] else tokens[1:]
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", tokens[0]):
        tokens = tokens[1:]
    if not tokens or os.path.basename(tokens[0]) != "edgefl":
        return None
    argv = []
    for token in tokens[1:]:
        if token in SHELL_OPERATORS:
            break
        argv.append(token)
    return argv


def key_table(markdown: str) -> dict[str, str]:
    """``{key: default cell}`` of the table whose header starts with ``| key | type | default |``."""
    rows: dict[str, str] = {}
    inside = False
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if cells[:3] == ["key", "type", "default"]:
            inside = True
            continue
        if not inside:
            continue
        if not cells:
            break
        if set(cells[0]) <= set("-: "):
            continue
        match = re.fullmatch(r"`([a-z.-]+)`", cells[0])
        assert match, f"key table row does not start with a `key`: {line}"
        rows[match.group(1)] = cells[2]
    return rows


def documented_default(cell: str) -> object:
    """A default cell as a value: unset -> None, `false` -> False, `10` -> 10.0, `"block"` -> "block", `[]` -> ()."""
    if cell.startswith("unset"):
        return None
    match = re.fullmatch(r"`(.*)`", cell)
    assert match, f"default cell {cell!r} is neither `value` nor unset"
    text = match.group(1)
    if text in ("true", "false"):
        return text == "true"
    if text == "[]":
        return ()
    if text.startswith('"'):
        return text.strip('"')
    return float(text)


def unit_sections(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as ``{section: {key: [values]}}``, continuation lines joined, comments dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith(("#", ";"))):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None and "=" in line, f"not a unit line: {line!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


# -- the checks: each runs on the real files below, and on a broken copy to show it can fail ---------

def check_policy(path: Path) -> None:
    policy = load_policy(path)
    assert policy.require_charging and policy.require_unmetered
    assert policy.max_cpu_percent is not None and policy.cpu_idle_s > 0
    assert policy.max_temperature_c is not None and policy.max_temperature_c <= 75, "below the Pi's ~80 °C throttling"
    assert policy.allowed_hours and all(w.end <= w.start for w in policy.allowed_hours), "an overnight window"
    assert policy.daily_budget_s is not None and policy.hold_s > 0
    assert policy.unknown_signals == "block"


def check_unit(text: str) -> None:
    sections = unit_sections(text)
    service = sections["Service"]
    (exec_start,) = service["ExecStart"]
    assert "%" not in exec_start and "$" not in exec_start, "systemd would expand specifiers or variables"
    tokens = shlex.split(exec_start)
    assert tokens[0].startswith("/") and os.path.basename(tokens[0]) == "edgefl", tokens[0]
    args = parse_edgefl(tokens[1:])
    assert args.command == "device" and args.device_action is None
    assert args.device_id and args.data and args.broker
    assert not any(token.startswith("--password") for token in tokens), \
        f"the password belongs in the EnvironmentFile (${PASSWORD_ENV})"
    assert args.policy == Path("/etc/edgefl/policy.toml")
    assert service["CacheDirectory"] == ["edgefl"] and args.cache_dir == Path("/var/cache/edgefl"), \
        "--cache-dir must be the CacheDirectory= /var/cache/edgefl"
    assert service["User"][0] not in ("root", "0")
    assert [v.lstrip("-") for v in service["EnvironmentFile"]] == ["/etc/edgefl/device.env"]
    assert service["Restart"] == ["always"] and float(service["RestartSec"][0]) > 0, "Restart=always, RestartSec"
    assert "Nice" not in service, "--nice adds to Nice=; the page says the unit uses --nice alone"
    assert "time-sync.target" in " ".join(sections["Unit"]["After"])


def check_commands(markdown: str) -> list[list[str]]:
    commands = [argv for line in code_lines(markdown) if (argv := edgefl_argv(line)) is not None]
    for argv in commands:
        parse_edgefl(argv)
    return commands


def check_key_table(markdown: str) -> None:
    table = key_table(markdown)
    assert set(table) == {*_KEYS, *NETWORK_KEYS}, f"table keys differ: {set(table) ^ {*_KEYS, *NETWORK_KEYS}}"
    defaults = Policy()
    for key, cell in table.items():
        field = key.split(".", 1)[1].replace("-", "_") if key in NETWORK_KEYS else _KEYS[key][0]
        default = getattr(defaults, field)
        assert documented_default(cell) == (None if default == () and cell.startswith("unset") else default), \
            f"default of {key}: {cell}"


def check_toml_snippets(markdown: str, tmp_path: Path) -> int:
    snippets = re.findall(r"```toml\n(.*?)```", markdown, flags=re.S)
    for i, snippet in enumerate(snippets):
        path = tmp_path / f"snippet-{i}.toml"
        path.write_text(snippet)
        load_policy(path)
    return len(snippets)


def check_signal_snippets(markdown: str) -> int:
    snippets = re.findall(r"```json\n(.*?)```", markdown, flags=re.S)
    for snippet in snippets:
        parse_signals(json.loads(snippet), "DEPLOY.md")
    return len(snippets)


# -- the real files ------------------------------------------------------------------------------------

def test_example_policy_loads_and_is_the_policy_the_page_describes() -> None:
    check_policy(POLICY)


def test_unit_runs_edgefl_device_with_real_flags() -> None:
    check_unit(UNIT.read_text())


def test_every_edgefl_command_on_the_page_parses() -> None:
    commands = check_commands(DEPLOY.read_text())
    assert len(commands) >= 5, f"expected the page's edgefl commands, found {len(commands)}"
    assert any(argv[:2] == ["device", "status"] and "--json" in argv for argv in commands)


def test_the_page_shows_the_units_command() -> None:
    exec_start = unit_sections(UNIT.read_text())["Service"]["ExecStart"][0]
    assert shlex.split(exec_start) in [shlex.split(line) for line in code_lines(DEPLOY.read_text())]


def test_key_table_names_exactly_the_loaders_keys_with_their_defaults() -> None:
    check_key_table(DEPLOY.read_text())


def test_the_pages_toml_snippets_load_as_policies(tmp_path: Path) -> None:
    assert check_toml_snippets(DEPLOY.read_text(), tmp_path) >= 1


def test_the_pages_signals_file_example_is_valid() -> None:
    assert check_signal_snippets(DEPLOY.read_text()) >= 1


def test_the_page_names_the_password_variable_the_code_reads() -> None:
    text = DEPLOY.read_text()
    assert f"{PASSWORD_ENV}=" in text
    assert set(re.findall(r"EDGEFL_[A-Z_]+", text)) <= {*CREDENTIAL_ENVS, "EDGEFL_TFLITE_BACKEND"}


# -- broken copies fail --------------------------------------------------------------------------------

def test_a_broken_policy_fails(tmp_path: Path) -> None:
    broken = tmp_path / "policy.toml"
    broken.write_text(POLICY.read_text().replace("hold-seconds", "hold-secs"))
    with pytest.raises(PolicyError, match="hold-secs"):
        check_policy(broken)
    broken.write_text(POLICY.read_text().replace('"23:00-06:00"', '"09:00-17:00"'))
    with pytest.raises(AssertionError, match="overnight"):
        check_policy(broken)


@pytest.mark.parametrize(("old", "new", "match"), [
    ("--nice 10 \\", "--nice 25 \\", "invalid choice"),
    ("--tls-ca", "--ca-file", "error:"),
    ("-v device \\", "-v device status \\", "unrecognized arguments"),
    ("--cache-dir /var/cache/edgefl", "--cache-dir /var/cache/edgefl-device", "cache"),
    ("Restart=always", "Restart=on-failure", "Restart"),
    ("CacheDirectory=edgefl", "CacheDirectory=edgefl\nNice=5", "Nice"),
])
def test_a_broken_unit_fails(old: str, new: str, match: str) -> None:
    text = UNIT.read_text()
    assert old in text
    with pytest.raises(AssertionError, match=match):
        check_unit(text.replace(old, new, 1))


@pytest.mark.parametrize(("block", "match"), [
    ("```sh\nedgefl device --no-such-flag\n```", "unrecognized arguments"),
    ("```console\n$ edgefl device status --jsn\n```", "unrecognized arguments"),
])
def test_a_wrong_command_on_the_page_fails(block: str, match: str) -> None:
    with pytest.raises(AssertionError, match=match):
        check_commands(DEPLOY.read_text() + "\n" + block + "\n")


def test_lines_that_do_not_run_edgefl_are_skipped() -> None:
    markdown = ("```sh\nsudo adduser --system edgefl\njournalctl -u edgefl-device\n# edgefl --bogus\n"
                "edgefl device status \\\n    --json | jq .decision\n```\n```console\n$ edgefl device status\n"
                "signal   value   source\n```\n```text\nedgefl --bogus\n```\n")
    assert check_commands(markdown) == [["device", "status", "--json"], ["device", "status"]]


@pytest.mark.parametrize(("old", "new", "match"), [
    ("| `hold-seconds` |", "| `hold-secs` |", "table keys differ"),
    ("| `check-seconds` | number 0.1-3600 | `10` |", "| `check-seconds` | number 0.1-3600 | `5` |", "check-seconds"),
    ("| `unknown-signals` | `\"block\"` or `\"ignore\"` | `\"block\"` |",
     "| `unknown-signals` | `\"block\"` or `\"ignore\"` | `\"ignore\"` |", "unknown-signals"),
])
def test_a_wrong_key_table_fails(old: str, new: str, match: str) -> None:
    text = DEPLOY.read_text()
    assert old in text
    with pytest.raises(AssertionError, match=match):
        check_key_table(text.replace(old, new, 1))


def test_a_wrong_toml_snippet_fails(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="metered-interface"):
        check_toml_snippets("```toml\n[network]\nmetered-interface = [\"wlan0\"]\n```\n", tmp_path)


def test_a_wrong_signals_example_fails() -> None:
    with pytest.raises(SignalError, match="solar"):
        check_signal_snippets('```json\n{"power": "solar"}\n```\n')


@pytest.mark.parametrize("argv", [
    ["device", "--policy", "p.toml", "--signals", "s.json", "--cache-dir", "c", "status"],
    ["device", "status", "--policy", "p.toml", "--signals", "s.json", "--cache-dir", "c"],
])
def test_status_options_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = parse_edgefl(argv)
    assert (args.policy, args.signals, args.cache_dir) == (Path("p.toml"), Path("s.json"), Path("c"))
