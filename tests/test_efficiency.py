"""MAC counts read from each file format agree with Keras and with hand counts; peak and efficiency figures."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from core import contract
from core.layers import Preprocess
from exporters import convert, registry
from benchmarks import efficiency
from benchmarks.efficiency import keras_macs, onnx_macs, tflite_macs
from core.keras_compat import keras
from tests.conftest import REPO, SHARED


SIZE = 16
REFERENCE_INT8 = SHARED / "reference/tf2_mobilenet_v2_1.0_224_ptq.tflite"


def _block_model() -> keras.Model:
    """MobileNetV2's ingredients at toy size: in-graph normalization, strided conv, inverted residual, dense head."""
    layers = keras.layers
    inputs = keras.Input((SIZE, SIZE, 3), name=contract.INPUT_NAME)
    x = Preprocess((127.5,) * 3, (127.5,) * 3)(inputs)
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)
    x = layers.ReLU(6.0)(layers.BatchNormalization()(x))
    y = layers.Conv2D(16, 1, activation="relu")(x)
    y = layers.DepthwiseConv2D(3, padding="same", activation="relu")(y)
    y = layers.Conv2D(8, 1)(y)
    x = layers.Add()([x, y])
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(5, activation="softmax")(x)
    return keras.Model(inputs, outputs)


# (out_h * out_w * out_c) * (multiplies per output) for each layer of _block_model.
BLOCK_MACS = 8 * 8 * 8 * (3 * 3 * 3) + 8 * 8 * 16 * 8 + 8 * 8 * 16 * (3 * 3) + 8 * 8 * 8 * 16 + 5 * 8


@pytest.fixture(scope="session")  # not torn down when another module runs between two users
def block_files(tmp_path_factory):
    """The block model and its files in the formats whose MACs must agree."""
    keras.utils.set_random_seed(0)
    model = _block_model()
    images = np.random.default_rng(0).integers(0, 256, (16, SIZE, SIZE, 3)).astype(np.float32)
    ctx = convert.ExportContext(image_size=SIZE, onnx_opset=17, calibration_images=images)
    folder = tmp_path_factory.mktemp("efficiency")
    files = {}
    for fmt in ("tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8"):
        files[fmt] = folder / f"block{convert.get(fmt).suffix}"
        convert.get(fmt).export(model, files[fmt], ctx)
    return model, files


def _file_macs(path) -> int:
    return tflite_macs(path) if path.suffix == ".tflite" else onnx_macs(path)


@pytest.mark.xdist_group("block_files")  # one worker makes the files, for every test of them
def test_macs_agree_across_keras_tflite_and_onnx_float_and_int8(block_files):
    model, files = block_files
    assert keras_macs(model) == BLOCK_MACS
    assert {fmt: _file_macs(path) for fmt, path in files.items()} == {fmt: BLOCK_MACS for fmt in files}


@pytest.mark.xdist_group("block_files")  # one worker makes the files, for every test of them
def test_onnx_int8_weights_sit_behind_dequantize_linear(block_files):
    """The int8 count above only means something if its Conv weights really are QDQ integer initializers."""
    graph = onnx.load(str(block_files[1]["onnx-int8"])).graph
    producers = {out: node for node in graph.node for out in node.output}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs and all(producers[n.input[1]].op_type == "DequantizeLinear" for n in convs)


def test_a_single_conv_matches_the_hand_count(tmp_path):
    inputs = keras.Input((11, 11, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(8, 3, strides=2, padding="same")(inputs))
    # "same" padding, stride 2: ceil(11 / 2) = 6; each of the 6*6*8 outputs sums a 3x3x3 window.
    expected = 6 * 6 * 8 * 3 * 3 * 3
    assert expected == 7776
    assert _export_counts(model, tmp_path, 11) == {"keras": expected, "tflite-fp32": expected, "onnx-fp32": expected}


def test_grouped_conv_and_nested_models_and_pruning_wrappers_count_per_group(tmp_path):
    inputs = keras.Input((6, 6, 8))
    inner = keras.Model(inputs, keras.layers.Conv2D(8, 1, groups=2)(inputs))  # each output sees 8 / 2 inputs
    outer = keras.Sequential([keras.Input((6, 6, 8)), inner, keras.layers.Flatten(), keras.layers.Dense(3)])
    expected = 6 * 6 * 8 * 4 + 3 * (6 * 6 * 8)
    assert keras_macs(outer) == expected
    import tensorflow_model_optimization as tfmot

    assert keras_macs(tfmot.sparsity.keras.prune_low_magnitude(inner)) == 6 * 6 * 8 * 4
    # tf2onnx cannot convert a grouped Keras conv, so the file check is TFLite only.
    path = tmp_path / "grouped.tflite"
    convert.get("tflite-fp32").export(inner, path, convert.ExportContext(image_size=6, onnx_opset=17))
    assert tflite_macs(path) == 6 * 6 * 8 * 4


def _export_counts(model, tmp_path, size: int) -> dict:
    ctx = convert.ExportContext(image_size=size, onnx_opset=17)
    counts = {"keras": keras_macs(model)}
    for fmt in ("tflite-fp32", "onnx-fp32"):
        path = tmp_path / f"model{convert.get(fmt).suffix}"
        convert.get(fmt).export(model, path, ctx)
        try:
            counts[fmt] = _file_macs(path)
        except ValueError as error:
            counts[fmt] = error
    return counts


def test_separable_and_transposed_convs_match_the_hand_count(tmp_path):
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.SeparableConv2D(8, 3, padding="same", depth_multiplier=2)(inputs)
    outputs = keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same")(x)
    depthwise, pointwise = 6 * 6 * (3 * 2) * (3 * 3), 6 * 6 * 8 * (3 * 2)
    transposed = (6 * 6 * 8) * (3 * 3 * 3)  # each input element fills a 3x3 window of 3 output channels
    expected = depthwise + pointwise + transposed
    assert _export_counts(keras.Model(inputs, outputs), tmp_path, 6) == dict.fromkeys(
        ("keras", "tflite-fp32", "onnx-fp32"), expected)


def test_a_matmul_between_activations_counts_in_the_files(tmp_path):
    inputs = keras.Input((4, 4, 3))
    tokens = keras.layers.Reshape((16, 3))(inputs)
    model = keras.Model(inputs, keras.layers.Dot(axes=2)([tokens, tokens]))  # TFLite BATCH_MATMUL, ONNX MatMul
    counts = _export_counts(model, tmp_path, 4)
    assert counts == {"keras": 0, "tflite-fp32": 16 * 16 * 3, "onnx-fp32": 16 * 16 * 3}  # keras counts weights' layers


def test_dense_on_a_feature_map_is_counted_per_pixel_or_refused(tmp_path):
    """Dense on (h, w, c) becomes a matmul of (batch * h * w, c): a dynamic first dimension that is not the batch.

    ONNX resolves it once the batch is fixed to 1; the TFLite file stores it as (-1, -1), so the count refuses.
    """
    inputs = keras.Input((4, 4, 3))
    counts = _export_counts(keras.Model(inputs, keras.layers.Dense(5)(inputs)), tmp_path, 4)
    assert counts["keras"] == counts["onnx-fp32"] == 4 * 4 * 5 * 3
    assert isinstance(counts["tflite-fp32"], ValueError) and "dynamic shape" in str(counts["tflite-fp32"])


def _onnx_file(tmp_path, nodes, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path))
    return path


def test_onnx_counts_groups_gemm_and_integer_ops_with_a_dynamic_batch(tmp_path):
    def init(name, shape, dtype=np.float32):
        return numpy_helper.from_array(np.ones(shape, dtype), name)

    def scalar(name, value, dtype):
        return numpy_helper.from_array(np.array(value, dtype), name)

    nodes = [
        helper.make_node("Conv", ["x", "w_grouped"], ["a"], group=2, pads=[1, 1, 1, 1]),  # 8 -> 8, 3x3, 2 groups
        helper.make_node("DequantizeLinear", ["w_q", "s", "zp"], ["w_dq"]),
        helper.make_node("Conv", ["a", "w_dq"], ["b"], strides=[2, 2]),  # 1x1, 8 -> 4, QDQ weight
        helper.make_node("Flatten", ["b"], ["f"]),  # 4 * 3 * 3 = 36
        helper.make_node("Gemm", ["f", "w_gemm"], ["g"], transB=1),  # 36 -> 10, weight (10, 36)
        helper.make_node("QuantizeLinear", ["g", "s_act", "zp_u8"], ["g_q"]),
        helper.make_node("MatMulInteger", ["g_q", "w_int"], ["y"]),  # 10 -> 7
    ]
    path = _onnx_file(
        tmp_path, nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, ["batch", 7])],
        [init("w_grouped", (8, 4, 3, 3)), init("w_q", (4, 8, 1, 1), np.int8), scalar("s", 0.1, np.float32),
         scalar("zp", 0, np.int8), init("w_gemm", (10, 36)), scalar("s_act", 0.1, np.float32),
         scalar("zp_u8", 128, np.uint8), init("w_int", (10, 7), np.int8)],
    )
    expected = 5 * 5 * 8 * (4 * 3 * 3) + 3 * 3 * 4 * 8 + 10 * 36 + 7 * 10
    assert onnx_macs(path) == expected


def test_onnx_refuses_a_dynamic_image_size(tmp_path):
    path = _onnx_file(
        tmp_path, [helper.make_node("Conv", ["x", "w"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, "height", "width"])],
        [numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")],
    )
    with pytest.raises(ValueError, match="dynamic"):
        onnx_macs(path)


@pytest.mark.xdist_group("block_files")  # one worker makes the files, for every test of them
def test_tflite_macs_runs_without_tensorflow(block_files):
    """The latency subprocess loads LiteRT only; counting must not drag TensorFlow in."""
    code = ("import sys; from benchmarks.efficiency import tflite_macs; "
            f"print(tflite_macs({str(block_files[1]['tflite-int8'])!r})); "
            "print(sorted(m for m in ('tensorflow', 'tf_keras', 'onnx') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(BLOCK_MACS), "[]"]


@pytest.mark.skipif(not REFERENCE_INT8.is_file(), reason="../shared/reference is not beside this checkout")
def test_googles_int8_mobilenet_v2_has_the_keras_models_macs():
    """Google's file has 1001 classes (a background class), hence classes=1001 here."""
    reference = keras.applications.MobileNetV2(alpha=1.0, input_shape=(224, 224, 3), weights=None, classes=1001)
    macs = keras_macs(reference)
    assert tflite_macs(REFERENCE_INT8) == macs
    assert 295e6 < macs < 305e6  # the "300M multiply-adds" of the MobileNetV2 paper


def test_measure_peak_reports_positive_rates_for_both_precisions():
    peak = efficiency.measure_peak(threads=1, seconds=0.1)
    assert set(peak) == {"fp32_gmacs", "int8_gmacs", "threads", "method"}
    assert peak["threads"] == 1 and "MatMulInteger" in peak["method"]
    for key in ("fp32_gmacs", "int8_gmacs"):
        assert math.isfinite(peak[key]) and peak[key] > 0
    with pytest.raises(ValueError, match="threads"):
        efficiency.measure_peak(threads=0)


def test_efficiency_divides_achieved_rate_by_peak():
    result = efficiency.efficiency(300_000_000, latency_ms=3.0, peak_gmacs=200.0)
    assert result["macs"] == 300_000_000
    assert result["gmacs_per_s"] == pytest.approx(100.0)  # 3e8 MAC / 3e-3 s = 1e11 MAC/s
    assert result["peak_gmacs"] == 200.0 and result["fraction_of_peak"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive"):
        efficiency.efficiency(1, latency_ms=0.0, peak_gmacs=1.0)


def test_full_integer_files_are_held_to_the_int8_peak_and_the_rest_to_fp32():
    peak = {"fp32_gmacs": 50.0, "int8_gmacs": 200.0, "threads": 1, "method": "test"}
    int8 = {"tflite-int8", "tflite-qat-int8", "tflite-pruned-int8", "onnx-int8", "tflite-int8-mixed", "onnx-int8-mixed"}
    for fmt in registry.names():
        assert efficiency.peak_for(fmt, peak) == (200.0 if fmt in int8 else 50.0), fmt
    assert efficiency.peak_precision("qat-int8") == "int8" and efficiency.peak_precision("fp16") == "fp32"
    with pytest.raises(ValueError, match="tflite-int8"):
        efficiency.peak_precision("int4")
