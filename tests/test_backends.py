"""The same artifact trains identically under ai-edge-litert and under tflite-runtime.

tflite-runtime 2.14 (its last release) needs numpy < 2, so it runs in its own
virtual environment, made on first use under ``$EDGEFL_CACHE`` (default
``~/.cache/edgefl``) or taken from ``$EDGEFL_LEGACY_PYTHON``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.artifact import Artifact
from edge_runtime.manifest import OptimizerConfig
from edge_runtime.trainer import Trainer
from edge_runtime.weights import load_weights
from model_export.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
LEGACY_REQUIREMENTS = ("tflite-runtime==2.14.0", "numpy<2", "safetensors>=0.4")

TRAIN_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from edge_runtime import Artifact, Trainer, save_weights
    artifact, data, out = sys.argv[1:4]
    trainer = Trainer(Artifact.load(artifact))
    arrays = np.load(data)
    before = trainer.evaluate(arrays["x"], arrays["y"]).loss
    trainer.fit(arrays["x"], arrays["y"], epochs=3, seed=5)
    after = trainer.evaluate(arrays["x"], arrays["y"]).loss
    save_weights(out, trainer.get_weights())
    print(json.dumps({"backend": trainer.backend.name, "numpy": np.__version__, "before": before, "after": after}))
""")


def _legacy_python() -> Path:
    forced = os.environ.get("EDGEFL_LEGACY_PYTHON")
    if forced:
        return Path(forced)
    if sys.version_info >= (3, 12):
        reason = "tflite-runtime 2.14 has no wheels for Python >= 3.12"
        if os.environ.get("EDGEFL_REQUIRE_LEGACY"):
            pytest.fail(f"{reason}, and EDGEFL_REQUIRE_LEGACY is set: run the suite on Python 3.11")
        pytest.skip(reason)
    cache = Path(os.environ.get("EDGEFL_CACHE", Path.home() / ".cache" / "edgefl"))
    venv = cache / f"legacy-py{sys.version_info.major}{sys.version_info.minor}"
    python = venv / "bin" / "python"
    marker = venv / "edgefl-requirements.txt"
    wanted = "\n".join(LEGACY_REQUIREMENTS)
    if not python.exists() or not marker.exists() or marker.read_text() != wanted:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *LEGACY_REQUIREMENTS], check=True)
        marker.write_text(wanted)
    return python


def _train(python: Path, backend: str, artifact: Path, data: Path, out: Path) -> dict[str, object]:
    env = {"PYTHONPATH": str(ROOT), "EDGEFL_TFLITE_BACKEND": backend, "PATH": os.environ.get("PATH", "")}
    result = subprocess.run([str(python), "-c", TRAIN_SCRIPT, str(artifact), str(data), str(out)],
                            capture_output=True, text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return report


@pytest.mark.legacy
@pytest.mark.parametrize("family", ["mlp", "cnn"])
def test_litert_and_tflite_runtime_train_the_same(family, export, tmp_path) -> None:
    if family == "mlp":
        spec = ModelSpec("mlp", (10,), 3, hidden=(16,), batch_size=8, optimizer=OptimizerConfig("adam", 0.01))
    else:
        spec = ModelSpec("cnn", (8, 8, 1), 3, filters=(4, 8), hidden=(), batch_size=8,
                         optimizer=OptimizerConfig("sgd", 0.05, momentum=0.9))
    artifact = export(spec)
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, x=rng.normal(size=(60, *spec.input_shape)).astype(np.float32), y=rng.integers(0, 3, 60))

    litert = _train(Path(sys.executable), "ai_edge_litert", artifact, data, tmp_path / "litert.safetensors")
    legacy = _train(_legacy_python(), "tflite_runtime", artifact, data, tmp_path / "legacy.safetensors")

    assert litert["backend"] == "ai_edge_litert" and legacy["backend"] == "tflite_runtime"
    assert str(legacy["numpy"]).startswith("1."), legacy
    for report in (litert, legacy):
        assert float(report["after"]) < float(report["before"]), report
    ours, theirs = load_weights(tmp_path / "litert.safetensors"), load_weights(tmp_path / "legacy.safetensors")
    assert set(ours) == set(Artifact.load(artifact).manifest.weight_names)
    for name in ours:
        np.testing.assert_allclose(theirs[name], ours[name], atol=1e-5, err_msg=name)


def test_forcing_an_unknown_backend_names_the_choices(export, monkeypatch) -> None:
    from edge_runtime.errors import BackendUnavailableError

    monkeypatch.setenv("EDGEFL_TFLITE_BACKEND", "onnx")
    artifact = Artifact.load(export(ModelSpec("mlp", (3,), 2, hidden=(4,))))
    expected = r"unknown TFLite backend 'onnx'.*'ai_edge_litert', 'tflite_runtime'"
    with pytest.raises(BackendUnavailableError, match=expected):
        Trainer(artifact)


def test_a_missing_backend_names_the_extra_to_install() -> None:
    code = textwrap.dedent("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("ai_edge_litert", "tflite_runtime", "tensorflow"):
                    raise ImportError(f"no module named {name}")
        sys.meta_path.insert(0, Block())
        from edge_runtime.backend import select_backend
        from edge_runtime.errors import BackendUnavailableError
        for forced in ("tflite_runtime", None):
            try:
                select_backend(forced)
            except BackendUnavailableError as exc:
                print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")})
    assert result.returncode == 0, result.stderr
    forced, fallback = result.stdout.strip().splitlines()
    assert "'tflite_runtime' (forced) cannot be imported" in forced and "edgefl[legacy]" in forced
    assert fallback.startswith("no TFLite interpreter is installed") and "edgefl[device]" in fallback


QUIET_SCRIPT = textwrap.dedent("""
    import sys
    from edge_runtime import Artifact, Trainer
    from edge_runtime import native_logs
    native_logs.show(sys.argv[2] == "shown")
    for _ in range(2):
        Trainer(Artifact.load(sys.argv[1]))
    print("built", file=sys.stderr)
""")


@pytest.mark.parametrize("shown", [False, True])
def test_litert_notes_its_cpu_delegate_only_when_asked(shown: bool, export) -> None:
    artifact = export(ModelSpec("mlp", (4,), 2, hidden=(4,), batch_size=4, optimizer=OptimizerConfig("sgd", 0.1)))
    done = subprocess.run([sys.executable, "-c", QUIET_SCRIPT, str(artifact), "shown" if shown else "hidden"],
                          capture_output=True, text=True, cwd=ROOT, check=True,
                          env={**os.environ, "EDGEFL_TFLITE_BACKEND": "ai_edge_litert"})
    assert done.stderr.count("XNNPACK delegate") == int(shown)  # LiteRT says it once per process, if at all
    assert done.stderr.rstrip().endswith("built")  # other stderr output is kept
