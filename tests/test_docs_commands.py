"""Every ``edgefl`` command in the README, FLEET.md, STRATEGIES.md and ARTIFACT.md parses with the real CLI, and
a documented fleet command builds a valid fleet configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from device_profiles.fleet_config import build_fleet_config
from tests.test_deploy_docs import code_lines, edgefl_argv, parse_edgefl

ROOT = Path(__file__).resolve().parents[1]
PAGES = tuple(ROOT / page for page in ("README.md", "docs/FLEET.md", "docs/STRATEGIES.md", "docs/ARTIFACT.md"))
IGNORED = ("config", "command", "handler", "verbose", "no_progress")


def commands(page: Path) -> list[list[str]]:
    return [argv for line in code_lines(page.read_text()) if (argv := edgefl_argv(line)) is not None]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_edgefl_command_on_the_page_parses(page: Path) -> None:
    found = commands(page)
    assert found, f"{page.name} shows no edgefl command"
    for argv in found:
        args = parse_edgefl(argv)
        if args.command == "fleet":
            build_fleet_config(None, {k: v for k, v in vars(args).items() if k not in IGNORED})


def test_the_readme_main_job_is_edgefl_fleet() -> None:
    assert ["fleet"] in commands(ROOT / "README.md")
