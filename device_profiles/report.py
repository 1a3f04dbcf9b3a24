"""The PNG report of a fleet-emulation run (``edgefl fleet``): four panels drawn from its per-round JSON lines.

Panels: accuracy by round, eligible devices by simulated hour of the day, participation by round, and bytes
through the coordinator by round. matplotlib is imported only when a report is written, and the figure is
drawn on its own Agg canvas, so no global pyplot state is touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge_runtime.errors import EdgeflError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGSIZE_IN = (12.0, 9.0)
DPI = 100
_MB = 1_000_000
_PARTICIPATION = ("selected", "reported", "dropped", "cancelled", "interrupted", "failed")
_NO_MATPLOTLIB = "the fleet report needs matplotlib; expected it installed (pip install 'edgefl[fleet]')"


@dataclass(frozen=True)
class _Round:
    """What the report uses of one round's JSON line."""

    number: int
    abandoned: bool
    eligible: int
    goal: int
    counts: Mapping[str, int]  # the _PARTICIPATION fields
    bytes_in: int
    bytes_out: int
    test_accuracy: float | None
    eval_accuracy: float | None
    sim_hour: float


def _field(line: Mapping[str, Any], index: int, name: str) -> Any:
    if name not in line:
        raise ValueError(f"round line {index}: missing field {name!r}; expected every field of a fleet round line")
    return line[name]


def _accuracy(line: Mapping[str, Any], index: int, name: str) -> float | None:
    value = _field(line, index, name)
    if value is None:
        return None
    if not isinstance(value, Mapping) or "accuracy" not in value:
        raise ValueError(f"round line {index}: field {name!r} is {value!r}; expected null or an object with 'accuracy'")
    return float(value["accuracy"])


def _parse(line: Mapping[str, Any], index: int) -> _Round:
    return _Round(
        number=int(_field(line, index, "round")),
        abandoned=_field(line, index, "status") == "abandoned",
        eligible=int(_field(line, index, "eligible")),
        goal=int(_field(line, index, "goal")),
        counts={name: int(_field(line, index, name)) for name in _PARTICIPATION},
        bytes_in=int(_field(line, index, "bytes_in")),
        bytes_out=int(_field(line, index, "bytes_out")),
        test_accuracy=_accuracy(line, index, "test"),
        eval_accuracy=_accuracy(line, index, "federated_eval"),
        sim_hour=float(_field(line, index, "sim_hour")),
    )


def _hourly_means(rounds: Sequence[_Round]) -> list[float]:
    """Mean eligible devices per whole simulated hour 0..23; NaN where no round started in that hour."""
    totals, counts = [0.0] * 24, [0] * 24
    for r in rounds:
        hour = int(r.sim_hour) % 24
        totals[hour] += r.eligible
        counts[hour] += 1
    return [t / c if c else math.nan for t, c in zip(totals, counts, strict=True)]


def _round_axis(ax: Axes, rounds: Sequence[_Round]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    first, last = rounds[0].number, rounds[-1].number
    ax.set_xlim(first - 0.6, last + 0.6)
    ax.grid(True, alpha=0.3)


def _legend(ax: Axes, ncols: int = 1) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize="small", loc="best", ncols=ncols)


def _headroom(ax: Axes, top: float) -> None:
    """Start the y axis at 0 and leave a band above the data for the legend."""
    ax.set_ylim(0.0, max(top, 1.0) * 1.35)


def _accuracy_panel(ax: Axes, rounds: Sequence[_Round]) -> None:
    tested = [(r.number, r.test_accuracy) for r in rounds if r.test_accuracy is not None]
    evaluated = [(r.number, r.eval_accuracy) for r in rounds if r.eval_accuracy is not None]
    abandoned = [r.number for r in rounds if r.abandoned]
    if tested:
        ax.plot(*zip(*tested, strict=True), marker="o", markersize=4, label="test accuracy")
    if evaluated:
        ax.plot(*zip(*evaluated, strict=True), linestyle="none", marker="s", markersize=5, label="federated eval")
    if abandoned:
        ax.plot(abandoned, [0.0] * len(abandoned), linestyle="none", marker="x", color="red", markersize=8,
                clip_on=False, zorder=3, label="abandoned round")
    if not tested and not evaluated:
        ax.text(0.5, 0.5, "no accuracy reported in this run", transform=ax.transAxes, ha="center", color="gray")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy by round")
    _round_axis(ax, rounds)
    _legend(ax)


def _eligible_panel(fig: Figure, ax: Axes, rounds: Sequence[_Round]) -> None:
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    first, last = rounds[0].number, rounds[-1].number
    norm = Normalize(first - 0.5, last + 0.5) if first == last else Normalize(first, last)
    points = ax.scatter([r.sim_hour for r in rounds], [r.eligible for r in rounds], c=[r.number for r in rounds],
                        cmap="viridis", norm=norm, s=18, label="round start")
    means = _hourly_means(rounds)  # NaN breaks the line over hours without data
    ax.plot([h + 0.5 for h in range(24)], means, color="black", marker=".", linewidth=1.2, label="mean per hour")
    fig.colorbar(points, ax=ax, label="round", ticks=MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlim(0.0, 24.0)
    ax.set_xticks(range(0, 25, 3))
    ax.set_ylim(bottom=0.0)
    ax.set_xlabel("simulated hour (UTC)")
    ax.set_ylabel("eligible devices")
    ax.set_title("Eligible devices by simulated hour")
    ax.grid(True, alpha=0.3)
    _legend(ax)


def _participation_panel(ax: Axes, rounds: Sequence[_Round]) -> None:
    numbers = [r.number for r in rounds]
    ax.plot(numbers, [r.goal for r in rounds], color="gray", linestyle="--", linewidth=1, marker="_", label="goal")
    for name in _PARTICIPATION:
        ax.plot(numbers, [r.counts[name] for r in rounds], marker="o", markersize=3, label=name)
    _headroom(ax, max(max(r.goal, *r.counts.values()) for r in rounds))
    ax.set_ylabel("devices")
    ax.set_title("Participation by round")
    _round_axis(ax, rounds)
    _legend(ax, ncols=3)


def _bytes_panel(ax: Axes, rounds: Sequence[_Round]) -> None:
    numbers = [r.number for r in rounds]
    width = 0.4
    ax.bar([n - width / 2 for n in numbers], [r.bytes_in / _MB for r in rounds], width, label="received (in)")
    ax.bar([n + width / 2 for n in numbers], [r.bytes_out / _MB for r in rounds], width, label="published (out)")
    _headroom(ax, max(max(r.bytes_in, r.bytes_out) for r in rounds) / _MB)
    ax.set_ylabel("MB")
    ax.set_title("Coordinator bytes by round")
    _round_axis(ax, rounds)
    _legend(ax, ncols=2)


def write_report(path: Path, lines: Sequence[Mapping[str, Any]], title: str) -> Path:
    """Draw the four-panel report of a fleet run's round lines to a PNG at ``path``; return ``path``."""
    if not lines:
        raise ValueError("no rounds to plot; expected at least one round line")
    rounds = sorted((_parse(line, i) for i, line in enumerate(lines, start=1)), key=lambda r: r.number)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise EdgeflError(_NO_MATPLOTLIB) from exc
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="tight")
    try:
        FigureCanvasAgg(fig)  # attaches itself: the figure draws on Agg, never through pyplot
        axes = fig.subplots(2, 2)
        fig.suptitle(title)
        _accuracy_panel(axes[0, 0], rounds)
        _eligible_panel(fig, axes[0, 1], rounds)
        _participation_panel(axes[1, 0], rounds)
        _bytes_panel(axes[1, 1], rounds)
        fig.savefig(path, format="png", dpi=DPI)
    finally:
        fig.clear()
    return path
