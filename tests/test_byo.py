"""Bring your own model (``model.path``): a tf_keras classifier trained elsewhere goes through export and bench.

The models come from ``byo_user_script.py``, run as its own process the way a user's training
script would be, on the session's tiny colour photos at 32 px.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.errors import ConfigError
from pipeline import runner
from pipeline.config import load_config
from tests.conftest import REPO, TINY_FORMATS, TINY_SECTIONS, needs_shared, run_cli, write_config

SCRIPT = Path(__file__).with_name("byo_user_script.py")
SIZE = 32
# Chance on the three colour classes is 1/3.
CHANCE = 1 / 3
FAST_BENCH = {"targets": ["phone-little"], "min_runs": 10, "max_runs": 40, "max_seconds": 2, "burst": 2,
              "blocks": 1, "peak_seconds": 0.05, "warmup": 2}


def _user_model(kind: str, out: Path, photos: Path, **env) -> Path:
    proc = subprocess.run([sys.executable, str(SCRIPT), kind, str(out), str(photos), str(SIZE)],
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _config(tmp_path: Path, photos: Path, model: dict, formats, **sections) -> Path:
    return write_config(tmp_path / "byo.yaml", name="byo",
                        data={"source": "folder", "path": str(photos), "image_size": SIZE, "seed": 7},
                        model=model, export={"formats": list(formats), "latency_runs": 0}, **sections)


def _one_sentence(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return line


# .keras: a plain functional model; .h5: one that ends in logits (a softmax is appended);
# SavedModel: Sequential([base model, pooling, dense]), as the tutorials nest it (inlined flat).
CASES = [("plain", "model.keras"), ("logits", "model.h5"), ("nested", "saved_model")]


# CI runs the .keras case; the .h5 and SavedModel cases (~40-60 s each on 2 cores) are `make test-slow`.
@pytest.mark.parametrize("kind,filename", [pytest.param(*case, marks=() if i == 0 else pytest.mark.slow)
                                           for i, case in enumerate(CASES)], ids=["keras", "h5", "savedmodel"])
def test_a_model_saved_by_a_separate_script_is_exported_validated_and_benchmarked(tmp_path, image_folder, kind,
                                                                                   filename):
    model = _user_model(kind, tmp_path / filename, image_folder)
    formats = ["keras", "tflite-fp32", "tflite-int8"] + (["onnx-fp32"] if kind == "plain" else [])
    path = _config(tmp_path, image_folder, {"path": str(model), "preprocessing": "mobilenet_v2"}, formats,
                   benchmark=FAST_BENCH if kind == "plain" else {"targets": []})
    proc = run_cli("run", "--config", str(path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    build = tmp_path / "build/byo"
    history = json.loads((build / "finetune/history.json").read_text())
    adopted = history["adopted"]
    assert adopted["rebuilt"] and not adopted["adopted_unchanged"]
    assert adopted["appended_softmax"] == (kind == "logits")
    assert adopted["inlined_models"] == (1 if kind == "nested" else 0)
    assert adopted["max_abs_diff_to_source"] <= 1e-4  # the flat rebuild computes what the user's model does

    results = json.loads((build / "export/results.json").read_text())
    assert results["reference"]["accuracy"]["top1"] > CHANCE + 0.3, results["reference"]
    assert results["model"] == {"backbone": None, "alpha": None, "weights": None, "image_size": SIZE,
                                "path": str(model)}
    assert results["preprocessing"]["in_graph_normalization"] == {"channel_order": "RGB", "mean": [127.5] * 3,
                                                                  "std": [127.5] * 3}
    by_format = {a["format"]: a for a in results["artifacts"]}
    assert list(by_format) == formats
    for fmt, entry in by_format.items():
        assert entry["status"] == "passed", entry
        assert (build / "artifacts" / entry["file"]).is_file()
    for fmt in ("tflite-fp32", "keras") + (("onnx-fp32",) if kind == "plain" else ()):
        assert by_format[fmt]["validation"]["top1_agreement"] == 1.0
        assert by_format[fmt]["validation"]["max_abs_diff"] <= 1e-4
    assert by_format["tflite-int8"]["fully_integer"]
    assert by_format["tflite-int8"]["validation"]["top1_agreement"] >= 0.8
    manifest = json.loads((build / "artifacts/manifest.json").read_text())
    assert manifest["model"]["path"] == str(model) and manifest["model"]["backbone"] is None
    if kind == "plain":
        bench = json.loads((build / "bench/results.json").read_text())
        rows = {r["artifact"] for r in bench["benchmark"]["rows"]}
        assert {"tflite-fp32", "tflite-int8"} <= rows, rows

        # The model file is a stage input: the same file skips the finetune stage, a changed one re-runs it.
        cfg = load_config(path)
        assert all(reason is None for _, reason in runner.status(cfg))
        model.write_bytes(model.read_bytes() + b"\0")
        assert dict(runner.status(cfg))["finetune"] == "source data changed"


@pytest.mark.parametrize("kind,filename,says", [
    ("lambda", "model.h5", "has a Lambda layer 'sneaky', which holds Python code and is not loaded"),
    pytest.param("custom", "model.keras", "has layer 'doubler' of class 'Doubler', which is not a tf_keras layer",
                 marks=pytest.mark.slow),
], ids=["lambda", "custom-class"])
def test_code_in_a_model_is_refused_in_one_sentence_and_never_runs(tmp_path, image_folder, kind, filename, says):
    marker = tmp_path / "code_ran"
    model = _user_model(kind, tmp_path / filename, image_folder, BYO_MARKER=str(marker))
    assert not marker.exists()
    path = _config(tmp_path, image_folder, {"path": str(model), "preprocessing": "mobilenet_v2"}, ["tflite-fp32"])
    line = _one_sentence(run_cli("run", "--config", str(path), env_extra={"BYO_MARKER": str(marker)}, timeout=300))
    assert says in line and "model.path" in line, line
    assert not marker.exists(), "the model's own code ran"
    assert not (tmp_path / "build/byo/finetune/model.keras").exists()


@pytest.mark.slow  # ~75 s on 2 cores; data.apply_class_order has its unit test
def test_a_labels_file_sets_the_class_order(tmp_path, image_folder):
    order = ["sky", "apple", "leaf"]  # not the folders' sorted order
    model = _user_model("plain", tmp_path / "model.keras", image_folder, BYO_CLASS_ORDER=",".join(order))
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(order) + "\n")
    model_section = {"path": str(model), "preprocessing": "mobilenet_v2", "labels": str(labels)}
    path = _config(tmp_path, image_folder, model_section, ["tflite-fp32"])
    proc = run_cli("run", "--config", str(path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    build = tmp_path / "build/byo"
    assert (build / "artifacts/labels.txt").read_text().splitlines() == order
    results = json.loads((build / "export/results.json").read_text())
    # In the sorted order every image would get another class's label: top-1 would be 0.
    assert results["reference"]["accuracy"]["top1"] > CHANCE + 0.3
    assert results["dataset"]["classes"] == order

    labels.write_text("sky\napple\n")
    line = _one_sentence(run_cli("run", "--config", str(path), timeout=300))
    assert "model.labels has no line for class folder 'leaf'" in line, line


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.xdist_group("tiny_readopted")
def test_our_own_model_readopted_gives_the_same_bytes_and_figures(tiny_build, tmp_path):
    """Issue 17's acceptance: a fine-tuned model given back as model.path, preprocessing none, same data."""
    cfg, _ = tiny_build
    manifest = json.loads((cfg.build_root / "artifacts/manifest.json").read_text())
    given = tmp_path / "mine.keras"
    given.write_bytes((cfg.build_root / "finetune/model.keras").read_bytes())
    # The files' metadata holds the build's name and description: the same name, and the description the
    # trained build wrote (the default one names the backbone, which a given model does not have).
    sections = {**TINY_SECTIONS, "model": {"path": str(given), "preprocessing": "none"},
                "export": {**TINY_SECTIONS["export"], "description": manifest["model"]["description"]}}
    path = write_config(tmp_path / "tiny.yaml", **sections)
    again = load_config(path)
    assert runner.run(again, str(path)) == ["data", "finetune", "export"]
    assert _sha256(again.build_root / "finetune/model.keras") == _sha256(given)
    old = json.loads((cfg.build_root / "export/results.json").read_text())
    new = json.loads((again.build_root / "export/results.json").read_text())
    assert [a["format"] for a in new["artifacts"]] == TINY_FORMATS
    for before, after in zip(old["artifacts"], new["artifacts"]):
        assert after["sha256"] == before["sha256"], after["format"]
        assert after["validation"] == before["validation"] and after["fidelity"] == before["fidelity"]
    assert new["reference"]["accuracy"] == old["reference"]["accuracy"]
    assert new["preprocessing"] == old["preprocessing"]

    # Normalizing a second time would be wrong: a preset for a model that has our preprocess layer is refused.
    twice = load_config(path, ["model.preprocessing=mobilenet_v2"])
    with pytest.raises(ConfigError, match="already normalizes its input in its 'preprocess' layer.*"
                                          "set model.preprocessing: none"):
        runner.run(twice, str(path), force=("finetune",))


# The deterministic formats: those whose bytes depend only on the model and the calibration images.
FLOWERS_FORMATS = ["keras", "tflite-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8", "onnx-fp32", "onnx-int8"]


@pytest.mark.slow  # ~15 min on 2 cores: flowers fine-tuning, then two exports
@needs_shared
def test_the_flowers_model_brought_back_gives_the_trained_builds_figures_and_bytes(tmp_path, monkeypatch):
    """Issue 17, acceptance 4, on real photos: the fine-tuned flowers model given as model.path with the flowers folder."""
    monkeypatch.chdir(REPO)  # the config's ../shared paths are relative to the repo root
    config = REPO / "configs/flowers.yaml"
    post_training = [f"build_dir={tmp_path / 'trained'}", f"export.formats=[{','.join(FLOWERS_FORMATS)}]",
                     "benchmark.targets=[]"]
    trained = load_config(config, post_training)
    assert runner.run(trained, str(config)) == ["data", "finetune", "export"]
    manifest = json.loads((trained.build_root / "artifacts/manifest.json").read_text())
    brought = load_config(config, [*post_training[1:], f"build_dir={tmp_path / 'brought'}",
                                   f"model.path={trained.build_root / 'finetune/model.keras'}",
                                   "model.preprocessing=none",
                                   f"export.description={json.dumps(manifest['model']['description'])}"])
    assert runner.run(brought, str(config)) == ["data", "finetune", "export"]
    old = json.loads((trained.build_root / "export/results.json").read_text())
    new = json.loads((brought.build_root / "export/results.json").read_text())
    assert old["reference"]["accuracy"]["top1"] >= 0.7  # the model learned: 5 classes, chance 0.2
    assert new["reference"]["accuracy"] == old["reference"]["accuracy"]
    for before, after in zip(old["artifacts"], new["artifacts"], strict=True):
        assert after["format"] == before["format"]
        assert after["sha256"] == before["sha256"], after["format"]
        assert after["fidelity"] == before["fidelity"] and after["accuracy"] == before["accuracy"], after["format"]


def test_class_order_renumbers_labels_and_refuses_other_names():
    from pipeline.data import apply_class_order
    from core.errors import DataError

    names, labels = apply_class_order(("sky", "apple", "leaf"), ("apple", "leaf", "sky"), np.array([0, 1, 2, 2, 0]))
    assert names == ("sky", "apple", "leaf") and labels.tolist() == [1, 2, 0, 0, 1]
    with pytest.raises(DataError, match="has no line for class folder 'sky'"):
        apply_class_order(("apple", "leaf"), ("apple", "leaf", "sky"), np.array([0]))
