"""``make bench-build`` (pipeline.build_time): a build from a clean folder, timed, beside the figures that must not change."""

from __future__ import annotations

import json
import subprocess
import sys

from pipeline.build_time import changes
from tests.conftest import REPO, write_config


def test_bench_build_times_a_clean_build_and_names_every_figure_that_changed(tmp_path):
    config = write_config(tmp_path / "tiny.yaml", export={"formats": ["keras", "tflite-fp32"], "latency_runs": 0})
    folder = tmp_path / "build" / "bench-build"
    # A stale file in the folder it builds in must not survive (a clean build), and the user's own build is not touched.
    (folder / "tiny").mkdir(parents=True)
    (folder / "tiny" / "leftover.txt").write_text("from an earlier build")
    mine = tmp_path / "build" / "tiny" / "artifacts"
    mine.mkdir(parents=True)
    (mine / "keep.txt").write_text("the user's build")
    # The previous bench-build said the Keras model scored otherwise: a change to name.
    previous = {"created": "earlier", "wall_seconds": 1.0,
                "figures": {"keras_top1": 1.0, "test_images": 18,
                            "files": {"keras": {"status": "passed"}, "onnx-fp32": {"status": "passed"}}}}
    (folder / "tiny.json").write_text(json.dumps(previous))

    run = subprocess.run([sys.executable, "-m", "pipeline.build_time", "--config", str(config), "--fail-on-change"],
                         cwd=REPO, capture_output=True, text=True, timeout=900)
    assert run.returncode == 1, run.stderr[-3000:]
    assert not (folder / "tiny" / "leftover.txt").exists()
    assert (mine / "keep.txt").read_text() == "the user's build"
    record = json.loads((folder / "tiny.json").read_text())
    results = json.loads((folder / "tiny" / "export/results.json").read_text())
    assert record["exit_code"] == 0 and record["wall_seconds"] > sum(record["timings"]["stages"].values()) > 0
    assert set(record["timings"]["stages"]) == {"data", "finetune", "export"}
    assert set(record["timings"]["export"]) == {"keras", "tflite-fp32"}
    assert record["figures"]["keras_top1"] == results["reference"]["accuracy"]["top1"]
    assert {fmt: f["top1"] for fmt, f in record["figures"]["files"].items()} == {
        a["format"]: a["accuracy"]["top1"] for a in results["artifacts"]}
    error = run.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "onnx-fp32: no longer made" in error
    assert f"Keras test top-1 1.0 -> {record['figures']['keras_top1']}" in error
    assert "tflite-fp32: new" in error
    for stage in ("data", "finetune", "export"):
        assert f"  {stage} " in run.stdout


def test_figure_changes_by_hand():
    same = {"keras_top1": 0.9, "files": {"tflite-int8": {"top1": 0.88, "verdict": "within"}}}
    assert changes(same, json.loads(json.dumps(same))) == []
    moved = {"keras_top1": 0.9, "files": {"tflite-int8": {"top1": 0.87, "verdict": "over"}}}
    assert changes(same, moved) == ["tflite-int8 top1 0.88 -> 0.87", "tflite-int8 verdict within -> over"]
