"""The published bundle describes itself: manifest.json, each file's metadata, `pipeline verify`, reproducible bytes."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import subprocess
import zipfile
from importlib import metadata as dist
from pathlib import Path

import jsonschema
import numpy as np
import pytest

from exporters import delegates, metadata
from pipeline import manifest, runner
from core.errors import BudgetError
from core.io import sha256_file
from tests.conftest import REPO, copy_build, run_cli

SCHEMA = json.loads((REPO / "pipeline/manifest.schema.json").read_text())


def _manifest(cfg) -> dict:
    return json.loads((cfg.build_root / "artifacts/manifest.json").read_text())


def test_manifest_validates_against_the_schema_and_describes_every_published_file(tiny_build):
    cfg, _ = tiny_build
    bundle = _manifest(cfg)
    jsonschema.Draft202012Validator(SCHEMA).validate(bundle)
    artifacts = cfg.build_root / "artifacts"
    assert sorted(a["file"] for a in bundle["artifacts"]) == sorted(
        p.name for p in artifacts.iterdir() if p.name not in ("manifest.json", "labels.txt"))
    for art in bundle["artifacts"]:
        path = artifacts / art["file"]
        assert art["sha256"] == sha256_file(path) and art["bytes"] == path.stat().st_size
        assert art["validation"]["status"] == "passed" and art["validation"]["images"] > 0
    by_format = {a["format"]: a for a in bundle["artifacts"]}
    assert by_format["tflite-int8"]["input"]["dtype"] == "uint8"
    assert by_format["tflite-int8"]["input"]["quantization"]["scale"] == pytest.approx(1 / 127.5)
    assert by_format["tflite-fp32"]["input"]["shape"] == [None, 32, 32, 3]
    assert by_format["onnx-fp32"]["output"]["dtype"] == "float32"
    assert bundle["labels"] == [str(i) for i in range(10)]

    # Build facts: tool versions as installed, the digits' own fingerprint, the calibration choice, the commit.
    assert bundle["tools"]["tensorflow"] == dist.version("tensorflow")
    assert bundle["tools"]["ai-edge-litert"] == dist.version("ai-edge-litert")
    from sklearn.datasets import load_digits

    digits = load_digits()
    assert bundle["dataset"]["sha256"] == hashlib.sha256(digits.data.tobytes() + digits.target.tobytes()).hexdigest()
    assert bundle["dataset"]["decoded_sha256"]["train"] == sha256_file(cfg.build_root / "data/train.npz")
    with np.load(cfg.build_root / "data/train.npz") as train:
        assert bundle["calibration"]["samples"] == min(cfg.export.calibration_samples, len(train["labels"]))
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert bundle["pipeline"]["commit"] == (head.stdout.strip() if head.returncode == 0 else None)

    broken = copy.deepcopy(bundle)
    del broken["artifacts"][0]["sha256"]
    with pytest.raises(manifest.ManifestError, match="artifacts/0.*'sha256' is a required property"):
        manifest.check_schema(broken)


def test_an_independent_reader_finds_the_manifest_labels_and_normalization_in_every_tflite(tiny_build,
                                                                                           standard_schema):
    """The reader flatc generated from the published metadata schema (tflite-support's), not ours."""
    from ai_edge_litert import schema_py_generated as tfl

    cfg, _ = tiny_build
    bundle = _manifest(cfg)
    tflite_files = [a for a in bundle["artifacts"] if a["file"].endswith(".tflite")]
    assert len(tflite_files) == 2
    for art in tflite_files:
        data = (cfg.build_root / "artifacts" / art["file"]).read_bytes()
        model = tfl.Model.GetRootAsModel(data, 0)
        entries = {model.Metadata(i).Name().decode(): model.Metadata(i).Buffer() for i in range(model.MetadataLength())}
        buf = model.Buffers(entries["TFLITE_METADATA"]).DataAsNumpy().tobytes()
        meta = standard_schema.ModelMetadataT.InitFromObj(standard_schema.ModelMetadata.GetRootAsModelMetadata(buf, 0))
        assert meta.name.decode() == bundle["model"]["name"] and int(meta.version) == bundle["model"]["version"]
        (graph,) = meta.subgraphMetadata
        (image,), (probability,) = graph.inputTensorMetadata, graph.outputTensorMetadata
        (unit,) = image.processUnits
        want = art["preprocessing"]["caller_normalization"]
        np.testing.assert_allclose(unit.options.mean, want["mean"], rtol=1e-6)
        np.testing.assert_allclose(unit.options.std, want["std"], rtol=1e-6)
        assert [min(image.stats.min), max(image.stats.max)] == art["preprocessing"]["input_value_range"]
        (labels_file,) = probability.associatedFiles
        assert labels_file.type == standard_schema.AssociatedFileType.TENSOR_AXIS_LABELS
        with zipfile.ZipFile(io.BytesIO(data)) as packed:
            assert packed.read(labels_file.name.decode()).decode("utf-8").splitlines() == bundle["labels"]
    fp32, int8 = sorted(tflite_files, key=lambda a: a["format"])
    assert fp32["preprocessing"]["caller_normalization"]["mean"] == [0.0] * 3  # float pixels as they are
    assert int8["preprocessing"]["caller_normalization"]["std"] == pytest.approx([127.5] * 3)  # gives the camera byte


def test_metadata_is_checked_to_leave_every_output_bit_identical(tiny_build, tmp_path, monkeypatch):
    cfg, _ = tiny_build
    results = json.loads((cfg.build_root / "export/results.json").read_text())
    carried = [a for a in results["artifacts"] if a["file"].endswith((".tflite", ".onnx"))]
    assert len(carried) == 3
    for art in carried:
        assert art["metadata"] == {"written": True, "outputs_bit_identical": True,
                                   "images": results["dataset"]["test_images"]}
    # The check can fail: metadata writing that also nudged the weights is caught and the file is not published.
    copy_cfg, path = copy_build(tiny_build, tmp_path, export={"formats": ["tflite-fp32"], "latency_runs": 0})
    real = metadata.write_tflite_metadata

    def nudging(data, info):
        from ai_edge_litert import schema_py_generated as tfl

        out = bytearray(real(data, info))
        model = tfl.Model.GetRootAsModel(out, 0)
        graph = model.Subgraphs(0)
        # Every float constant, biases too: a model whose features are all zero (the tiny one
        # can train into that) still answers differently once its last layer's bias moves.
        floats = {graph.Tensors(i).Buffer() for i in range(graph.TensorsLength())
                  if graph.Tensors(i).Type() == tfl.TensorType.FLOAT32}
        for index in floats:
            if model.Buffers(index).DataLength():
                weights = model.Buffers(index).DataAsNumpy().view(np.float32)  # a view into ``out``
                weights *= np.float32(1.001)
        return bytes(out)

    shipped = (copy_cfg.build_root / "artifacts/tiny_fp32.tflite").read_bytes()  # the copied build's bundle
    monkeypatch.setattr(metadata, "write_tflite_metadata", nudging)
    with pytest.raises(BudgetError, match="tiny_fp32.tflite"):
        runner.run(copy_cfg, str(path))
    entry = json.loads((copy_cfg.build_root / "export/results.json").read_text())["artifacts"][0]
    assert entry["status"] == "failed" and "adding its metadata changed its outputs" in entry["error"]
    assert not (copy_cfg.build_root / "export/bundle.next/tiny_fp32.tflite").exists()
    assert (copy_cfg.build_root / "artifacts/tiny_fp32.tflite").read_bytes() == shipped  # not replaced


def test_verify_passes_on_the_build_and_names_a_file_with_one_flipped_byte(tiny_build, tmp_path):
    cfg, _ = copy_build(tiny_build, tmp_path)
    build = cfg.build_root
    ok = run_cli("verify", str(build), timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verify passed: 5 files match the manifest" in ok.stdout  # 4 files and labels.txt
    assert "tiny_int8.tflite: sha256 ok; metadata ok (10 labels, mean 128, std 127.5)" in ok.stdout

    victim = build / "artifacts/tiny_int8.tflite"
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    bad = run_cli("verify", str(build / "artifacts"), timeout=300)
    assert bad.returncode == 1
    assert "FAIL  tiny_int8.tflite: sha256" in bad.stdout and "changed after export" in bad.stdout
    assert "tiny_fp32.tflite: sha256 ok" in bad.stdout  # the others still check out

    (build / "artifacts/manifest.json").write_text("{ not json")
    broken = run_cli("verify", str(build), timeout=300)
    assert broken.returncode == 2 and "cannot be read as JSON" in broken.stderr and "Traceback" not in broken.stderr


def test_verify_catches_metadata_that_disagrees_with_the_manifest(tiny_build, tmp_path):
    """Bytes re-hashed into the manifest, but the labels in the file swapped: only re-reading the metadata sees it."""
    cfg, _ = copy_build(tiny_build, tmp_path)
    folder = cfg.build_root / "artifacts"
    path = folder / "tiny_fp32.tflite"
    read = metadata.read_tflite_metadata(path)
    info = metadata.ModelInfo(name=read["name"], description=read["description"], version=read["version"],
                              labels=tuple(reversed(read["labels"])), preprocessing=read["preprocessing"])
    path.write_bytes(metadata.write_tflite_metadata(path, info))
    bundle = json.loads((folder / "manifest.json").read_text())
    art = next(a for a in bundle["artifacts"] if a["file"] == path.name)
    art["sha256"], art["bytes"] = sha256_file(path), path.stat().st_size
    (folder / "manifest.json").write_text(json.dumps(bundle))
    result = manifest.verify(folder)
    assert len(result.problems) == 1
    assert result.problems[0].startswith("tiny_fp32.tflite: metadata disagrees with the manifest: labels")


def test_two_exports_of_the_same_trained_model_are_byte_identical(tiny_build, tmp_path):
    cfg, _ = tiny_build
    before = {p.name: sha256_file(p) for p in (cfg.build_root / "artifacts").iterdir()}
    again, path = copy_build(tiny_build, tmp_path)
    assert runner.run(again, str(path), force=("export",)) == ["export"]
    after = {p.name: sha256_file(p) for p in (again.build_root / "artifacts").iterdir()}
    assert sorted(after) == sorted(before) == sorted(
        ["labels.txt", "manifest.json", "tiny.keras", "tiny_fp32.onnx", "tiny_fp32.tflite", "tiny_int8.tflite"])
    assert after == before


def test_delegate_support_is_read_from_each_tflite_file(tiny_build):
    cfg, _ = tiny_build
    by_format = {a["format"]: a for a in _manifest(cfg)["artifacts"]}
    int8, fp32 = by_format["tflite-int8"]["delegates"], by_format["tflite-fp32"]["delegates"]
    assert int8["fully_integer"] is True and int8["float_ops"] == []
    assert fp32["fully_integer"] is False and "CONV_2D" in fp32["float_ops"]
    for found in (int8, fp32):
        assert found["gpu"]["compatible"] is True and found["gpu"]["unsupported_ops"] == []
    assert by_format["onnx-fp32"]["delegates"] is None and by_format["keras"]["delegates"] is None


def test_the_gpu_check_names_ops_the_gpu_delegate_cannot_run(tmp_path):
    """A graph with ops outside the GPU delegate's set (TOPK_V2, UNIQUE) beside ones inside it (CUMSUM, CAST)."""
    from core.keras_compat import tf

    @tf.function(input_signature=[tf.TensorSpec([1, 8], tf.float32)])
    def ranks(x):
        top = tf.math.top_k(tf.math.cumsum(x, axis=1), k=3).indices
        return tf.cast(tf.unique(tf.reshape(top, [-1])).idx, tf.float32)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([ranks.get_concrete_function()], ranks)
    path = tmp_path / "ranks.tflite"
    path.write_bytes(converter.convert())
    found = delegates.tflite_delegates(path)
    assert found["gpu"]["compatible"] is False and found["fully_integer"] is False
    assert [op["op"] for op in found["gpu"]["unsupported_ops"]] == ["TOPK_V2", "UNIQUE"]
    assert all("not an op the GPU delegate supports" in op["reason"] for op in found["gpu"]["unsupported_ops"])


def test_a_new_bundle_takes_the_old_ones_place_in_one_step(tmp_path, monkeypatch):
    from core import io

    def folder(name, files):
        path = tmp_path / name
        path.mkdir()
        for f, text in files.items():
            (path / f).write_text(text)
        return path

    current = folder("artifacts", {"model.tflite": "old", "manifest.json": "old"})
    new = folder("bundle.next", {"model.tflite": "new", "model.onnx": "new", "manifest.json": "new"})
    previous = io.swap_in_folder(new, current)
    assert previous == new and sorted(p.name for p in previous.iterdir()) == ["manifest.json", "model.tflite"]
    assert {p.name: p.read_text() for p in current.iterdir()} == {"model.tflite": "new", "model.onnx": "new",
                                                                   "manifest.json": "new"}
    # Where the kernel cannot exchange: renamed aside, then in; the previous bundle stays whole beside it.
    monkeypatch.setattr(io, "_exchange", lambda a, b: False)
    newer = folder("bundle.newer", {"manifest.json": "newer"})
    aside = io.swap_in_folder(newer, current)
    assert aside == tmp_path / "artifacts.previous" and (aside / "model.onnx").read_text() == "new"
    assert [p.name for p in current.iterdir()] == ["manifest.json"]
    first = folder("first", {"a": "1"})  # nothing to replace: a plain rename
    assert io.swap_in_folder(first, tmp_path / "fresh") is None and (tmp_path / "fresh/a").read_text() == "1"
