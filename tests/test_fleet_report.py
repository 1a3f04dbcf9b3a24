"""The fleet-run PNG report: it renders a real, non-blank image of the size it sets (a normal run, a single
round, a run with no test accuracy), draws what each panel promises (abandoned rounds shaded, never as accuracy
0; cancelled devices apart from failures; bytes on a scale of their own size; loss; the fleet's size; a
baseline), refuses an empty run or a line missing a field by name, and ``edgefl report`` redraws a finished run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.colors import to_rgba

from device_profiles.report import DPI, FIGSIZE_IN, Baseline, report_figure, run_report, write_report
from device_profiles.run_folder import RunFolder, recorded_files, writing
from edge_runtime.cli import main
from edge_runtime.errors import EdgeflError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ABANDONED = {4, 9}
EVALUATED = {3, 6, 12}
ROUNDS = range(1, 13)


def round_line(n: int) -> dict[str, Any]:
    """A synthetic round line: round ``n`` starts 2.5 simulated hours after round ``n - 1``; 10 devices selected,
    each reported, failed, was interrupted, dropped or cancelled."""
    abandoned = n in ABANDONED
    accuracy = min(0.95, 0.3 + 0.06 * n)
    summary = {"loss": 1.0 / n, "accuracy": accuracy, "examples": 360}
    reported, interrupted, failed, cancelled = (2, 1, 0, 0) if abandoned else (8, 0, n % 2, 1 - n % 2)
    return {
        "round": n, "status": "abandoned" if abandoned else "committed",
        "eligible": 10 + (n * 7) % 25, "goal": 8, "selected": 10, "reported": reported,
        "failed": failed, "interrupted": interrupted, "dropped": 10 - reported - failed - interrupted - cancelled,
        "cancelled": cancelled, "late": n % 3, "bytes_in": reported * 250_000, "bytes_out": 10 * 250_000 + 4_000,
        "train_loss": None if abandoned else 1.2 / n, "test": None if abandoned else summary,
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
    assert (width, height) == (1200, 1350)
    assert pixels.shape[:2] == (height, width)
    assert float(pixels[..., :3].std()) > 0.0  # not one flat colour
    return pixels


def panels(lines: list[dict[str, Any]], **options: Any) -> dict[str, Any]:
    """The report's axes by their titles."""
    fig = report_figure(lines, "fleet run", **options)
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def labelled(ax: Any) -> dict[str, Any]:
    return {line.get_label(): line for line in ax.get_lines()}


def test_a_run_renders(tmp_path: Path) -> None:
    render(tmp_path, [round_line(n) for n in ROUNDS])


def test_the_lines_are_drawn(tmp_path: Path) -> None:
    """The same run with every test and eval accuracy taken out draws a different picture."""
    lines = [round_line(n) for n in ROUNDS]
    blind = [{**line, "test": None, "federated_eval": None} for line in lines]
    full, empty = render(tmp_path, lines, "full.png"), render(tmp_path, blind, "blind.png")
    assert not np.array_equal(full, empty)


def test_a_single_round_renders(tmp_path: Path) -> None:
    render(tmp_path, [round_line(1)])


def test_a_single_abandoned_round_renders(tmp_path: Path) -> None:
    render(tmp_path, [round_line(4)])


def test_no_test_accuracy_renders(tmp_path: Path) -> None:
    render(tmp_path, [{**round_line(n), "test": None, "federated_eval": None, "train_loss": None}
                      for n in range(1, 6)])


def test_lines_out_of_order_render(tmp_path: Path) -> None:
    render(tmp_path, [round_line(n) for n in (3, 1, 2)])


def test_an_abandoned_round_is_shaded_not_drawn_as_accuracy_zero() -> None:
    axes = panels([round_line(n) for n in ROUNDS])
    for title in ("Accuracy by round", "Loss by round"):
        ax = axes[title]
        for line in ax.get_lines():  # no value at an abandoned round, and no zero anywhere
            assert not set(np.asarray(line.get_xdata()).tolist()) & ABANDONED, line.get_label()
            assert 0.0 not in np.asarray(line.get_ydata()).tolist(), line.get_label()
        spans = [(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches]
        assert spans == [(3.5, 4.5), (8.5, 9.5)]
        assert [p.get_label() for p in ax.patches] == ["abandoned round", "_nolegend_"]
    tested = labelled(axes["Accuracy by round"])["test accuracy"]
    assert np.asarray(tested.get_xdata()).tolist() == [n for n in ROUNDS if n not in ABANDONED]


def test_the_loss_panel_draws_train_and_test_loss() -> None:
    lines = labelled(panels([round_line(n) for n in ROUNDS])["Loss by round"])
    committed = [n for n in ROUNDS if n not in ABANDONED]
    train, test = lines["train loss (devices, by examples)"], lines["test loss"]
    assert np.allclose(train.get_ydata(), [1.2 / n for n in committed])
    assert np.allclose(test.get_ydata(), [1.0 / n for n in committed])


def test_cancelled_devices_are_grey_and_apart_from_failures() -> None:
    ax = panels([round_line(n) for n in ROUNDS])["What became of the selected devices, by round"]
    bars = {c.get_label(): c for c in ax.containers}
    assert list(bars) == ["reported", "failed", "interrupted", "dropped (silent at the deadline)",
                          "cancelled (over-selected, not needed)"]
    colours = {label: to_rgba(c.patches[0].get_facecolor()) for label, c in bars.items()}
    assert colours["cancelled (over-selected, not needed)"] == to_rgba("lightgray")
    assert colours["failed"] == to_rgba("tab:red") and len(set(colours.values())) == len(colours)
    tops = np.sum([[p.get_height() for p in c.patches] for c in bars.values()], axis=0)
    assert tops.tolist() == [10] * len(ROUNDS)  # each selected device counted once


def test_refused_updates_fill_the_rest_of_the_selected_devices() -> None:
    ax = panels([{**round_line(2), "reported": 5}])["What became of the selected devices, by round"]
    bars = {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers}
    assert bars["refused (update not accepted)"] == [3]


@pytest.mark.parametrize(("top", "unit", "scale"), [(900, "bytes", 1.0), (12_000, "kB", 1e3),
                                                     (3_400_000, "MB", 1e6), (2_000_000_000, "GB", 1e9)])
def test_the_bytes_axis_fits_the_bytes(top: int, unit: str, scale: float) -> None:
    ax = panels([{**round_line(1), "bytes_in": top // 2, "bytes_out": top}])["Coordinator bytes by round"]
    assert ax.get_ylabel() == unit
    assert ax.get_ylim() == pytest.approx((0.0, top / scale * 1.3))


def test_the_fleet_size_and_a_baseline_are_drawn() -> None:
    axes = panels([round_line(n) for n in ROUNDS], fleet_size=50, baseline=Baseline(0.97, "central, 30 epochs"))
    fleet = labelled(axes["Eligible devices by simulated hour"])["fleet: 50 devices"]
    assert np.asarray(fleet.get_ydata()).tolist() == [50, 50]
    assert axes["Eligible devices by simulated hour"].get_ylim()[1] > 50
    baseline = labelled(axes["Accuracy by round"])["central, 30 epochs: 0.970"]
    assert np.asarray(baseline.get_ydata()).tolist() == [0.97, 0.97]
    plain = panels([round_line(1)])
    assert not any("fleet:" in label for label in labelled(plain["Eligible devices by simulated hour"]))
    assert set(labelled(plain["Accuracy by round"])) == {"test accuracy"}


@pytest.mark.parametrize(("accuracy", "label"), [(1.5, "x"), (-0.1, "x"), (float("nan"), "x"), ("0.9", "x"),
                                                (True, "x"), (0.9, " ")])
def test_a_bad_baseline_is_refused(accuracy: Any, label: str) -> None:
    with pytest.raises(ValueError, match=r"^baseline (accuracy|label) is"):
        Baseline(accuracy, label)


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


# -- a finished run's folder, and edgefl report ---------------------------------------------------------------

def finished_run(root: Path, attack: dict[str, Any] | None = None) -> RunFolder:
    """A run folder as edgefl fleet leaves it, as far as the report reads it, with its record."""
    folder = RunFolder(root)
    summary = {"config": {"devices": 40, "dataset": "digits", "partition": "iid", "model": "cnn",
                          "profiles": "mixed"}, "participation": {"devices": 40}, "attack": attack}
    with writing(folder):
        folder.rounds.write_text("".join(json.dumps(round_line(n)) + "\n" for n in ROUNDS))
        folder.summary.write_text(json.dumps(summary))
        folder.report.write_text("an old drawing")
    return folder


def test_a_runs_report_is_drawn_from_its_folder_with_its_title(tmp_path: Path, monkeypatch: Any) -> None:
    import device_profiles.report as report

    drawn: dict[str, Any] = {}
    monkeypatch.setattr(report, "write_report", lambda path, lines, title, **options: drawn.update(
        path=path, rounds=len(lines), title=title, **options))
    attack = {"kind": "sign-flip", "fraction": 0.1, "devices": 4, "device_ids": ["dev-00001"] * 4,
              "updates_trained": 9}
    folder = finished_run(tmp_path, attack)
    Baseline(0.9, "given").write(folder.baseline)
    run_report(folder)
    assert drawn == {"path": folder.report, "rounds": 12, "fleet_size": 40, "baseline": Baseline(0.9, "given"),
                     "title": "edgefl fleet: 40 devices, digits iid, cnn, mixed\n"
                              "10% sign-flip attackers (4 devices), who trained 9 updates"}


def test_edgefl_report_redraws_a_run_with_a_given_baseline_and_records_it(tmp_path: Path,
                                                                          capsys: Any) -> None:
    folder = finished_run(tmp_path / "run")
    assert main(["report", str(folder.root), "--baseline", "0.93", "--baseline-label", "paper"]) == 0
    assert folder.report.read_bytes()[:8] == PNG_SIGNATURE
    assert Baseline.read(folder.baseline) == Baseline(0.93, "paper")
    assert capsys.readouterr().out == f"wrote {folder.report} with paper: 0.9300\n"
    assert {"report.png", "baseline.json"} <= recorded_files(folder)  # the next run into the folder removes them
    assert main(["report", str(folder.root)]) == 0  # the baseline stays with the run
    assert capsys.readouterr().out == f"wrote {folder.report} with paper: 0.9300\n"
    with writing(folder):
        pass
    assert not folder.baseline.exists() and not folder.report.exists()


def test_edgefl_report_refuses_what_is_not_a_finished_runs_own(tmp_path: Path, capsys: Any) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "lacks rounds.jsonl or summary.json; expected the folder of a finished edgefl fleet run" in \
        capsys.readouterr().err
    folder = finished_run(tmp_path / "run")
    folder.record.unlink()  # a report.png no run recorded: someone's own
    assert main(["report", str(folder.root)]) == 2
    assert "report.png exists but no edgefl run recorded it" in capsys.readouterr().err
    assert folder.report.read_text() == "an old drawing"
    assert main(["report", str(folder.root), "--baseline-label", "x"]) == 2
    assert "expected --central or --baseline with it" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", str(folder.root), "--baseline", "1.2"])
    assert "argument --baseline: expected an accuracy in [0, 1], got '1.2'" in capsys.readouterr().err


@pytest.mark.tensorflow
def test_a_central_baseline_trains_the_runs_own_artifact_on_its_split(tmp_path: Path, export: Any,
                                                                      breast_cancer: Any) -> None:
    import shutil

    from device_profiles.report import central_baseline
    from edge_runtime.manifest import OptimizerConfig
    from model_export.spec import ModelSpec, standardization

    train, test = breast_cancer
    spec = ModelSpec("mlp", (30,), 2, hidden=(16,), optimizer=OptimizerConfig("sgd", 0.05),
                     normalization=standardization(train.x))
    folder = RunFolder(tmp_path)
    shutil.copytree(export(spec), folder.artifact)
    folder.train.parent.mkdir()
    np.savez(folder.train, x=train.x, y=train.y)
    np.savez(folder.test, x=test.x, y=test.y)
    baseline = central_baseline(folder, epochs=5)
    assert baseline.label == f"central, 5 epochs on all {len(train)} training examples"
    assert baseline.accuracy >= 0.9
    with pytest.raises(EdgeflError, match=r"none/artifact: not a folder"):  # edgefl report: exit 2, this message
        central_baseline(RunFolder(tmp_path / "none"), epochs=1)


def test_the_title_names_the_model_and_partition_the_run_resolved() -> None:
    from device_profiles.report import run_title

    config = {"devices": 50, "dataset": "digits", "partition": None, "model": None, "profiles": "mixed"}
    summary = {"config": config, "model": "cnn", "partition": "dirichlet:0.5", "attack": None}
    assert run_title(summary) == "edgefl fleet: 50 devices, digits dirichlet:0.5, cnn, mixed"
