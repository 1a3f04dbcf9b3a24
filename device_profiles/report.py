"""The PNG report of a fleet-emulation run (``edgefl fleet``, ``edgefl report``), drawn from its round lines.

Panels: accuracy by round (with the run's baseline if it has one, and central DP's epsilon on a right-hand axis when
the run had DP) and loss by round, both with abandoned rounds shaded; what became of each selected device, by round;
bytes through the coordinator by round; and eligible devices by simulated hour of the day, against the size of the
fleet. matplotlib is imported only when a report is written, and the figure is drawn on its own Agg canvas, so no
global pyplot state is touched.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from device_profiles.errors import FleetError
from device_profiles.run_folder import RunFolder, write_json
from edge_runtime.errors import EdgeflError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGSIZE_IN = (12.0, 13.5)
DPI = 100
# What became of a selected device, bottom to top of a participation bar: (round-line field, label, colour).
_OUTCOMES = (("reported", "reported", "tab:green"), ("failed", "failed", "tab:red"),
             ("interrupted", "interrupted", "tab:orange"), ("dropped", "dropped (silent at the deadline)", "tab:brown"),
             ("cancelled", "cancelled (over-selected, not needed)", "lightgray"))
_REFUSED = ("refused (update not accepted)", "tab:purple")  # selected, answered, and none of the above
_ABANDONED = "tab:red"
_BYTE_UNITS = ((1e9, "GB"), (1e6, "MB"), (1e3, "kB"), (1.0, "bytes"))
_NO_MATPLOTLIB = "the fleet report needs matplotlib; expected it installed (pip install 'edgefl[fleet]')"


@dataclass(frozen=True)
class Baseline:
    """An accuracy to compare the federation with: central training on the pooled data, or one the user gives."""

    accuracy: float
    label: str

    def __post_init__(self) -> None:
        number = isinstance(self.accuracy, (int, float)) and not isinstance(self.accuracy, bool)
        if not (number and 0.0 <= self.accuracy <= 1.0):
            raise ValueError(f"baseline accuracy is {self.accuracy!r}; expected a number in [0, 1]")
        if not (isinstance(self.label, str) and self.label.strip()):
            raise ValueError(f"baseline label is {self.label!r}; expected a non-empty string")

    @classmethod
    def read(cls, path: Path) -> Baseline:
        try:
            raw = json.loads(path.read_text())
            return cls(raw["accuracy"], raw["label"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FleetError(f"{path}: not a baseline ({exc}); expected {{\"accuracy\": 0..1, \"label\": TEXT}}"
                             ) from None

    def write(self, path: Path) -> None:
        write_json(path, {"accuracy": self.accuracy, "label": self.label})


def central_baseline(folder: RunFolder, epochs: int, seed: int = 0) -> Baseline:
    """The run's own artifact (same model, same initial weights) trained on the run's whole training split with
    the device runtime, for ``epochs`` epochs at its own learning rate; its accuracy on the run's test split."""
    from edge_runtime.artifact import Artifact
    from edge_runtime.data import load_data
    from edge_runtime.trainer import Trainer

    artifact = Artifact.load(folder.artifact)
    train, test = load_data(folder.train, artifact.manifest), load_data(folder.test, artifact.manifest)
    trainer = Trainer(artifact)
    trainer.fit(train.x, train.y, epochs=epochs, seed=seed)
    accuracy = trainer.evaluate(test.x, test.y).accuracy
    return Baseline(accuracy, f"central, {epochs} epoch{'s' * (epochs != 1)} on all {len(train)} training examples")


@dataclass(frozen=True)
class _Round:
    """What the report uses of one round's JSON line."""

    number: int
    abandoned: bool
    eligible: int
    goal: int
    selected: int
    outcomes: Mapping[str, int]  # the _OUTCOMES fields
    bytes_in: int
    bytes_out: int
    bytes_up: int  # the accepted updates' payloads (0 in a line written before it was counted)
    train_loss: float | None
    test: Mapping[str, float | None] | None  # accuracy, loss
    evaluated: Mapping[str, float | None] | None
    sim_hour: float
    epsilon: float | None = None  # central DP's epsilon after the round (None: DP off, or infinite)

    @property
    def refused(self) -> int:
        return max(0, self.selected - sum(self.outcomes.values()))


def _field(line: Mapping[str, Any], index: int, name: str) -> Any:
    if name not in line:
        raise ValueError(f"round line {index}: missing field {name!r}; expected every field of a fleet round line")
    return line[name]


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def _metrics(line: Mapping[str, Any], index: int, name: str) -> Mapping[str, float | None] | None:
    value = _field(line, index, name)
    if value is None:
        return None
    if not isinstance(value, Mapping) or "accuracy" not in value:
        raise ValueError(f"round line {index}: field {name!r} is {value!r}; expected null or an object with 'accuracy'")
    return {"accuracy": _optional(value["accuracy"]), "loss": _optional(value.get("loss"))}


def _parse(line: Mapping[str, Any], index: int) -> _Round:
    return _Round(
        number=int(_field(line, index, "round")),
        abandoned=_field(line, index, "status") == "abandoned",
        eligible=int(_field(line, index, "eligible")),
        goal=int(_field(line, index, "goal")),
        selected=int(_field(line, index, "selected")),
        outcomes={name: int(_field(line, index, name)) for name, _, _ in _OUTCOMES},
        bytes_in=int(_field(line, index, "bytes_in")),
        bytes_out=int(_field(line, index, "bytes_out")),
        bytes_up=int(line.get("bytes_up", 0)),
        train_loss=_optional(line.get("train_loss")),
        test=_metrics(line, index, "test"),
        evaluated=_metrics(line, index, "federated_eval"),
        sim_hour=float(_field(line, index, "sim_hour")),
        epsilon=_optional((line.get("privacy") or {}).get("epsilon")),
    )


def _hourly_means(rounds: Sequence[_Round]) -> list[float]:
    """Mean eligible devices per whole simulated hour 0..23; NaN where no round started in that hour."""
    totals, counts = [0.0] * 24, [0] * 24
    for r in rounds:
        hour = int(r.sim_hour) % 24
        totals[hour] += r.eligible
        counts[hour] += 1
    return [t / c if c else math.nan for t, c in zip(totals, counts, strict=True)]


def _series(rounds: Sequence[_Round], value: Callable[[_Round], float | None]) -> list[tuple[int, float]]:
    """``(round, value(r))`` for the rounds where ``value`` gives a number."""
    return [(r.number, v) for r in rounds if (v := value(r)) is not None]


def _of(metrics: Mapping[str, float | None] | None, name: str) -> float | None:
    return None if metrics is None else metrics[name]


def _round_axis(ax: Axes, rounds: Sequence[_Round]) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("round")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlim(rounds[0].number - 0.6, rounds[-1].number + 0.6)
    ax.grid(True, alpha=0.3)


def _legend(ax: Axes, ncols: int = 1, loc: Literal["best", "lower right"] = "best") -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(fontsize="small", loc=loc, ncols=ncols)


def _shade_abandoned(ax: Axes, rounds: Sequence[_Round]) -> None:
    """A band over every abandoned round: it changed no model, so it has no value of its own to draw."""
    for i, number in enumerate(r.number for r in rounds if r.abandoned):
        ax.axvspan(number - 0.5, number + 0.5, color=_ABANDONED, alpha=0.12, linewidth=0,
                   label="abandoned round" if i == 0 else "_nolegend_")


def _line(ax: Axes, points: list[tuple[int, float]], **style: Any) -> None:
    if points:
        ax.plot(*zip(*points, strict=True), **style)


def _accuracy_panel(ax: Axes, rounds: Sequence[_Round], baseline: Baseline | None) -> None:
    tested = _series(rounds, lambda r: _of(r.test, "accuracy"))
    evaluated = _series(rounds, lambda r: _of(r.evaluated, "accuracy"))
    _line(ax, tested, marker="o", markersize=4, color="tab:blue", label="test accuracy")
    _line(ax, evaluated, linestyle="none", marker="s", markersize=5, color="tab:purple", label="federated eval")
    if baseline is not None:
        ax.axhline(baseline.accuracy, color="black", linestyle="--", linewidth=1.2,
                   label=f"{baseline.label}: {baseline.accuracy:.3f}")
    _shade_abandoned(ax, rounds)
    if not tested and not evaluated:
        ax.text(0.5, 0.5, "no accuracy reported in this run", transform=ax.transAxes, ha="center", color="gray")
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("accuracy")
    ax.set_title("Accuracy by round")
    _round_axis(ax, rounds)
    _legend(ax, loc="lower right")  # accuracy rises from the left, and a baseline lies along the top
    _epsilon_axis(ax, rounds)


def _epsilon_axis(ax: Axes, rounds: Sequence[_Round]) -> None:
    """Central DP's epsilon by round, on its own axis to the right of the accuracy (nothing without DP)."""
    spent = _series(rounds, lambda r: r.epsilon)
    if not spent:
        return
    twin = ax.twinx()
    _line(twin, spent, color="tab:green", linestyle="--", marker=".", label="epsilon (DP, right axis)")
    twin.set_ylim(0.0, max(v for _, v in spent) * 1.15 or 1.0)
    twin.set_ylabel("epsilon", color="tab:green")
    twin.legend(loc="upper left", fontsize="small")


def _loss_panel(ax: Axes, rounds: Sequence[_Round]) -> None:
    trained = _series(rounds, lambda r: r.train_loss)
    tested = _series(rounds, lambda r: _of(r.test, "loss"))
    _line(ax, trained, marker="o", markersize=4, color="tab:orange", label="train loss (devices, by examples)")
    _line(ax, tested, marker="o", markersize=4, color="tab:blue", label="test loss")
    _shade_abandoned(ax, rounds)
    values = [v for _, v in trained + tested]
    if not values:
        ax.text(0.5, 0.5, "no loss reported in this run", transform=ax.transAxes, ha="center", color="gray")
    ax.set_ylim(0.0, max(values, default=1.0) * 1.3 or 1.0)
    ax.set_ylabel("loss")
    ax.set_title("Loss by round")
    _round_axis(ax, rounds)
    _legend(ax)


def _participation_panel(ax: Axes, rounds: Sequence[_Round]) -> None:
    numbers = [r.number for r in rounds]
    bottom = [0] * len(rounds)
    stacks = [(label, colour, [r.outcomes[name] for r in rounds]) for name, label, colour in _OUTCOMES]
    if any(r.refused for r in rounds):
        stacks.append((*_REFUSED, [r.refused for r in rounds]))
    for label, colour, counts in stacks:
        if any(counts):  # an outcome no device had stays out of the legend
            ax.bar(numbers, counts, 0.7, bottom=bottom, color=colour, label=label)
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    ax.plot(numbers, [r.goal for r in rounds], color="black", linestyle="none", marker="_", markersize=22,
            markeredgewidth=2, label="goal (updates waited for)")
    ax.set_ylim(0.0, max(max(r.goal, r.selected) for r in rounds) * 1.45 or 1.0)
    ax.set_ylabel("selected devices")
    ax.set_title("What became of the selected devices, by round")
    _round_axis(ax, rounds)
    _legend(ax, ncols=2)


def _bytes_panel(ax: Axes, rounds: Sequence[_Round]) -> None:
    numbers = [r.number for r in rounds]
    top = max(max(r.bytes_in, r.bytes_out) for r in rounds)
    scale, unit = next((s, u) for s, u in _BYTE_UNITS if top >= s or s == 1.0)
    width = 0.4
    ax.bar([n - width / 2 for n in numbers], [r.bytes_in / scale for r in rounds], width, label="received (in)")
    ax.bar([n + width / 2 for n in numbers], [r.bytes_out / scale for r in rounds], width, label="published (out)")
    if any(r.bytes_up for r in rounds):  # within "in": what the codecs made of the updates
        ax.plot(numbers, [r.bytes_up / scale for r in rounds], color="black", marker=".", linewidth=1.0,
                label="accepted updates (up)")
    ax.set_ylim(0.0, top / scale * 1.3 or 1.0)  # from the data's own size: small runs fill the panel too
    ax.set_ylabel(unit)
    ax.set_title("Coordinator bytes by round")
    _round_axis(ax, rounds)
    _legend(ax, ncols=2)


def _eligible_panel(fig: Figure, ax: Axes, rounds: Sequence[_Round], fleet_size: int | None) -> None:
    from matplotlib.colors import Normalize
    from matplotlib.ticker import MaxNLocator

    first, last = rounds[0].number, rounds[-1].number
    norm = Normalize(first - 0.5, last + 0.5) if first == last else Normalize(first, last)
    points = ax.scatter([r.sim_hour for r in rounds], [r.eligible for r in rounds], c=[r.number for r in rounds],
                        cmap="viridis", norm=norm, s=18, label="round start")
    means = _hourly_means(rounds)  # NaN breaks the line over hours without data
    ax.plot([h + 0.5 for h in range(24)], means, color="black", marker=".", linewidth=1.2, label="mean per hour")
    top = max(r.eligible for r in rounds)
    if fleet_size is not None:
        ax.axhline(fleet_size, color="gray", linestyle="--", linewidth=1.2, label=f"fleet: {fleet_size} devices")
        top = max(top, fleet_size)
    fig.colorbar(points, ax=ax, label="round", ticks=MaxNLocator(integer=True, min_n_ticks=1))
    ax.set_xlim(0.0, 24.0)
    ax.set_xticks(range(0, 25, 3))
    ax.set_ylim(0.0, top * 1.15 or 1.0)
    ax.set_xlabel("simulated hour (UTC)")
    ax.set_ylabel("eligible devices")
    ax.set_title("Eligible devices by simulated hour")
    ax.grid(True, alpha=0.3)
    _legend(ax)


def write_report(path: Path, lines: Sequence[Mapping[str, Any]], title: str, *, fleet_size: int | None = None,
                 baseline: Baseline | None = None) -> Path:
    """Draw the report of a fleet run's round lines to a PNG at ``path``; return ``path``."""
    fig = report_figure(lines, title, fleet_size=fleet_size, baseline=baseline)
    try:
        fig.savefig(path, format="png", dpi=DPI)
    finally:
        fig.clear()
    return path


def report_figure(lines: Sequence[Mapping[str, Any]], title: str, *, fleet_size: int | None = None,
                  baseline: Baseline | None = None) -> Figure:
    """The report's figure, on its own Agg canvas (never through pyplot): five panels, each with its title."""
    if not lines:
        raise ValueError("no rounds to plot; expected at least one round line")
    rounds = sorted((_parse(line, i) for i, line in enumerate(lines, start=1)), key=lambda r: r.number)
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise EdgeflError(_NO_MATPLOTLIB) from exc
    fig = Figure(figsize=FIGSIZE_IN, dpi=DPI, layout="tight")
    FigureCanvasAgg(fig)  # attaches itself
    grid = fig.add_gridspec(3, 2)
    fig.suptitle(title)
    _accuracy_panel(fig.add_subplot(grid[0, 0]), rounds, baseline)
    _loss_panel(fig.add_subplot(grid[0, 1]), rounds)
    _participation_panel(fig.add_subplot(grid[1, 0]), rounds)
    _bytes_panel(fig.add_subplot(grid[1, 1]), rounds)
    _eligible_panel(fig, fig.add_subplot(grid[2, :]), rounds, fleet_size)
    return fig


def run_report(folder: RunFolder) -> Path:
    """Draw ``folder``'s ``report.png`` from its round lines and summary, with its baseline if it has one."""
    summary = _read_json(folder.summary, "a finished fleet run's summary")
    try:
        lines = [json.loads(text) for text in folder.rounds.read_text().splitlines() if text.strip()]
        baseline = Baseline.read(folder.baseline) if folder.baseline.exists() else None
        return write_report(folder.report, lines, run_title(summary), baseline=baseline,
                            fleet_size=int(summary["participation"]["devices"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FleetError(f"{folder.root}: cannot draw the report ({exc}); expected a fleet run's folder with "
                         f"{folder.rounds.name} and {folder.summary.name}") from None


def run_title(summary: Mapping[str, Any]) -> str:
    """The report's title: the fleet, and on a second line its attackers if it had any."""
    from device_profiles.summary import AttackSummary

    config = summary["config"]
    partition, model = summary.get("partition", config["partition"]), summary.get("model", config["model"])
    title = f"edgefl fleet: {config['devices']} devices, {config['dataset']} {partition}, {model}, {config['profiles']}"
    if summary.get("attack") is None:
        return title
    attack = AttackSummary(**{**summary["attack"], "device_ids": tuple(summary["attack"]["device_ids"])})
    return f"{title}\n{attack.describe()}, who trained {attack.updates_trained} updates"


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FleetError(f"{path}: cannot read it ({exc}); expected {what}") from None
