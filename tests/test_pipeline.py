"""The whole pipeline on tiny real data: artifacts, results.json, stage caching, budget failures."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from exporters import tflite
from exporters.registry import TFLiteFP32, TFLiteInt8
from pipeline import manifest, runner
from pipeline.config import load_config
from core.errors import BudgetError, ExportError
from tests.conftest import REPO, SALTED_MAX_PIXELS, TINY_SECTIONS, copy_build, run_cli, write_config

RESULT_KEYS = {"name", "format", "file", "bytes", "gzip_bytes", "accuracy", "validation", "runtime", "precision",
               "sha256", "status", "sparsity", "latency_ms", "latency_ratio_to_keras"}


def _results(cfg) -> dict:
    return json.loads((cfg.build_root / "export/results.json").read_text())


def test_digits_lifecycle_exports_validates_and_caches(tmp_path, tiny_build):
    # The shared tiny build ran data, finetune and export from nothing (conftest asserts it);
    # its copy, asked for the default formats with latency, re-runs export alone.
    cfg, path = copy_build(tiny_build, tmp_path,
                           export={"formats": ["keras", "tflite-fp32", "onnx-fp32"], "latency_runs": 5})
    assert runner.run(cfg, str(path)) == ["export"]

    artifacts = cfg.build_root / "artifacts"
    assert sorted(p.name for p in artifacts.iterdir()) == [
        "labels.txt", "manifest.json", "tiny.keras", "tiny_fp32.onnx", "tiny_fp32.tflite"]
    assert (artifacts / "labels.txt").read_text().splitlines() == [str(i) for i in range(10)]
    results = _results(cfg)
    by_format = {a["format"]: a for a in results["artifacts"]}
    assert list(by_format) == ["keras", "tflite-fp32", "onnx-fp32"]
    for fmt, entry in by_format.items():
        assert RESULT_KEYS <= set(entry), fmt
        assert entry["status"] == "passed" and entry["bytes"] == (artifacts / entry["file"]).stat().st_size
        assert entry["validation"]["top1_agreement"] >= 0.995 and entry["validation"]["max_abs_diff"] <= 1e-4
        assert entry["validation"]["images"] == results["dataset"]["test_images"] > 0
    assert by_format["keras"]["accuracy"]["top1"] == results["reference"]["accuracy"]["top1"]
    from core.host import available_cpus  # export.threads null: validation uses every core this process may
    assert results["host"]["validation_threads"] == available_cpus()
    history = json.loads((cfg.build_root / "finetune/history.json").read_text())
    epochs = TINY_SECTIONS["train"]["fine_tune_epochs"]
    assert not history["head"].get("val_accuracy") and len(history["fine_tune"]["val_accuracy"]) == epochs

    # Nothing changed: nothing runs.
    assert runner.run(cfg, str(path)) == []
    assert all(reason is None for _, reason in runner.status(cfg))

    # A train key re-runs finetune and what follows it, not data.
    changed = load_config(path, ["train.head_epochs=2"])
    assert dict(runner.status(changed)) == {
        "data": None, "finetune": "config section(s) train changed", "export": "after finetune re-runs"}

    # An export key re-runs export only; a deleted artifact is noticed too.
    fewer = load_config(path, ["export.formats=[keras, tflite-fp32]"])
    assert runner.run(fewer, str(path)) == ["export"]
    assert not (artifacts / "tiny_fp32.onnx").exists()
    (artifacts / "tiny_fp32.tflite").unlink()
    assert dict(runner.status(fewer))["export"] == "output artifacts/tiny_fp32.tflite missing"
    assert runner.run(fewer, str(path)) == ["export"]


@pytest.fixture(scope="session")  # not torn down when another module runs between two users
def budget_dir(tmp_path_factory, tiny_build):
    """The shared tiny build's data and fine-tuned model, without its exported files."""
    import shutil

    folder = tmp_path_factory.mktemp("budget")
    cfg, _ = copy_build(tiny_build, folder)
    shutil.rmtree(cfg.build_root / "artifacts")
    shutil.rmtree(cfg.build_root / "export")
    return folder


# The other budget kinds (agreement, max |dp|) fail through the same path: test_exporters checks
# compare() for them; the slow case runs the fp32 one end to end.
@pytest.mark.parametrize("exporter, attr, file, reason", [
    pytest.param(TFLiteFP32, "max_abs_diff", "tiny_fp32.tflite", "max |dp|", marks=pytest.mark.slow),
    (TFLiteInt8, "max_accuracy_drop_pp", "tiny_int8.tflite", "top-1 dropped"),
])
def test_file_over_budget_fails_the_run_and_is_not_published(budget_dir, monkeypatch, exporter, attr, file, reason):
    # Both cases start from the shared tiny build's data and fine-tuned model: only export runs.
    path = write_config(budget_dir / "tiny.yaml", **{**TINY_SECTIONS, "export": {"formats": [exporter.name],
                                                                                 "latency_runs": 0}})
    cfg = load_config(path)
    # No file can meet this: for the accuracy budget, even the best end of the 95% interval of the
    # drop (about -1.4 pp on 270 test images) must be over it, or the verdict is "unproven".
    monkeypatch.setattr(exporter, attr, -1.0 if attr == "max_abs_diff" else -50.0)
    with pytest.raises(BudgetError) as err:
        runner.run(cfg, str(path))
    staged = cfg.build_root / "export/staging" / file
    assert str(staged) in str(err.value) and reason in str(err.value)
    assert staged.exists(), "the rejected file is kept for inspection"
    assert not (cfg.build_root / "artifacts" / file).exists()
    assert not (cfg.build_root / "export/stamp.json").exists()
    entry = _results(cfg)["artifacts"][0]
    assert entry["status"] == "failed" and reason in entry["error"]
    # warn publishes it and marks it; earlier stages keep their stamps, so only export re-runs.
    warn = load_config(path, ["export.on_budget_fail=warn"])
    assert dict(runner.status(warn))["export"] == "no completed run: the last one failed or was stopped"
    assert runner.run(warn, str(path)) == ["export"]
    assert (cfg.build_root / "artifacts" / file).exists()
    entry = _results(cfg)["artifacts"][0]
    assert entry["status"] == "warned" and reason in entry["error"]
    checked = manifest.verify(cfg.build_root)  # verify does not call a warned file plain "ok"
    assert checked.ok and not [line for line in checked.checked if line.startswith(file)]
    (line,) = [line for line in checked.warned if line.startswith(file)]
    assert "(over budget: top-1 " in line and "export.on_budget_fail: warn" in line
    if exporter is TFLiteInt8:  # the default int8 input: the camera's bytes, MobileNetV2's normalization folded in
        assert entry["input"]["dtype"] == "uint8" and entry["input"]["feed"] == "raw RGB pixel bytes"


def test_a_failed_re_export_names_the_format_and_leaves_the_previous_bundle_whole(tmp_path, tiny_build, monkeypatch):
    def refuse(self, model, path, ctx):
        raise ValueError("Quantization range is degenerate\n(min == max)")

    cfg, path = copy_build(tiny_build, tmp_path, export={"formats": ["keras", "tflite-fp32", "onnx-fp32"],
                                                         "latency_runs": 0})
    artifacts = cfg.build_root / "artifacts"
    before = {p.name: p.read_bytes() for p in artifacts.iterdir()}  # the tiny build's own bundle
    assert manifest.verify(artifacts).ok and "tiny_fp32.tflite" in before
    monkeypatch.setattr(tflite.TFLiteFP32, "export", refuse)
    with pytest.raises(ExportError) as err:
        runner.run(cfg, str(path), force=("export",))
    message = str(err.value)
    assert "\n" not in message and message.startswith("1 format(s) could not be converted")
    assert "tflite-fp32 (conversion failed (ValueError: Quantization range is degenerate (min == max)))" in message
    assert "drop those formats from export.formats" in message and "nothing was published" in message
    # artifacts/ is the previous bundle, byte for byte, and it verifies; the new files wait beside it.
    assert {p.name: p.read_bytes() for p in artifacts.iterdir()} == before
    assert manifest.verify(artifacts).ok
    waiting = cfg.build_root / "export/bundle.next"
    assert sorted(p.name for p in waiting.iterdir()) == ["labels.txt", "manifest.json", "tiny.keras", "tiny_fp32.onnx"]
    assert not list((cfg.build_root / "export").rglob("*.tflite*"))  # no half-written file either
    by_format = {a["format"]: a for a in _results(cfg)["artifacts"]}
    assert by_format["tflite-fp32"]["status"] == "failed" and by_format["tflite-fp32"]["file"] is None
    assert by_format["onnx-fp32"]["status"] == "passed"
    assert not (cfg.build_root / "export/stamp.json").exists()  # the next run tries again


def test_image_folder_source_end_to_end(tmp_path, salted_folder):
    """A real-world folder: bad files of every kind are skipped and listed, odd ones converted, the rest trained on."""
    folder, unusable = salted_folder
    path = write_config(
        tmp_path / "photos.yaml", name="photos",
        data={"source": "folder", "path": str(folder), "image_size": 32, "seed": 1, "max_image_pixels": SALTED_MAX_PIXELS,
              "val_fraction": 0.25, "test_fraction": 0.25, "augment": ["horizontal_flip", "crop"]},
        train={"batch_size": 8, "head_epochs": 1, "head_lr": 0.01, "fine_tune_epochs": 1, "fine_tune_lr": 0.001,
               "fine_tune_at": 10, "label_smoothing": 0.1, "lr_schedule": "constant"},
        export={"formats": ["keras", "onnx-fp32"]},
    )
    cfg = load_config(path)
    assert runner.run(cfg, str(path)) == ["data", "finetune", "export"]
    classes = ["apple", "flor_ñandú", "leaf", "sky"]
    assert (cfg.build_root / "artifacts/labels.txt").read_text(encoding="utf-8").splitlines() == classes
    results = _results(cfg)
    assert results["dataset"]["classes"] == classes
    skipped = {item["file"]: item["reason"] for item in results["data"]["skipped"]}
    assert sorted(skipped) == sorted(unusable) and all(word in skipped[f] for f, word in unusable.items())
    assert results["data"]["cross_class_duplicates"] == 1
    history = json.loads((cfg.build_root / "finetune/history.json").read_text())
    assert history["unfrozen_layers"] == 10
    assert all(a["status"] == "passed" for a in results["artifacts"])


@pytest.mark.slow  # ~2.5 min on 2 cores; the ResNet50 model itself is built and checked in test_models
def test_resnet50_goes_through_every_stage(tmp_path):
    path = write_config(
        tmp_path / "resnet.yaml", name="resnet",
        model={"backbone": "resnet50", "weights": "none", "dropout": 0.0},
        data={"source": "digits", "image_size": 32, "limit_per_class": 10, "seed": 2, "augment": [],
              "val_fraction": 0.2, "test_fraction": 0.2},
    )
    cfg = load_config(path)
    assert runner.run(cfg, str(path)) == ["data", "finetune", "export"]
    results = _results(cfg)
    assert [a["format"] for a in results["artifacts"]] == ["keras", "tflite-fp32", "onnx-fp32"]
    assert all(a["status"] == "passed" for a in results["artifacts"])
    assert results["model"]["backbone"] == "resnet50"
    assert results["artifacts"][1]["bytes"] > 50_000_000  # a real ResNet50, not a stand-in
    assert results["preprocessing"]["in_graph_normalization"]["channel_order"] == "BGR"


# What TensorFlow, absl, the converters and matplotlib printed on every command (issue 18), written
# out here rather than taken from pipeline.console, so that this test can fail.
LIBRARY_NOISE = ("All log messages before absl::InitializeLog", "oneDNN custom operations are on",
                 "Could not find cuda drivers", "cpu_feature_guard", "Sharding callback duration",
                 "generated new fontManager", "fully_quantize:", "Statistics for quantized inputs were expected",
                 "Increased scale[", "Using new converter", "Created TensorFlow Lite XNNPACK delegate",
                 "Axis 1 is out-of-range")


def test_cli_second_run_says_nothing_ran_and_status_agrees(tmp_path):
    # The int8 formats bring the converters' chatter: the quiet console must leave all of it out.
    path = write_config(tmp_path / "tiny.yaml", export={"formats": ["keras", "tflite-int8", "onnx-int8"],
                                                        "repair": False, "on_unproven": "warn",
                                                        "on_budget_fail": "warn", "latency_runs": 0})
    first = run_cli("run", "--config", str(path))
    assert first.returncode == 0, first.stderr[-2000:]
    printed = first.stdout + first.stderr
    assert "[export] tflite-int8" in printed and "[export] onnx-int8" in printed  # our lines are there
    assert [n for n in LIBRARY_NOISE if n in printed] == [], printed[-3000:]
    # Each epoch is one line of ours, before that epoch's checkpoint line; none of Keras's, which went to stdout
    # and reached a build log out of order.
    assert "Epoch 1/" not in printed
    lines = first.stderr.splitlines()
    summary = next(i for i, line in enumerate(lines) if re.search(
        r"\[finetune\] head epoch 1 of \d+: loss [\d.]+, accuracy [\d.]+, val_loss [\d.]+, val_accuracy [\d.]+, "
        r"[\d.]+ s$", line))
    assert any("[finetune] checkpoint saved: phase head, epoch 1 of" in line for line in lines[summary + 1:])
    root = tmp_path / "build" / "tiny"
    kept = (root / "tool-output.log").read_text()
    assert "oneDNN custom operations are on" in kept and "fully_quantize:" in kept  # left out, not lost
    second = run_cli("run", "--config", str(path), "--verbose")  # --verbose: everything, as the libraries print it
    assert second.returncode == 0 and "ran no stage" in second.stdout
    assert "up to date, skipped" in second.stderr
    assert "oneDNN custom operations are on" in second.stderr
    status = run_cli("status", "--config", str(path), "--set", "train.fine_tune_lr=0.002")
    lines = dict(line.split(None, 1) for line in status.stdout.splitlines())
    assert lines["data"] == "up to date" and lines["finetune"].startswith("stale: config section")
    assert lines["export"] == "stale: after finetune re-runs"


def test_help_lists_every_format_in_aligned_columns():
    """`python -m pipeline --help` ends with the format table; the longest name must not push its row out of line."""
    from exporters import registry

    out = subprocess.run([sys.executable, "-m", "pipeline", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120).stdout
    table = out.split("export formats (export.formats):\n")[1].splitlines()
    rows = {line.split()[0]: line for line in table if line.strip()}
    runtimes = {row["format"]: row["runtime"] for row in registry.table()}
    assert list(rows) == list(runtimes)
    columns = {line.index(" " + runtimes[name] + " ", line.index(name) + len(name)) for name, line in rows.items()}
    assert len(columns) == 1, "the runtime column is not aligned"


def _started(path, proc, timeout=120):
    """Wait until the run ``proc`` holds the build folder's lock (its PID is in the lock file)."""
    import time

    lock = path.parent / "build" / "tiny" / ".lock"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if lock.exists() and f'"pid": {proc.pid}' in lock.read_text():
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    raise AssertionError("the first run never took the lock")


def test_one_run_per_build_folder_and_a_killed_runs_lock_is_taken_over(tmp_path):
    import os
    import signal

    path = write_config(tmp_path / "tiny.yaml", export={"formats": ["keras"], "latency_runs": 0})
    command = [sys.executable, "-m", "pipeline", "run", "--config", str(path)]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _started(path, first)
    second = run_cli("run", "--config", str(path))
    assert second.returncode == 2, second.stderr[-2000:]
    (line,) = [x for x in second.stderr.splitlines() if x.startswith("error:")]
    assert f"is being built by PID {first.pid} (python -m pipeline run --config {path}" in line
    assert "--wait" in line
    waiting = subprocess.Popen(command + ["--wait"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    assert first.wait(timeout=600) == 0
    out, err = waiting.communicate(timeout=600)
    assert waiting.returncode == 0 and "waiting for it" in err and "ran no stage" in out, err[-2000:]
    # SIGKILL: the kernel drops the lock; the next run says whose it took over, and finishes the work.
    killed = subprocess.Popen(command + ["--force", "finetune"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    _started(path, killed)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait(timeout=60)
    after = run_cli("run", "--config", str(path))
    assert after.returncode == 0, after.stderr[-2000:]
    assert "took over" in after.stderr and f"PID {killed.pid}" in after.stderr and "no longer running" in after.stderr
