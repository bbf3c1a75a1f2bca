"""Dependencies point one way (pipeline -> benchmarks -> exporters -> core), checked as CI checks them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import stamps
from tests.conftest import REPO

PACKAGES = ("core", "exporters", "benchmarks", "pipeline")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
IMPORT_CYCLES = REPO.parent / "shared/tools/import_cycles.py"


def _copy(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    for package in PACKAGES:
        shutil.copytree(REPO / package, repo / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(REPO / "pyproject.toml", repo / "pyproject.toml")
    return repo


def _lint(repo: Path) -> subprocess.CompletedProcess:
    # The checked tree is the copy: it comes first on the path, before the installed packages.
    return subprocess.run([str(LINT_IMPORTS), "--config", "pyproject.toml", "--no-cache"], cwd=repo,
                          capture_output=True, text=True, env={"PYTHONPATH": str(repo), "PATH": "/usr/bin:/bin"})


def test_the_layers_hold_and_an_upward_import_inside_a_function_breaks_them(tmp_path):
    repo = _copy(tmp_path)
    kept = _lint(repo)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "pipeline above benchmarks above exporters above core KEPT" in kept.stdout
    # An upward import hidden in a function of the bottom layer, as the old circles were closed.
    with (repo / "core/io.py").open("a", encoding="utf-8") as fh:
        fh.write("\n\ndef _upward():\n    from pipeline import runner\n\n    return runner\n")
    broken = _lint(repo)
    assert broken.returncode == 1, broken.stdout
    assert "pipeline above benchmarks above exporters above core BROKEN" in broken.stdout
    assert "core.io -> pipeline.runner" in broken.stdout


def test_data_knows_no_formats(tmp_path):
    repo = _copy(tmp_path)
    with (repo / "pipeline/data.py").open("a", encoding="utf-8") as fh:
        fh.write("\n\ndef _formats():\n    from exporters import registry\n\n    return registry\n")
    broken = _lint(repo)
    assert broken.returncode == 1 and "the data pipeline knows no formats" in broken.stdout


def test_no_import_cycles_counting_function_local_imports():
    if not IMPORT_CYCLES.is_file():
        pytest.skip(f"{IMPORT_CYCLES} is absent (../shared is not beside this checkout)")
    out = subprocess.run([sys.executable, str(IMPORT_CYCLES)], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and " 0 cycle(s)" in out.stdout, out.stdout


@pytest.mark.parametrize("stage, has, lacks", [
    ("data", ["pipeline.data", "core.contract"], ["exporters", "pipeline.models", "benchmarks"]),
    ("finetune", ["pipeline.models", "pipeline.resume", "core.layers"], ["exporters", "benchmarks"]),
    ("optimize", ["pipeline.compression", "pipeline.stages.finetune", "exporters.registry"],
     ["exporters.tflite", "exporters.convert", "benchmarks"]),
    ("export", ["exporters.tflite", "exporters.onnx_process", "pipeline.trained", "pipeline.compression"],
     ["benchmarks", "pipeline.stages.finetune", "pipeline.runner"]),
    # The worker runs in its own process; the latency module imports it for its name.
    ("bench", ["benchmarks.report", "benchmarks.worker", "exporters.runtimes", "exporters.inspect"],
     ["exporters.tflite", "exporters.convert", "pipeline.models", "pipeline.stages.export"]),
])
def test_a_stage_code_is_its_import_closure(stage, has, lacks):
    closure = stamps.import_closure(f"pipeline.stages.{stage}")
    assert set(has) <= set(closure), sorted(set(has) - set(closure))
    assert not [m for m in closure if any(m == x or m.startswith(x + ".") for x in lacks)]
    # The config is hashed as values (the sections a stage reads), not as code.
    assert "pipeline.config" not in closure and f"pipeline.stages.{stage}" in closure
