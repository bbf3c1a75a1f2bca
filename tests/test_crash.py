"""Crash consistency (issue 19): ``python -m pipeline run`` killed with SIGKILL at points spread across
the data, finetune, optimize and export stages, and during a forced re-export of a finished build.

After each kill: ``verify`` passes on whatever bundle ``artifacts/`` holds (or there is none), every
stamp's outputs exist with the checksums it recorded, and the next run finishes with artifacts
byte-identical to those of one uninterrupted run. The whole set is slow; CI runs one re-export point
on a copy of the shared tiny build (``test_a_killed_re_export_*``).

    .venv/bin/python -m pytest -m slow tests/test_crash.py -s    # prints the table of points and outcomes
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from core import layout
from core.io import sha256_file
from pipeline import manifest
from tests.conftest import REPO, TINY_SECTIONS, copy_build, write_config

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
WATCHDOG_S = 900  # only against a hung child: kills follow log lines
# Every stage that trains or converts: two epochs a phase so that a kill can land between epochs,
# QAT for the optimize stage, and formats that use each converter (TFLite from Keras and from the QAT
# model, tf2onnx's child process, onnxruntime's quantizer). The model need not learn: only bytes are compared.
CRASH_SECTIONS = {
    "train": {"batch_size": 16, "head_epochs": 2, "head_lr": 0.01, "fine_tune_epochs": 2, "fine_tune_lr": 0.01,
              "fine_tune_at": 10, "freeze_batchnorm": False, "batchnorm_momentum": 0.9},
    "optimize": {"qat": {"epochs": 2}},
    "export": {"formats": ["keras", "tflite-fp32", "tflite-int8", "tflite-qat-int8", "onnx-fp32", "onnx-int8"],
               "latency_runs": 0, "repair": False, "on_budget_fail": "warn"},
}
SNAPSHOTS = ("data", "finetune", "optimize")  # build folders made with `run --through STAGE`


@dataclass(frozen=True)
class Point:
    """Where a run is killed: ``delay`` seconds after the first output line containing ``after``."""

    start: str  # the build folder it starts from: "empty", a stage of SNAPSHOTS, or "done" (a finished build)
    after: str
    delay: float = 0.0
    force: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        force = f" (run --force {','.join(self.force)})" if self.force else ""
        return f"from {self.start}{force}: {self.delay:g} s after '{self.after}'"


POINTS = [
    # data
    Point("empty", "[data] running"),
    Point("empty", "[data] 10 classes"),
    Point("empty", "[data] done"),
    # finetune
    Point("data", "[finetune] running"),
    Point("data", "[finetune] head: 2 epoch(s)", 0.5),
    Point("data", "checkpoint saved: phase head, epoch 1 of 2"),
    Point("data", "checkpoint saved: phase head, epoch 2 of 2"),
    Point("data", "checkpoint saved: phase fine_tune, epoch 1 of 2", 0.2),
    Point("data", "[finetune] restored best weights"),
    Point("data", "[finetune] trained weights sha256"),
    # optimize
    Point("finetune", "[optimize] running"),
    Point("finetune", "[optimize] running", 3.0),
    Point("finetune", "activation ranges start from"),
    Point("finetune", "[optimize] quantization-aware training", 2.0),
    Point("finetune", "checkpoint saved: qat, epoch 1"),
    Point("finetune", "checkpoint saved: qat, epoch 2"),
    # export
    Point("optimize", "[export] running"),
    Point("optimize", "[export] Keras reference"),
    Point("optimize", "[export] keras "),
    Point("optimize", "[export] tflite-fp32 "),
    Point("optimize", "[export] tflite-int8 "),
    Point("optimize", "[export] tflite-int8 ", 3.0),
    Point("optimize", "[export] tflite-qat-int8 "),
    Point("optimize", "[export] onnx-fp32 "),
    Point("optimize", "files with sha256"),
    # a forced re-export over a published bundle
    Point("done", "[export] tflite-int8 ", force=("export",)),
    Point("done", "files with sha256", force=("export",)),
]


def _run(config: Path, force: tuple[str, ...] = (), through: Optional[str] = None,
         kill: Optional[Point] = None) -> tuple[int, str]:
    """``python -m pipeline run`` in its own process group; with ``kill``, the group gets SIGKILL at that point."""
    command = [sys.executable, "-m", "pipeline", "run", "--config", str(config)]
    command += [a for stage in force for a in ("--force", stage)] + (["--through", through] if through else [])
    proc = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    killed = threading.Event()

    def kill_group():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            killed.set()

    timers = [threading.Timer(WATCHDOG_S, kill_group)]
    timers[0].start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if kill and len(timers) == 1 and kill.after in line:
                timers.append(threading.Timer(kill.delay, kill_group))
                timers[-1].start()
        code = proc.wait()
    finally:
        for timer in timers:
            timer.cancel()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = "".join(lines)
    if kill:
        assert len(timers) == 2, f"never saw {kill.after!r}:\n{output[-3000:]}"
        assert killed.is_set() and code == -signal.SIGKILL, \
            f"{kill.name}: the run ended (exit {code}) before the kill; move the point\n{output[-3000:]}"
    return code, output


def artifact_digests(root: Path) -> dict[str, str]:
    folder = root / layout.ARTIFACTS
    return {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}


def consistency_problems(root: Path) -> tuple[str, list[str]]:
    """What a killed run left: (a description of the bundle, problems). A bundle must verify; a stamp's
    outputs must be there with the checksums it recorded."""
    problems = []
    if (root / layout.ARTIFACTS).is_dir():
        result = manifest.verify(root)
        problems += [f"verify: {p}" for p in result.problems]
        bundle = f"bundle of {len(result.checked) + len(result.warned)} files, verify " + (
            "FAILED" if result.problems else "ok")
    else:
        bundle = "no bundle"
    for stamp_file in sorted(root.glob("*/stamp.json")):
        stamp = json.loads(stamp_file.read_text())
        for rel, digest in stamp["outs"].items():
            if not (root / rel).is_file():
                problems.append(f"{stamp_file.relative_to(root)}: output {rel} missing")
            elif sha256_file(root / rel) != digest:
                problems.append(f"{stamp_file.relative_to(root)}: output {rel} is not what the stamp recorded")
    return bundle, problems


def _last_stage_line(output: str) -> str:
    ours = [line.split(" ", 1)[1] for line in output.splitlines() if line[:2].isdigit() and " [" in line]
    return ours[-1][:90] if ours else "(no line)"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One uninterrupted run's artifacts, and build folders snapshotted after data, finetune, optimize and the end."""
    single = tmp_path_factory.mktemp("uninterrupted")
    config = write_config(single / "crash.yaml", name="crash", **CRASH_SECTIONS)
    code, output = _run(config)
    assert code == 0, output[-3000:]
    expected = artifact_digests(single / "build" / "crash")
    assert len(expected) == len(CRASH_SECTIONS["export"]["formats"]) + 2  # and labels.txt, manifest.json

    staged = tmp_path_factory.mktemp("staged")
    config = write_config(staged / "crash.yaml", name="crash", **CRASH_SECTIONS)
    snapshots = {"empty": None}
    for stage in (*SNAPSHOTS, None):
        code, output = _run(config, through=stage)
        assert code == 0, output[-3000:]
        snapshot = tmp_path_factory.mktemp(f"after-{stage or 'done'}")
        shutil.copytree(staged / "build", snapshot / "build", symlinks=True)
        snapshots[stage or "done"] = snapshot / "build"
    # Stage by stage in four processes, the same files as in one.
    assert artifact_digests(snapshots["done"] / "crash") == expected
    return expected, snapshots


def _prepared(point: Point, snapshots: dict, folder: Path) -> tuple[Path, Path]:
    config = write_config(folder / "crash.yaml", name="crash", **CRASH_SECTIONS)
    if snapshots[point.start] is not None:
        shutil.copytree(snapshots[point.start], folder / "build", symlinks=True)
    return config, folder / "build" / "crash"


OUTCOMES: list[str] = []


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS, ids=[f"{i:02d}" for i in range(len(POINTS))])
def test_a_run_killed_anywhere_leaves_a_verifiable_state_and_resumes_to_the_same_files(point, uninterrupted,
                                                                                      tmp_path):
    expected, snapshots = uninterrupted
    config, root = _prepared(point, snapshots, tmp_path)
    _, output = _run(config, force=point.force, kill=point)
    bundle, problems = consistency_problems(root)
    if point.start == "done":  # the previous bundle stays whole until the new one replaces it
        assert artifact_digests(root) == expected, "the previous bundle changed"
    code, resumed = _run(config)
    ran = resumed.strip().splitlines()[-1].split(": ran ")[-1] if code == 0 else f"exit {code}"
    same = artifact_digests(root) == expected
    OUTCOMES.append(f"| {point.name} | {_last_stage_line(output)} | {bundle} | {len(problems)} | {ran} | "
                    f"{'identical' if same else 'DIFFERENT'} |")
    assert problems == [], problems
    assert code == 0, resumed[-3000:]
    assert "[lock] took over" in resumed  # the killed run's lock, noticed
    assert same, {name: digest[:12] for name, digest in artifact_digests(root).items()}


@pytest.fixture(scope="module", autouse=True)
def _print_outcomes():
    yield
    if OUTCOMES:
        print("\n| point | last line before the kill | after the kill | problems | the next run | artifacts |\n"
              "|---|---|---|---|---|---|\n" + "\n".join(OUTCOMES))


# ---------------------------------------------------------------------------------------------
# CI: two points of a forced re-export, on a copy of the shared tiny build


# In CI, the kill after the new bundle is complete and before it is swapped in; the other point is slow.
@pytest.mark.parametrize("after", [pytest.param("[export] tflite-int8 ", marks=pytest.mark.slow), "files with sha256"])
def test_a_killed_re_export_keeps_the_previous_bundle_and_the_next_run_makes_the_same_files(tiny_build, tmp_path,
                                                                                           after):
    cfg, config = copy_build(tiny_build, tmp_path)
    root = cfg.build_root
    before = artifact_digests(root)
    assert before, "the tiny build has no bundle"
    # The kill follows a log line read through a pipe; on a loaded 2-core CI host the run once finished the swap
    # and wrote its stamp before the kill arrived. Such a late kill is a lost race, not a result: try again.
    for _ in range(3):
        _run(config, force=("export",), kill=Point("done", after, force=("export",)))
        bundle, problems = consistency_problems(root)
        assert problems == [] and bundle.endswith("verify ok"), (bundle, problems)
        assert artifact_digests(root) == before
        if not (root / "export/stamp.json").exists():
            break
    assert not (root / "export/stamp.json").exists()  # the killed export is stale: the next run redoes it
    code, resumed = _run(config)
    assert code == 0, resumed[-3000:]
    assert "[export] running (no completed run: the last one failed or was stopped)" in resumed
    assert artifact_digests(root) == before
    assert consistency_problems(root) == (bundle, [])
