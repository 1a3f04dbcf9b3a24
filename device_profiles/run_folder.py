"""Where an ``edgefl fleet`` run keeps its files: one place names them all, and records which ones a run wrote.

A run folder may be the user's own folder (``--out .``). So a run touches only
the paths in ``RunFolder.entries``, and before it writes it removes only the
files an earlier run listed in the folder's record (``run-files.json``); any
other file at those paths is refused by name, never overwritten. The record is
written when the run ends, however it ends (``writing``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from coordinator.report import strict
from device_profiles.errors import FleetError

_NAMED = 8  # foreign files named in an error; the rest are counted


@dataclass(frozen=True)
class RunFolder:
    root: Path

    @property
    def train(self) -> Path:
        return self.root / "data" / "train.npz"

    @property
    def test(self) -> Path:
        return self.root / "data" / "test.npz"

    @property
    def partition(self) -> Path:
        return self.root / "partition.npz"

    @property
    def devices(self) -> Path:
        """One entry per emulated device: id, index, profile, UTC offset, examples."""
        return self.root / "devices.json"

    @property
    def config(self) -> Path:
        """The options the run used, every one of them (a TOML file for ``--config`` to run it again)."""
        return self.root / "fleet.toml"

    @property
    def artifact(self) -> Path:
        return self.root / "artifact"

    @property
    def coordinator(self) -> Path:
        return self.root / "coordinator"

    @property
    def rounds(self) -> Path:
        return self.root / "rounds.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def report(self) -> Path:
        return self.root / "report.png"

    @property
    def baseline(self) -> Path:
        """The accuracy the report draws as a baseline (``edgefl report --central`` or ``--baseline``), if any."""
        return self.root / "baseline.json"

    @property
    def record(self) -> Path:
        """The files the run wrote, relative to ``root``: the only files a later run may remove."""
        return self.root / "run-files.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def workers(self) -> Path:
        return self.root / "workers"

    @property
    def caches(self) -> Path:
        return self.root / "cache"

    @property
    def entries(self) -> tuple[Path, ...]:
        """Every path a run writes, a file or a folder it fills; nothing else in ``root`` is touched."""
        return (self.config, self.train, self.test, self.partition, self.devices, self.artifact, self.coordinator,
                self.rounds, self.summary, self.report, self.baseline, self.logs, self.workers, self.caches)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def worker_spec(self, worker: int) -> Path:
        return self.workers / f"worker-{worker}.json"

    def worker_ready(self, worker: int) -> Path:
        return self.workers / f"worker-{worker}-ready.json"

    def worker_stats(self, worker: int) -> Path:
        return self.workers / f"worker-{worker}-stats.json"

    def cache(self, worker: int) -> Path:
        return self.caches / f"worker-{worker}"


def write_json(path: Path, value: Any) -> None:
    """Write atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(strict(value), indent=1, allow_nan=False) + "\n")  # no Infinity/NaN: null
    os.replace(tmp, path)


@contextmanager
def writing(folder: RunFolder) -> Iterator[None]:
    """Clear ``folder`` for a run (``clear``), then record what the run wrote when it ends, even by an error."""
    clear(folder)
    try:
        yield
    finally:
        record(folder, present_files(folder))


def clear(folder: RunFolder) -> None:
    """Remove the files an earlier run recorded; refuse, naming them, any other files where a run writes."""
    root = folder.root
    if root.exists() and not root.is_dir():
        raise FleetError(f"--out {root} is a file; expected a folder for the run")
    recorded = recorded_files(folder)
    foreign = sorted(name for name in present_files(folder) if name not in recorded)
    if foreign:
        raise FleetError(f"--out {root} holds {_listed(foreign)} where a fleet run writes, and no earlier run "
                         f"recorded them in {folder.record.name}; a run removes only the files an earlier run "
                         "recorded: move these, or choose another --out")
    for name in sorted(recorded):
        path = root / name
        if path.is_symlink() or path.is_file():
            path.unlink()
            _remove_empty_parents(root, path)
    folder.record.unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)


def check_writable(folder: RunFolder, path: Path) -> None:
    """Refuse to overwrite ``path`` in ``folder`` unless it is absent or a run recorded it."""
    name = _relative(folder, path)
    if (path.exists() or path.is_symlink()) and name not in recorded_files(folder):
        raise FleetError(f"{path} exists but no edgefl run recorded it in {folder.record}; expected a file "
                         "a run wrote: move it first")


def add_to_record(folder: RunFolder, paths: Iterable[Path]) -> None:
    """Record ``paths`` (written into ``folder`` after its run) along with what was recorded before."""
    record(folder, recorded_files(folder) | {_relative(folder, path) for path in paths})


def record(folder: RunFolder, names: Iterable[str]) -> None:
    write_json(folder.record, {"written_by": "edgefl", "files": sorted(names)})


def recorded_files(folder: RunFolder) -> frozenset[str]:
    """The files ``folder``'s record lists (none without a record); a record naming any other path is refused."""
    if not folder.record.exists():
        return frozenset()
    try:
        names = json.loads(folder.record.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FleetError(f"{folder.record}: not a record written by edgefl ({exc})") from None
    allowed = {_relative(folder, entry) for entry in folder.entries}
    if not isinstance(names, list) or not all(isinstance(n, str) and _within(n, allowed) for n in names):
        raise FleetError(f"{folder.record}: not a record written by edgefl; expected a list of the paths "
                         f"where a run writes ({', '.join(sorted(allowed))}) under 'files'")
    return frozenset(names)


def present_files(folder: RunFolder) -> list[str]:
    """Every file (or link, never followed) at the paths where a run writes, relative to the root."""
    found: list[str] = []
    for entry in folder.entries:
        found.extend(_files(entry, _relative(folder, entry)))
    return found


def _files(path: Path, name: str) -> Iterator[str]:
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        yield name
    elif path.is_dir():
        for child in sorted(path.iterdir()):
            yield from _files(child, f"{name}/{child.name}")


def _relative(folder: RunFolder, path: Path) -> str:
    return path.relative_to(folder.root).as_posix()


def _within(name: str, entries: set[str]) -> bool:
    """``name`` is an entry or lies below one, without ``..`` or an absolute path."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or ".." in parts:
        return False
    return any(parts[: len(PurePosixPath(entry).parts)] == PurePosixPath(entry).parts for entry in entries)


def _remove_empty_parents(root: Path, path: Path) -> None:
    for parent in path.parents:
        if parent == root or not parent.is_relative_to(root):
            return
        try:
            parent.rmdir()
        except OSError:  # not empty: it holds something else
            return


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_NAMED])
    return shown if len(names) <= _NAMED else f"{shown} and {len(names) - _NAMED} more"
