"""docs/measurements.md is written from a build's results files: every figure on it is read, none typed."""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks import figures
from tests.conftest import REPO

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _export() -> dict:
    return {
        "schema_version": 1, "name": "tiny", "config_hash": "c0ffee" * 10, "created": "2026-01-02T03:04:05+0000",
        "host": {"machine": "x86_64", "system": "Linux", "cpus": 2},
        "versions": {"python": "3.11.2", "tensorflow": "2.21.0", "onnxruntime": "1.32.0", "tf2onnx": None},
        "dataset": {"source": "digits", "path": None, "classes": [str(i) for i in range(10)], "test_images": 270},
        "model": {"backbone": "mobilenet_v2", "alpha": 0.35, "weights": "none", "image_size": 32},
        "reference": {"format": "keras", "accuracy": {"top1": 0.8926, "majority_class_rate": 0.1037},
                      "at_chance": False, "latency_ms": 7.2512},
        "artifacts": [
            {"name": "tiny-keras", "format": "keras", "file": "tiny.keras", "status": "passed", "bytes": 2_034_567,
             "gzip_bytes": 1_876_543, "sha256": "a" * 64, "accuracy": {"top1": 0.8926, "delta_pp": 0.0},
             "validation": {"images": 270, "top1_agreement": 1.0, "max_abs_diff": 0.0},
             "latency_ms": 6.9871, "latency_ratio_to_keras": 0.9636},
            {"name": "tiny-tflite-int8", "format": "tflite-int8", "file": "tiny_int8.tflite", "status": "passed",
             "bytes": 612_345, "gzip_bytes": 498_765, "sha256": "b" * 64, "sparsity": 0.011909,
             "accuracy": {"top1": 0.8852, "delta_pp": -0.7407},
             "validation": {"images": 270, "top1_agreement": 0.9741, "max_abs_diff": 0.31234},
             "latency_ms": 0.1234, "latency_ratio_to_keras": 0.017},
            {"name": "tiny-onnx-int8", "format": "onnx-int8", "file": None, "status": "failed",
             "error": "conversion failed (ValueError: no)"},
        ],
    }


def _bench(export: dict) -> dict:
    row = {"target": "phone-little", "origin": "build", "threads": 1, "memory": {"peak_rss_mb": 54.2}}
    return {**export, "schema_version": 2, "benchmark": {
        "created": "2026-01-02T03:10:00+0000", "seconds": 61.4, "accuracy_images": 270,
        "host": {"machine": "x86_64", "system": "Linux", "cpu": "Test CPU @ 2.0GHz", "cpus": 2, "python": "3.11.2"},
        "peak": {"1": {"fp32_gmacs": 57.41, "int8_gmacs": 219.83}},
        "targets": [{"name": "phone-little", "runtime": "litert", "threads_requested": 1, "threads": 1, "note": None,
                     "best": None}],
        "rows": [
            {**row, "artifact": "keras", "origin": "keras", "bytes": 2_034_567,
             "latency_ms": {"p50": 5.4321, "p90": 6.5432, "runs": 300}, "ratio_to_keras": {"p50": 1.0, "p90": 1.0},
             "accuracy": {"top1": 0.8926, "delta_pp": 0.0}, "budget": None, "memory": {"peak_rss_mb": 646.0}},
            {**row, "artifact": "tflite-int8", "bytes": 612_345,
             "latency_ms": {"p50": 0.0721, "p90": 0.0812, "runs": 3000},
             "ratio_to_keras": {"p50": 0.013273, "p90": 0.01241},
             "accuracy": {"top1": 0.8815, "delta_pp": -1.1111},
             "budget": {"passed": False, "failures": ["top-1 drop 1.11 pp > 1 pp"]}},
        ],
    }}


def _manifest(dirty: bool = False) -> dict:
    return {"pipeline": {"commit": COMMIT, "dirty": dirty},
            "artifacts": [{"file": "tiny.keras", "sha256": "a" * 64}, {"file": "tiny_int8.tflite", "sha256": "b" * 64}]}


def _build(tmp_path, bench=True, manifest=True):
    export = _export()
    files = {"export/results.json": export}
    if bench:
        files["bench/results.json"] = _bench(export)
    if manifest:
        files["artifacts/manifest.json"] = _manifest()
    for name, payload in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(json.dumps(payload))
    return tmp_path


def test_export_figures_with_commit_and_machine():
    page = "\n".join(figures.build_section(_export(), manifest=_manifest()))
    assert "commit `0123456789ab`;" in page
    assert "on 2 CPUs, x86_64 Linux" in page and "tensorflow 2.21.0" in page and "tf2onnx" not in page
    assert ("| `tiny_int8.tflite` | tflite-int8 | passed | 612,345 | 498,765 | 0.012 | 0.8852 (270) | -0.74 | 0.9741 "
            "| 3.1e-01 | 0.123 (0.017) |") in page
    assert "| `tiny.keras` | keras | passed | 2,034,567 | 1,876,543 | — | 0.8926 (270) | +0.00 | 1.0000 |" in page
    assert "| (not made) | onnx-int8 | failed: conversion failed (ValueError: no) | — | — | — | — | — | — | — | — |" in page
    assert "compiled `tf.function` (7.251 ms)" in page and "largest class: 0.1037" in page
    assert "## tiny" in page and "digits, 10 classes, 270 test images" in page
    assert "- **Model:** mobilenet_v2 alpha 0.35, weights `none`, at 32 px;" in page


def test_a_brought_model_is_named_by_its_file_not_a_backbone():
    export = {**_export(), "model": {"backbone": None, "alpha": None, "weights": None, "image_size": 96,
                                     "path": "models/ours.keras"}}
    page = "\n".join(figures.build_section(export, manifest=_manifest()))
    assert "- **Model:** `models/ours.keras` (brought, not fine-tuned here) at 96 px;" in page and "None" not in page


def test_bench_figures_per_target_with_ratio_to_keras():
    export = _export()
    page = "\n".join(figures.build_section(export, _bench(export), _manifest()))
    assert "on Test CPU @ 2.0GHz, 2 CPUs, x86_64 Linux, Python 3.11.2; 61 s in all" in page
    assert "their sha256 match manifest.json" in page
    assert "**phone-little**: litert, 1 thread(s); no file met every budget" in page
    assert ("| `tflite-int8` | 0.8815 (270) | -1.11 | 0.072 | 0.081 | 0.0133 | 0.0124 | — | 3000 | 54 | 612,345 "
            "| over: top-1 drop 1.11 pp > 1 pp |") in page
    assert "| `keras` | 0.8926 (270) | +0.00 | 5.432 | 6.543 | 1.000 | 1.000 | — | 300 | 646 | 2,034,567 | — |" in page
    assert page.index("`tflite-int8` | 0.8815") < page.index("`keras` | 0.8926"), "fastest first"
    assert "1 thread(s): fp32 57.4, int8 219.8" in page


def test_commit_states():
    assert figures.commit_text(_manifest(dirty=True)) == "`0123456789ab` with uncommitted changes to tracked files"
    assert "not recorded" in figures.commit_text({"pipeline": {"commit": None, "dirty": None}})
    assert "no artifacts/manifest.json" in figures.commit_text(None)


def test_command_writes_one_page_from_build_folders(tmp_path):
    first = _build(tmp_path / "a")
    second = _build(tmp_path / "b", bench=False, manifest=False)
    out = tmp_path / "docs" / "measurements.md"
    assert figures.main([str(first), str(second), "--out", str(out)]) == 0
    page = out.read_text(encoding="utf-8")
    assert page.startswith("# Measured figures") and page.count("## tiny") == 2
    assert page.count("### Latency per target") == 1
    assert "no artifacts/manifest.json" in page


def test_a_folder_without_export_results_is_one_sentence(tmp_path, capsys):
    assert figures.main([str(tmp_path)]) == 2
    assert "export/results.json does not exist" in capsys.readouterr().err


def test_figures_import_nothing_from_pipeline():
    code = "import sys, benchmarks.figures; print(sorted(m for m in sys.modules if m.split('.')[0] == 'pipeline'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "[]"


def test_proof_table_shows_the_interval_the_verdict_and_the_chosen_attempt():
    from benchmarks.figures import proof_table

    recipe = {"calibration_images": 200, "calibration_method": "minmax", "float_layers": ["Conv1"]}
    export = {"statistics": {"interval": "95%, Newcombe", "test": "exact McNemar"}, "artifacts": [{
        "format": "tflite-int8-mixed", "verdict": "unproven", "recipe": recipe,
        "validation": {"paired": {"delta_pp": -0.3086, "delta_interval_pp": [-1.1733, 0.5111], "lost": 3,
                                  "gained": 1, "mcnemar_p": 0.625, "agreement": 0.9938,
                                  "agreement_interval": [0.9842, 0.9976], "budget_pp": 1.0,
                                  "images_to_settle": 1234}},
        "fidelity": {"val": {"agreement": 0.99, "images": 648}, "train_not_calibration": {"agreement": 1.0, "images": 900},
                     "test": {"agreement_confident": 0.998, "kl_mean": 0.0123}},
        "repair": {"attempts": [
            {"recipe": {**recipe, "float_layers": []}, "val": {"agreement": 0.95, "delta_pp": -1.0,
                                                              "delta_interval_pp": [-2, 0.1], "verdict": "unproven"},
             "seconds": 12.0},
            {"recipe": recipe, "val": {"agreement": 0.98, "delta_pp": 0.0, "delta_interval_pp": [-0.9, 0.9],
                                       "verdict": "within"}, "seconds": 13.0}]}}]}
    page = "\n".join(proof_table(export))
    assert ("| tflite-int8-mixed | -0.31 [-1.17, +0.51] | 3 / 1 | 0.625 | unproven (≤ 1 pp); ~1,234 images would "
            "settle it | 0.9938 [0.984, 0.998] | 0.9900 (648) | 1.0000 (900) | 0.9980 | 1.23e-02 | minmax on 200 "
            "images, float: Conv1 |") in page
    assert "| tflite-int8-mixed | minmax on 200 images, float: Conv1 | 0.9800 | +0.00 [-0.90, +0.90] | within | 13 | ✓ |" in page
    assert "| tflite-int8-mixed | minmax on 200 images | 0.9500 | -1.00 [-2.00, +0.10] | unproven | 12 |  |" in page
    assert proof_table({"artifacts": [{"format": "keras", "validation": {}}]}) == []  # older results: no section
