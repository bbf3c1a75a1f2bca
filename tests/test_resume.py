"""Stopping fine-tuning with SIGINT or SIGTERM, and resuming it on the next run."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline import stamps
from pipeline.config import load_config
from tests.conftest import REPO, write_config

HEAD_EPOCHS, FINE_TUNE_EPOCHS = 2, 3
# Enough epochs to stop in either phase. Ten unfrozen layers keep phase 2's
# first step (tracing the backbone's gradients) short on 2 cores.
TRAIN = {"batch_size": 16, "head_epochs": HEAD_EPOCHS, "head_lr": 0.01, "fine_tune_epochs": FINE_TUNE_EPOCHS,
         "fine_tune_lr": 0.01, "fine_tune_at": 10, "freeze_batchnorm": False, "batchnorm_momentum": 0.9}
# Fine-tuning runs with op determinism (pipeline.training.seed_everything), so runs
# stopped at different points can be compared epoch by epoch.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
WATCHDOG_S = 600  # only against a hung child; the test reacts to log lines, not to time
SAVED = re.compile(r"\[finetune\] checkpoint saved: (phase (\w+), epoch (\d+) of (\d+))")


def _config(directory: Path) -> Path:
    return write_config(directory / "tiny.yaml", train=TRAIN, export={"formats": ["keras"], "latency_runs": 0})


def _run(config: Path, signal_after: str | None = None, signum: int = signal.SIGTERM) -> tuple[int, str]:
    """``python -m pipeline run``; with ``signal_after``, ``signum`` is sent when a line contains it."""
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", "run", "--config", str(config)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(WATCHDOG_S, proc.kill)
    watchdog.start()
    lines, sent = [], False
    try:
        for line in proc.stdout:
            lines.append(line)
            if signal_after and not sent and signal_after in line:
                proc.send_signal(signum)
                sent = True
        code = proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
    assert signal_after is None or sent, f"never saw {signal_after!r}:\n{''.join(lines)[-3000:]}"
    return code, "".join(lines)


@dataclass
class Stopped:
    """A run stopped during fine-tuning, what it left behind, and the run after it."""

    code: int
    output: str
    left: list[str]  # every path under the build folder, relative to it
    state: dict  # the checkpoint's state.json (the resumed run removes it)
    root: Path
    resumed_code: int
    resumed_output: str
    lock_left: str | None  # the lock file's text right after the stopped run


# name: (signal, exit status, the line after which it is sent, the phase the checkpoint is from)
SCENARIOS = {
    "SIGINT in phase head": (signal.SIGINT, 130, f"checkpoint saved: phase head, epoch 1 of {HEAD_EPOCHS}", "head"),
    "SIGTERM in phase fine_tune": (signal.SIGTERM, 143,
                                   f"checkpoint saved: phase fine_tune, epoch 1 of {FINE_TUNE_EPOCHS}", "fine_tune"),
}


@pytest.fixture(scope="module")
def stopped_runs(tmp_path_factory):
    """Each scenario run once, on first use, and shared by the tests below."""
    cache: dict[str, Stopped] = {}

    def get(name: str) -> Stopped:
        if name not in cache:
            signum, _, after, _ = SCENARIOS[name]
            config = _config(tmp_path_factory.mktemp("resume"))
            root = load_config(config).build_root
            code, output = _run(config, signal_after=after, signum=signum)
            left = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
            lock_left = (root / ".lock").read_text() if (root / ".lock").exists() else None
            state_file = root / "finetune/checkpoint/state.json"
            state = json.loads(state_file.read_text()) if state_file.is_file() else {}
            resumed_code, resumed_output = _run(config)
            cache[name] = Stopped(code, output, left, state, root, resumed_code, resumed_output, lock_left)
        return cache[name]

    return get


def _last_saved(output: str) -> re.Match:
    saved = list(SAVED.finditer(output))
    assert saved, output[-3000:]
    return saved[-1]


@pytest.mark.parametrize("name", SCENARIOS)
def test_stop_during_fine_tuning_keeps_a_checkpoint_and_publishes_nothing(stopped_runs, name):
    run = stopped_runs(name)
    _, exit_code, _, phase = SCENARIOS[name]
    assert run.code == exit_code, run.output[-3000:]
    last = _last_saved(run.output)
    assert last.group(2) == phase
    message = [line for line in run.output.splitlines() if line.startswith("interrupted:")]
    assert message == [f"interrupted: fine-tuning stopped; its checkpoint after {last.group(1)} is in "
                       f"{run.root / 'finetune/checkpoint'}, and the next run resumes from it."]
    assert (run.state.get("phase"), run.state.get("epoch")) == (phase, int(last.group(3)))
    assert "data/stamp.json" in run.left  # the stage that finished keeps its stamp
    published = [p for p in run.left if p.startswith(("artifacts", "export"))
                 or p in ("finetune/stamp.json", "finetune/model.keras", "finetune/history.json")]
    assert published == []
    # No temporary file or half-written save is left for a later run to find; the one hidden file is the build
    # folder's lock (pipeline.lock), and a run that stopped on a signal left it naming no one.
    assert [p for p in run.left if any(part.startswith(".") for part in Path(p).parts) and p != ".lock"] == []
    assert run.lock_left == ""


@pytest.mark.parametrize("name", SCENARIOS)
def test_next_run_resumes_from_the_checkpoint_and_finishes(stopped_runs, name):
    run = stopped_runs(name)
    assert run.resumed_code == 0, run.resumed_output[-3000:]
    last = _last_saved(run.output)
    phase, epoch, epochs = last.group(2), int(last.group(3)), int(last.group(4))
    if epoch < epochs:
        resume_at = f"phase {phase}, epoch {epoch + 1} of {epochs}"
    else:  # the stop came right after a phase's last epoch: the next phase starts
        assert phase == "head"
        resume_at = f"phase fine_tune, epoch 1 of {FINE_TUNE_EPOCHS}"
    assert f"[finetune] resuming from checkpoint: {resume_at}\n" in run.resumed_output
    assert "[data] up to date, skipped" in run.resumed_output
    assert "ran finetune, export" in run.resumed_output
    for stage in ("data", "finetune", "export"):
        assert (run.root / stage / "stamp.json").is_file(), stage
    assert (run.root / "artifacts/tiny.keras").is_file()
    assert not (run.root / "finetune/checkpoint").exists()
    history = json.loads((run.root / "finetune/history.json").read_text())
    assert len(history["head"]["loss"]) == HEAD_EPOCHS and len(history["fine_tune"]["loss"]) == FINE_TUNE_EPOCHS


def test_resumed_runs_train_as_an_uninterrupted_run_would(stopped_runs):
    """Every epoch and the final weights agree, bit for bit, between the two stopped-and-resumed runs.

    The phase-head run trained head epoch 2 onwards after its resume, and the
    phase-fine_tune run trained everything up to fine-tune epoch 1 in one go.
    So equality means that a resume in either phase continues exactly as an
    uninterrupted run does (the weights, the optimizer and its schedule, the
    shuffle order).
    """
    from core.loader import load_classifier as load_model

    runs = [stopped_runs(name) for name in SCENARIOS]
    histories = [json.loads((r.root / "finetune/history.json").read_text()) for r in runs]
    assert histories[0]["head"] == histories[1]["head"]
    assert histories[0]["fine_tune"] == histories[1]["fine_tune"]
    first, second = (load_model(r.root / "finetune/model.keras").get_weights() for r in runs)
    assert len(first) == len(second) and all((a == b).all() for a, b in zip(first, second))


@pytest.mark.parametrize("change", ["train.head_lr=0.02", "data file", "unreadable"])
def test_checkpoint_from_other_inputs_is_discarded(tmp_path, caplog, change):
    from core.keras_compat import keras
    from pipeline.resume import TrainingCheckpoint
    from pipeline.stages import finetune

    config = _config(tmp_path)
    cfg = load_config(config)
    for rel in finetune.STAGE.deps:  # stand-ins: the inputs are only hashed here
        (cfg.build_root / rel).parent.mkdir(parents=True, exist_ok=True)
        (cfg.build_root / rel).write_text(rel)
    directory = cfg.build_root / "finetune/checkpoint"

    def checkpoint(cfg):
        return TrainingCheckpoint(directory, stamps.stage_inputs(finetune.STAGE, cfg, cfg.build_root), "finetune")

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    checkpoint(cfg).save({"phase": "head", "epoch": 1}, {"model": model}, {})
    assert checkpoint(cfg).load()["epoch"] == 1  # same inputs: kept

    if change == "data file":
        (cfg.build_root / "data/train.npz").write_text("other images")
        reason = "input data/train.npz changed"
    elif change == "unreadable":
        (directory / "state.json").write_text("{")
        reason = "it cannot be read"
    else:
        cfg = load_config(config, [change])
        reason = "config section(s) train changed"
    with caplog.at_level(logging.INFO, logger="pipeline"):
        assert checkpoint(cfg).load() is None
    assert f"discarding checkpoint {directory}" in caplog.text and reason in caplog.text
    assert not directory.exists()


def test_sigterm_outside_fine_tuning_raises_with_status_143():
    from pipeline.interrupt import Interrupted, terminate_raises

    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as stopped, terminate_raises():
        signal.raise_signal(signal.SIGTERM)
    assert stopped.value.exit_code == 143 and "run again to continue" in str(stopped.value)
    assert signal.getsignal(signal.SIGTERM) is before


def test_fine_tuning_defers_the_first_signal_and_not_the_second():
    from pipeline.interrupt import Interrupted, deferred

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with deferred() as stop:
        stop.check()  # nothing received yet
        signal.raise_signal(signal.SIGINT)  # recorded only: the batch in progress ends first
        with pytest.raises(Interrupted) as first:
            stop.check()
        with pytest.raises(Interrupted) as second:
            signal.raise_signal(signal.SIGTERM)
    assert (first.value.exit_code, second.value.exit_code) == (130, 143)
    assert {s: signal.getsignal(s) for s in before} == before


OPTIMIZE_SAVED = re.compile(r"\[optimize\] checkpoint saved: ([\w-]+), epoch (\d+)")


@pytest.mark.parametrize("with_pruning", [pytest.param(True, marks=pytest.mark.slow), False],
                         ids=["pruning-then-qat", "qat"])
def test_a_stop_during_qat_resumes_from_its_epoch_and_skips_the_finished_phases(tmp_path, with_pruning):
    """Issue 19: pruning and QAT checkpoint every epoch; Ctrl-C during QAT loses that epoch only."""
    formats = ["keras", "tflite-pruned-int8", "tflite-qat-int8"] if with_pruning else ["keras", "tflite-qat-int8"]
    config = write_config(tmp_path / "tiny.yaml", train={**TRAIN, "head_epochs": 1, "fine_tune_epochs": 1},
                          optimize={"prune": {"epochs": 1}, "qat": {"epochs": 2}},
                          export={"formats": formats, "latency_runs": 0, "repair": False, "on_budget_fail": "warn"})
    code, first = _run(config, signal_after="[optimize] checkpoint saved: qat, epoch 1", signum=signal.SIGINT)
    assert code == 130, first[-3000:]
    done = ["prune", "pruned-qat"] if with_pruning else []
    # Pruning's one epoch and the sparsity-preserving QAT's two (optimize.qat.epochs), then QAT's first.
    finished = [("prune", "1"), ("pruned-qat", "1"), ("pruned-qat", "2")] if with_pruning else []
    assert OPTIMIZE_SAVED.findall(first) == finished + [("qat", "1")]
    root = tmp_path / "build" / "tiny"
    state = json.loads((root / "optimize/checkpoint/state.json").read_text())
    assert state["done"] == done and (state["phase"], state["epoch"]) == ("qat", 1)
    assert not (root / "optimize/stamp.json").exists()
    code, second = _run(config)
    assert code == 0, second[-3000:]
    for phase in done:
        assert f"[optimize] {phase}: done by the run that was stopped" in second
    assert "[optimize] resuming from checkpoint: qat, epoch 2 of 2" in second
    assert OPTIMIZE_SAVED.findall(second) == [("qat", "2")]  # one epoch trained, not all of them again
    report = json.loads((root / "optimize/report.json").read_text())
    assert len(report["qat"]["val_accuracy"]) == 2
    assert not with_pruning or len(report["pruning"]["val_accuracy"]) == 1
    assert not (root / "optimize/checkpoint").exists()  # a finished stage leaves no checkpoint
