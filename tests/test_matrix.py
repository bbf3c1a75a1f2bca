"""The backbone × format matrix (pipeline.matrix): each backbone in its own child process, a row per backbone,
a cell per format read from the build, and a page rendered from the JSON alone."""

from __future__ import annotations

import json

import pytest

from pipeline import matrix

# A shortened build (the matrix's own is 8 epochs on all digits): this test checks the bookkeeping, not accuracy.
SHORT = ["data.limit_per_class=12", "train.fine_tune_epochs=1", "optimize.prune.epochs=1",
         "benchmark.max_seconds=1", "benchmark.min_runs=5", "benchmark.max_runs=30",
         # The self-check times files alone twice each (~25 s here); its own tests are in test_bench.py.
         "benchmark.self_check_seconds=0", "benchmark.burst_warm_seconds=0"]


def test_each_backbone_gets_a_row_and_a_refused_one_costs_only_its_row(tmp_path):
    out = tmp_path / "docs" / "matrix.json"
    args = ["--backbones", "inception_v3,mobilenet_v2", "--formats", "keras,tflite-fp32,tflite-int8,onnx-fp32",
            "--out", str(out), "--build-dir", str(tmp_path / "build"), "--set", "data.image_size=40"]
    for override in SHORT:
        args += ["--set", override]
    assert matrix.main(args) == 0
    rows = json.loads(out.read_text())["backbones"]

    # InceptionV3 needs 75 px: the config is refused in one sentence, before any training, and the matrix goes on.
    refused = rows["inception_v3"]
    assert refused["exit_code"] == 2 and "75" in refused["error"] and refused["cells"] == {}

    built = rows["mobilenet_v2"]
    assert built["exit_code"] == 0 and built["input_px"] == 40 and built["alpha"] == matrix.ALPHA["mobilenet_v2"]
    cells = built["cells"]
    assert set(cells) == {"keras", "tflite-fp32", "tflite-int8", "onnx-fp32"}
    assert all(c["converted"] for c in cells.values())
    assert cells["tflite-int8"]["fully_integer"] and not cells["tflite-fp32"]["fully_integer"]
    assert cells["tflite-fp32"]["validation"] == cells["onnx-fp32"]["validation"] == "passed"
    # sizes are the published files'; every file was timed at one thread in its own runtime
    artifacts = tmp_path / "build" / "mobilenet_v2" / "artifacts"
    assert cells["tflite-int8"]["bytes"] == (artifacts / "mobilenet_v2_int8.tflite").stat().st_size
    assert all(c["p50_ms_1_thread"] > 0 for c in cells.values()), {f: c["p50_ms_1_thread"] for f, c in cells.items()}

    page = out.with_suffix(".md").read_text()
    assert page == matrix.render(matrix.load(out))
    assert "| `inception_v3` |" in page and "| `mobilenet_v2` | ✓" in page and "75" in page


def test_unknown_names_are_refused_with_the_valid_ones(tmp_path, capsys):
    assert matrix.main(["--backbones", "vgg61", "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "vgg61" in err and "vgg16" in err and not (tmp_path / "m.json").exists()


def test_render_marks_failures_and_budget_misses():
    row = {"input_px": 32, "alpha": 1.0, "keras_test_top1": 0.9, "chance_top1": 0.1, "test_images": 360,
           "qat": {"trained": True, "layers_quantized_at_output": 2, "layers_left_float": 0},
           "pruning": {"trained": True, "sparsity": 0.5}, "exit_code": 0, "build_seconds": 60,
           "cells": {"tflite-int8": {"converted": True, "validation": "over budget", "fully_integer": True,
                                     "bytes": 2**20, "p50_ms_1_thread": 1.5, "error": "top-1 dropped 2 pp"},
                     "onnx-int8": {"converted": False, "validation": "failed", "fully_integer": None,
                                   "bytes": None, "p50_ms_1_thread": None, "error": "conversion failed (X)"}}}
    page = matrix.render({"backbones": {"resnet50": row}})
    assert "| `resnet50` | ⚠ int<br>1.00 MB<br>1.5 ms | ✗ not converted |" in page
    assert "- `resnet50` × `onnx-int8`: conversion failed (X)" in page
    assert "0.900 (0.10) on 360 images" in page and "2 layers quantized at their output" in page


@pytest.mark.parametrize("backbone", ["inception_v3", "xception", "vgg16"])
def test_each_backbone_is_built_at_its_smallest_input_or_the_small_one(backbone, tmp_path):
    config = matrix.build_config(backbone, tmp_path, ("keras", "onnx-fp32"))
    assert config["data"]["image_size"] == {"inception_v3": 75, "xception": 71, "vgg16": 32}[backbone]
    assert config["benchmark"]["targets"] == ["onnxruntime-1t", "keras-1t"]
