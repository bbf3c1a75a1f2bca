"""`pip install .` gives a `mobile-export` command that works from any folder with the shipped configs (issue 18).

The venv is fresh and the package is installed into it from a copy of the sources; its
dependencies are the project venv's (a `.pth` line puts that site-packages folder on the
path), so the test needs no network and does not reinstall TensorFlow.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("core", "exporters", "benchmarks", "pipeline")
# Small enough for the test: the shipped quickstart config, a few images and one short epoch.
TINY = ["data.limit_per_class=12", "train.head_epochs=1", "train.fine_tune_epochs=1",
        "export.formats=[keras,tflite-fp32,onnx-fp32]", "export.latency_runs=0", "benchmark.targets=[phone-little]",
        "benchmark.max_seconds=1", "benchmark.blocks=1", "benchmark.self_check_seconds=0"]


def _install(tmp: Path) -> Path:
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for package in PACKAGES:  # a copy: building in the checkout would leave build/ and egg-info there
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site = Path(subprocess.run([env_dir / "bin/python", "-c", where], capture_output=True, text=True,
                               check=True).stdout.strip())
    (site / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([env_dir / "bin/python", "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", str(source)], check=True, capture_output=True, text=True, timeout=600)
    return env_dir / "bin" / "mobile-export"


def test_mobile_export_runs_the_shipped_quickstart_from_another_folder(tmp_path):
    command = _install(tmp_path)
    elsewhere = tmp_path / "somewhere_else"
    elsewhere.mkdir()
    help_text = subprocess.run([command, "--help"], cwd=elsewhere, capture_output=True, text=True, timeout=300)
    assert help_text.returncode == 0 and help_text.stdout.startswith("usage: mobile-export"), help_text.stderr
    sets = [arg for s in TINY for arg in ("--set", s)]
    run = subprocess.run([command, "run", "--config", "quickstart", *sets], cwd=elsewhere, capture_output=True,
                         text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ran data, finetune, export, bench" in run.stdout
    build = elsewhere / "build" / "quickstart"
    for made in ("quickstart_fp32.tflite", "quickstart_fp32.onnx"):  # the ONNX one converts in a child process
        assert (build / "artifacts" / made).is_file(), made
    assert (build / "bench" / "results.json").is_file()  # the shipped targets file was found
    # The installed copy ran, not the checkout's.
    origin = subprocess.run([command.parent / "python", "-c", "import pipeline; print(pipeline.__file__)"],
                            cwd=elsewhere, capture_output=True, text=True, check=True).stdout
    assert str(tmp_path / "venv") in origin and str(REPO) not in origin
    verify = subprocess.run([command, "verify", str(build)], cwd=elsewhere, capture_output=True, text=True,
                            timeout=300)
    assert verify.returncode == 0 and "verify passed" in verify.stdout, verify.stdout + verify.stderr
    missing = subprocess.run([command, "status", "--config", "quickstrat"], cwd=elsewhere, capture_output=True,
                             text=True, timeout=300)
    assert missing.returncode == 2 and "quickstart" in missing.stderr  # the shipped names are offered
