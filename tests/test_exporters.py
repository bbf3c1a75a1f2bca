"""Every registered format exports a file that loads in its own runtime and matches Keras."""

from __future__ import annotations

import numpy as np
import pytest

import exporters
from exporters import inspect, registry
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


def _context(images, int8_io="float"):
    return exporters.ExportContext(image_size=SIZE, onnx_opset=17, calibration_images=images[:16], int8_io=int8_io)


def test_registry_has_the_issue_formats():
    assert {"keras", "tflite-fp32", "onnx-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8",
            "onnx-int8"} <= set(exporters.names())
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
    exporter.export(peaked_model, path, _context(images))
    assert path.stat().st_size > 100_000
    reference = models.predict_probs(peaked_model, images)
    labels = reference.argmax(1)
    check = validate(path, exporter, images, labels, reference)
    assert check.passed, check.failures
    assert check.top1_agreement >= 0.95 and check.accuracy_drop_pp <= 5.0
    if exporter.max_abs_diff is not None:
        assert check.top1_agreement == 1.0 and check.max_abs_diff <= exporter.max_abs_diff
    if exporter.runtime == "litert":
        assert inspect.tflite_summary(path)["fully_integer"] == exporter.fully_integer


@pytest.mark.parametrize("io", ["uint8", "int8"])
def test_int8_tflite_with_integer_io_takes_raw_pixels(io, peaked_model, images, tmp_path):
    exporter = exporters.get("tflite-int8")
    path = tmp_path / f"io{exporter.suffix}"
    exporter.export(peaked_model, path, _context(images, io))
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_input_details()[0]
    assert details["dtype"] == np.dtype(io)
    reference = models.predict_probs(peaked_model, images)
    check = validate(path, exporter, images, reference.argmax(1), reference)
    assert check.passed and inspect.tflite_summary(path)["fully_integer"]


@pytest.mark.parametrize("fmt", ["tflite-fp32", "tflite-fp16", "tflite-int8", "onnx-fp32", "onnx-int8"])
def test_sparsity_is_read_from_the_file(fmt, images, tmp_path):
    keras.utils.set_random_seed(3)
    model = models.build_classifier(ModelConfig(alpha=0.35, weights="none", dropout=0.0), 5, SIZE)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        # Conv and dense kernels half zero; depthwise kernels stay dense and are not counted.
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            values = layer.kernel.numpy()
            values[rng.random(values.shape) < 0.5] = 0.0
            layer.kernel.assign(values)
    assert inspect.keras_sparsity(model) == pytest.approx(0.5, abs=0.01)
    exporter = exporters.get(fmt)
    path = tmp_path / f"sparse{exporter.suffix}"
    exporter.export(model, path, _context(images))
    measured = inspect.tflite_summary(path)["sparsity"] if exporter.runtime == "litert" else inspect.onnx_sparsity(path)
    assert measured == pytest.approx(0.5, abs=0.015)


def test_compare_holds_lossy_formats_to_an_accuracy_drop():
    exporter = exporters.get("tflite-int8")
    reference = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 25]
    labels = reference.argmax(1)
    worse = reference.copy()
    worse[:2] = worse[2:4]  # two of 100 images now wrong: a 2-point drop
    check = compare(worse, reference, labels, exporter)
    assert check.accuracy_drop_pp == pytest.approx(2.0) and not check.passed
    assert "dropped 2.00 pp > budget 1 pp" in check.failures[0]
    assert compare(worse, reference, labels, exporter, max_accuracy_drop_pp=2.5).passed


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
