"""A fleet run folder is safe to point at a folder of one's own: a run removes only the files an earlier run
recorded, refuses any other file where it writes (naming it), and never claims a file it did not write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from device_profiles.errors import FleetError
from device_profiles.fleet_config import FleetConfig
from device_profiles.run_folder import (
    RunFolder,
    add_to_record,
    check_writable,
    clear,
    present_files,
    recorded_files,
    writing,
)

USERS_OWN = {  # what a user keeps in a project folder, five of them where a run writes
    "fleet.toml": "devices = 7  # my own options\n",
    "data/train.npz": "my data",
    "data/mine.csv": "f0,label\n1,0\n",
    "artifact/model.tflite": "my model",
    "logs/today.log": "my log",
    "cache/keep.bin": "my cache",
    "notes.txt": "my notes",
}
IN_THE_WAY = ["artifact/model.tflite", "cache/keep.bin", "data/train.npz", "fleet.toml", "logs/today.log"]


def write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def run_into(folder: RunFolder, files: dict[str, str]) -> None:
    """What a run does to its folder: clear it, write, and record what it wrote."""
    with writing(folder):
        write_tree(folder.root, files)


RUN = {"fleet.toml": "devices = 3\n", "data/train.npz": "x", "data/test.npz": "y", "logs/broker.log": "b",
       "coordinator/state.json": "{}", "cache/worker-0/artifacts/a/model.tflite": "m", "rounds.jsonl": "{}\n"}


def test_a_users_own_files_where_a_run_writes_are_refused_by_name_and_left_alone(tmp_path: Path) -> None:
    """The issue's case: edgefl fleet --config fleet.toml --out . in a folder holding the user's fleet.toml."""
    from device_profiles.fleet import run_fleet

    write_tree(tmp_path, USERS_OWN)
    config = FleetConfig(devices=4, dataset="breast_cancer", model="mlp", out=tmp_path)
    with pytest.raises(FleetError) as refused:
        run_fleet(config)  # refused before a broker, a worker or an export starts
    message = str(refused.value)
    assert message.startswith(f"--out {tmp_path} holds {', '.join(IN_THE_WAY)} where a fleet run writes")
    assert "data/mine.csv" not in message and "notes.txt" not in message  # not in the way: not named
    assert tree(tmp_path) == USERS_OWN  # nothing removed, overwritten or added: no record claims them
    assert not RunFolder(tmp_path).record.exists()


def test_a_later_run_removes_only_what_the_earlier_one_recorded(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "run")
    write_tree(folder.root, {"notes.txt": "mine", "data/mine.csv": "mine"})
    run_into(folder, RUN)
    assert recorded_files(folder) == set(RUN)
    assert json.loads(folder.record.read_text()) == {"written_by": "edgefl", "files": sorted(RUN)}
    run_into(folder, {"fleet.toml": "devices = 5\n", "rounds.jsonl": "{}\n"})
    assert tree(folder.root) == {"notes.txt": "mine", "data/mine.csv": "mine", "fleet.toml": "devices = 5\n",
                                 "rounds.jsonl": "{}\n", "run-files.json": folder.record.read_text()}
    assert recorded_files(folder) == {"fleet.toml", "rounds.jsonl"}
    assert sorted(p.name for p in folder.root.iterdir() if p.is_dir()) == ["data"]  # emptied folders went too


def test_a_file_added_to_a_runs_folder_afterwards_is_refused_and_nothing_is_removed(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    run_into(folder, RUN)
    (tmp_path / "logs" / "mine.txt").write_text("mine")
    (tmp_path / "report.png").write_text("drawn by hand")
    before = tree(tmp_path)
    with pytest.raises(FleetError, match=r"holds logs/mine\.txt, report\.png where a fleet run writes, and no "
                                         r"earlier run recorded them in run-files\.json"):
        clear(folder)
    assert tree(tmp_path) == before


def test_many_foreign_files_are_counted_after_the_first_eight(tmp_path: Path) -> None:
    write_tree(tmp_path, {f"logs/{i:02d}.log": "" for i in range(11)})
    with pytest.raises(FleetError, match=r"holds logs/00\.log, .*, logs/07\.log and 3 more where"):
        clear(RunFolder(tmp_path))


def test_a_run_that_fails_still_records_what_it_wrote(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    with pytest.raises(RuntimeError), writing(folder):
        write_tree(tmp_path, {"fleet.toml": "devices = 3\n", "logs/worker-0.log": "crashed"})
        raise RuntimeError("a worker died")
    assert recorded_files(folder) == {"fleet.toml", "logs/worker-0.log"}
    clear(folder)  # the next run may start
    assert present_files(folder) == [] and not folder.record.exists()


def test_a_link_where_a_run_writes_is_foreign_and_never_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    write_tree(elsewhere, {"broker.log": "not the run's"})
    folder = RunFolder(tmp_path / "run")
    run_into(folder, {"logs/broker.log": "the run's"})
    (folder.root / "logs" / "broker.log").unlink()
    (folder.root / "logs").rmdir()
    (folder.root / "logs").symlink_to(elsewhere, target_is_directory=True)  # a recorded path now leads away
    with pytest.raises(FleetError, match=r"holds logs where a fleet run writes"):
        clear(folder)
    assert (elsewhere / "broker.log").read_text() == "not the run's"


@pytest.mark.parametrize("files", [
    ["../outside.txt"], ["/etc/hostname"], ["notes.txt"], ["data/mine.csv"], ["logs/../notes.txt"], "fleet.toml",
])
def test_a_record_naming_anything_but_a_runs_paths_is_refused(tmp_path: Path, files: object) -> None:
    write_tree(tmp_path, {"notes.txt": "mine", "data/mine.csv": "mine"})
    folder = RunFolder(tmp_path / "run")
    folder.root.mkdir()
    folder.record.write_text(json.dumps({"files": files}))
    with pytest.raises(FleetError, match=r"run-files\.json: not a record written by edgefl"):
        clear(folder)
    assert tree(tmp_path) == {"notes.txt": "mine", "data/mine.csv": "mine", "run/run-files.json": json.dumps(
        {"files": files})}


def test_an_unreadable_record_is_refused(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    folder.record.write_text("{not json")
    with pytest.raises(FleetError, match=r"run-files\.json: not a record written by edgefl \("):
        clear(folder)


def test_an_out_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file")
    with pytest.raises(FleetError, match=r"is a file; expected a folder for the run"):
        clear(RunFolder(tmp_path / "out"))


def test_a_new_folder_is_made_and_an_empty_one_used(tmp_path: Path) -> None:
    clear(RunFolder(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "logs").mkdir()  # an empty folder where a run writes holds no file to lose
    run_into(RunFolder(tmp_path), {"logs/broker.log": "b"})
    assert recorded_files(RunFolder(tmp_path)) == {"logs/broker.log"}


def test_files_written_after_the_run_are_checked_and_added_to_its_record(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path)
    run_into(folder, {"report.png": "drawn", "rounds.jsonl": "{}\n"})
    check_writable(folder, folder.report)  # the run's own: may be drawn again
    check_writable(folder, folder.baseline)  # absent
    folder.baseline.write_text("{}")
    add_to_record(folder, [folder.baseline])
    assert recorded_files(folder) == {"report.png", "rounds.jsonl", "baseline.json"}
    (tmp_path / "summary.json").write_text("mine")
    with pytest.raises(FleetError, match=r"summary\.json exists but no edgefl run recorded it"):
        check_writable(folder, folder.summary)
