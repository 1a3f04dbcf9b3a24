"""The fleet-run PNG report: it renders a real, non-blank image of the size it sets, for a normal run, a single
round and a run with no test accuracy, and refuses an empty run or a line missing a field by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from device_profiles.report import DPI, FIGSIZE_IN, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ABANDONED = {4, 9}
EVALUATED = {3, 6, 12}


def round_line(n: int) -> dict[str, Any]:
    """A synthetic round line: round ``n`` starts 2.5 simulated hours after round ``n - 1``."""
    abandoned = n in ABANDONED
    accuracy = min(0.95, 0.3 + 0.06 * n)
    summary = {"loss": 1.0 / n, "accuracy": accuracy, "examples": 360}
    reported, interrupted = (2, 1) if abandoned else (8, 0)
    return {
        "round": n, "status": "abandoned" if abandoned else "committed",
        "eligible": 10 + (n * 7) % 25, "goal": 8, "selected": 10, "reported": reported,
        "failed": n % 2, "interrupted": interrupted, "dropped": 10 - reported - n % 2 - interrupted,
        "cancelled": n % 2, "late": n % 3, "bytes_in": reported * 250_000, "bytes_out": 10 * 250_000 + 4_000,
        "test": None if abandoned else summary,
        "federated_eval": {**summary, "accuracy": accuracy - 0.05} if n in EVALUATED else None,
        "sim_hour": (2.5 * n) % 24, "sim_time": 1_700_000_000.0 + 9000.0 * n, "wall_s": 1.5 * n,
    }


def render(tmp_path: Path, lines: list[dict[str, Any]], name: str = "report.png") -> np.ndarray[Any, Any]:
    """Write the report and check it is a PNG of the size the report sets; return its pixels."""
    from matplotlib.image import imread

    out = tmp_path / name
    assert write_report(out, lines, "fleet run") == out
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    pixels = np.asarray(imread(out))
    width, height = round(FIGSIZE_IN[0] * DPI), round(FIGSIZE_IN[1] * DPI)
    assert (width, height) == (1200, 900)
    assert pixels.shape[:2] == (height, width)
    assert float(pixels[..., :3].std()) > 0.0  # not one flat colour
    return pixels


def test_a_run_renders(tmp_path: Path) -> None:
    render(tmp_path, [round_line(n) for n in range(1, 13)])


def test_the_lines_are_drawn(tmp_path: Path) -> None:
    """The same run with every test and eval accuracy taken out draws a different picture."""
    lines = [round_line(n) for n in range(1, 13)]
    blind = [{**line, "test": None, "federated_eval": None} for line in lines]
    full, empty = render(tmp_path, lines, "full.png"), render(tmp_path, blind, "blind.png")
    assert not np.array_equal(full, empty)


def test_a_single_round_renders(tmp_path: Path) -> None:
    render(tmp_path, [round_line(1)])


def test_a_single_abandoned_round_renders(tmp_path: Path) -> None:
    render(tmp_path, [round_line(4)])


def test_no_test_accuracy_renders(tmp_path: Path) -> None:
    render(tmp_path, [{**round_line(n), "test": None, "federated_eval": None} for n in range(1, 6)])


def test_lines_out_of_order_render(tmp_path: Path) -> None:
    render(tmp_path, [round_line(n) for n in (3, 1, 2)])


def test_no_rounds_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "report.png"
    with pytest.raises(ValueError, match=r"^no rounds to plot; expected at least one round line$"):
        write_report(out, [], "fleet run")
    assert not out.exists()


def test_a_missing_field_is_named(tmp_path: Path) -> None:
    line = round_line(2)
    del line["eligible"]
    with pytest.raises(ValueError, match=r"round line 2: missing field 'eligible'"):
        write_report(tmp_path / "report.png", [round_line(1), line], "fleet run")


def test_a_bad_accuracy_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"round line 1: field 'test' is 0\.5"):
        write_report(tmp_path / "report.png", [{**round_line(1), "test": 0.5}], "fleet run")
