"""Real photos, real ImageNet weights: the slow acceptance run (``make test-slow``, ~30 min on 2 cores)."""

from __future__ import annotations

import json

import pytest

from pipeline.linear_probe import probe
from pipeline import runner
from pipeline.config import load_config
from tests.conftest import REPO, needs_shared


@pytest.mark.slow
@needs_shared
def test_flowers_fine_tune_beats_linear_probe_and_exports_agree(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the config's ../shared paths are relative to the repo root
    config = REPO / "configs/flowers.yaml"
    cfg = load_config(config, [f"build_dir={tmp_path}"])
    assert runner.run(cfg, str(config)) == ["data", "finetune", "optimize", "export", "bench"]
    results = json.loads((cfg.build_root / "export/results.json").read_text())
    # Issue 4: every published file on the three targets, with Google's files as reference rows.
    bench = json.loads((cfg.build_root / "bench/results.json").read_text())["benchmark"]
    assert [t["name"] for t in bench["targets"]] == ["phone-big", "phone-little", "edge-box"]
    assert sum(r["origin"] == "reference" for r in bench["rows"]) == 4  # 2 files x 2 LiteRT targets
    assert (cfg.build_root / "report/report.html").is_file()
    fine_tuned = results["reference"]["accuracy"]["top1"]
    baseline = probe(cfg)["test_top1"]
    assert fine_tuned >= baseline + 0.05, (fine_tuned, baseline)
    for entry in results["artifacts"]:
        check = entry["validation"]
        assert entry["status"] == "passed", (entry["format"], entry.get("error"))
        if check["max_abs_diff_budget"] is not None:  # lossless formats match Keras image by image
            assert check["top1_agreement"] >= 0.995 and check["max_abs_diff"] <= 1e-4, entry["format"]
        else:  # quantized ones stay within their top-1 drop budget
            assert check["accuracy_drop_pp"] <= check["max_accuracy_drop_pp"], entry["format"]
        if entry["format"] in ("tflite-int8", "tflite-qat-int8", "tflite-pruned-int8"):
            assert entry["fully_integer"], (entry["format"], entry["float_ops"])
    by_format = {a["format"]: a for a in results["artifacts"]}
    pruned, dense = by_format["tflite-pruned-int8"], by_format["tflite-int8"]
    # Issue 3, acceptance 2: sparsity read from the file, and a gzip at least 25% smaller.
    assert pruned["sparsity"] >= 0.49
    assert pruned["gzip_bytes"] <= 0.75 * dense["gzip_bytes"], (pruned["gzip_bytes"], dense["gzip_bytes"])
