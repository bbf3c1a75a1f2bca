"""Every registered format exports a file that loads in its own runtime and matches Keras."""

from __future__ import annotations

import numpy as np
import pytest

import exporters
from exporters import registry
from exporters.validate import compare, validate
from pipeline import models
from pipeline.config import ModelConfig
from pipeline.keras_compat import keras

SIZE = 32


@pytest.fixture(scope="module")
def peaked_model():
    """A tiny untrained classifier whose head is scaled up so its top-1 is well separated."""
    keras.utils.set_random_seed(0)
    model = models.build_classifier(ModelConfig(alpha=0.35, weights="none", dropout=0.0), 5, SIZE)
    head = model.get_layer("head_predictions")
    kernel, bias = head.get_weights()
    head.set_weights([kernel * 40.0, bias])
    return model


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).integers(0, 256, (24, SIZE, SIZE, 3)).astype(np.float32)


def test_registry_has_the_issue_formats():
    assert {"keras", "tflite-fp32", "onnx-fp32"} <= set(exporters.names())
    runtimes = {row["format"]: row["runtime"] for row in exporters.table()}
    assert runtimes["tflite-fp32"] == "litert" and runtimes["onnx-fp32"] == "onnxruntime"


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(RuntimeError, match="registered twice"):
        registry.register("tflite-fp32")(type("Dup", (registry.Exporter,), {}))


def test_unknown_format_lists_the_valid_ones():
    with pytest.raises(KeyError, match="tflite-fp32"):
        exporters.get("coreml")


@pytest.mark.parametrize("fmt", exporters.names())
def test_format_exports_loads_in_its_runtime_and_agrees_with_keras(fmt, peaked_model, images, tmp_path):
    exporter = exporters.get(fmt)
    path = tmp_path / f"model{exporter.suffix}"
    exporter.export(peaked_model, path, exporters.ExportContext(image_size=SIZE, onnx_opset=17))
    assert path.stat().st_size > 100_000
    reference = models.predict_probs(peaked_model, images)
    labels = reference.argmax(1)
    check = validate(path, exporter, images, labels, reference)
    assert check.passed, check.failures
    assert check.top1_agreement == 1.0 and check.max_abs_diff <= exporter.max_abs_diff
    assert check.top1 == 1.0  # labels are the reference's own predictions


def test_compare_flags_disagreement_and_large_differences():
    exporter = exporters.get("tflite-fp32")
    reference = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 50]
    labels = reference.argmax(1)
    good = compare(reference + 1e-6, reference, labels, exporter)
    assert good.passed
    flipped = reference.copy()
    flipped[0] = flipped[1]  # one of 200 images changes its top-1: 99.5% agreement, still within budget
    assert compare(flipped, reference, labels, exporter).top1_agreement == pytest.approx(0.995)
    flipped[2] = flipped[3]
    bad = compare(flipped, reference, labels, exporter)
    assert not bad.passed and any("agreement" in f for f in bad.failures)
    drift = compare(reference * 0.999, reference, labels, exporter)
    assert not drift.passed and any("max |dp|" in f for f in drift.failures)
    nan = compare(reference * np.nan, reference, labels, exporter)
    assert not nan.passed
