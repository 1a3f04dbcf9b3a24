"""The device side works in a process where TensorFlow cannot be imported at all."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from model_export.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = """
import importlib.abc, sys

class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "tf_keras"):
            raise ImportError(f"{name} is blocked: the device side must not import TensorFlow")
        return None

sys.meta_path.insert(0, NoTensorFlow())
"""


def _run(code: str) -> subprocess.CompletedProcess[str]:
    script = BLOCKER + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_edge_runtime_and_coordinator_import_and_train_without_tensorflow(export) -> None:
    artifact = export(ModelSpec("cnn", (8, 8, 1), 3, filters=(4,), hidden=(), batch_size=4))
    result = _run(f"""
        import importlib, pkgutil
        import numpy as np
        for package in ("edge_runtime", "coordinator", "device_profiles"):
            module = importlib.import_module(package)
            for info in pkgutil.walk_packages(module.__path__, package + "."):
                importlib.import_module(info.name)
        from edge_runtime import Artifact, Trainer
        from edge_runtime.cli import build_parser
        build_parser()
        trainer = Trainer(Artifact.load({str(artifact)!r}))
        rng = np.random.default_rng(0)
        result = trainer.fit(rng.normal(size=(10, 8, 8, 1)), rng.integers(0, 3, 10), epochs=1)
        assert result.examples_seen == 10, result
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
        assert not leaked, leaked
        print("trained", trainer.backend.name)
    """)
    assert result.returncode == 0, result.stderr
    assert "trained ai_edge_litert" in result.stdout


def test_the_blocker_really_blocks() -> None:
    result = _run("import tensorflow")
    assert result.returncode != 0
    assert "must not import TensorFlow" in result.stderr


def test_export_without_tensorflow_names_the_extra(tmp_path) -> None:
    result = _run(f"""
        from edge_runtime.cli import main
        sys.exit(main(["export", "mlp", "--input-shape", "4", "--classes", "2", "--out", {str(tmp_path)!r}]))
    """)
    assert result.returncode == 2, result.stderr
    assert "pip install 'edgefl[export]'" in result.stderr


def test_the_coordinator_side_runs_without_psutil() -> None:
    """psutil comes with the device extra only; a broker host with the coordinator extra has none."""
    result = _run("""
        sys.modules["psutil"] = None  # makes `import psutil` fail
        from edge_runtime.cli import build_parser
        import coordinator.server
        from edge_runtime.signals import system_reader
        from pathlib import Path
        build_parser().parse_args(["coordinator", "--help"])
    """)
    assert result.returncode == 0, result.stderr
    assert "usage: edgefl coordinator" in result.stdout
    broken = _run("""
        sys.modules["psutil"] = None
        from edge_runtime.signals import system_reader
        from pathlib import Path
        system_reader(Path("."))
    """)
    assert broken.returncode != 0 and "psutil" in broken.stderr  # the blocker works: the device side needs it
