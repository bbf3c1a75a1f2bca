"""Every registered format exports a file that loads in its own runtime and matches Keras."""

from __future__ import annotations

import numpy as np
import pytest

from core import contract, layers
from exporters.runtimes import keras_probabilities
from exporters import convert, folding, inspect, registry
from exporters.validate import compare, validate
from pipeline import models
from pipeline.config import ModelConfig
from core.keras_compat import keras

SIZE = 32


@pytest.fixture(scope="session")
def trained_model(tiny_build):
    """The shared tiny build's trained digits classifier (its fixture asserts test top-1 >= 0.9)."""
    from core.loader import load_classifier as load_model

    cfg, _ = tiny_build
    return load_model(cfg.build_root / "finetune/model.keras")


@pytest.fixture(scope="session")
def images(tiny_build):
    """Held-out digits of the tiny build's test split, raw pixels: what the files are checked on."""
    from core.splits import load_split

    cfg, _ = tiny_build
    return load_split(cfg.build_root / "data/test.npz")[0].astype(np.float32)


@pytest.fixture(scope="session")
def labels(tiny_build):
    from core.splits import load_split

    cfg, _ = tiny_build
    return load_split(cfg.build_root / "data/test.npz")[1]


@pytest.fixture(scope="session")
def calibration(tiny_build):
    """Training digits, as the pipeline calibrates on them."""
    from core.splits import load_split

    cfg, _ = tiny_build
    return load_split(cfg.build_root / "data/train.npz")[0][:100].astype(np.float32)


@pytest.fixture(scope="session")
def digits():
    """Real handwritten digits (dark background, bright strokes): a pixel distribution unlike noise."""
    from pipeline.data import load_digits_dataset

    return load_digits_dataset(SIZE)[1][:48].astype(np.float32)


def _context(calibration, **settings):
    return convert.ExportContext(image_size=SIZE, onnx_opset=17, calibration_images=calibration, **settings)


def test_registry_has_the_issue_formats():
    assert {"keras", "tflite-fp32", "onnx-fp32", "tflite-fp16", "tflite-dynamic", "tflite-int8",
            "tflite-qat-int8", "tflite-pruned-int8", "onnx-int8"} <= set(registry.names())
    assert registry.sources(registry.names()) == set(registry.SOURCES)
    assert registry.get("tflite-pruned-int8").max_accuracy_drop_pp == 2.0  # the issue's default for pruned files
    runtimes = {row["format"]: row["runtime"] for row in registry.table()}
    assert runtimes["tflite-fp32"] == "litert" and runtimes["onnx-fp32"] == "onnxruntime"


def test_registering_a_name_twice_is_an_error():
    with pytest.raises(RuntimeError, match="registered twice"):
        registry.register("tflite-fp32")(type("Dup", (registry.Format,), {"suffix": "_x.tflite", "runtime": "litert"}))


def test_unknown_format_lists_the_valid_ones():
    with pytest.raises(KeyError, match="tflite-fp32"):
        convert.get("coreml")


# The QAT exporters run the tflite-int8 conversion on a tfmot model: tested below with one.
@pytest.mark.parametrize("fmt", [n for n in registry.names() if convert.get(n).source == "finetune"])
def test_format_exports_loads_in_its_runtime_and_agrees_with_keras(fmt, trained_model, images, labels, calibration,
                                                                   tmp_path):
    exporter = convert.get(fmt)
    path = tmp_path / f"model{exporter.suffix}"
    # A mixed format keeps layers in float by definition: give it the first convolution.
    floats = {"float_layers": ("Conv1",)} if exporter.float_fallback else {}
    exporter.export(trained_model, path, _context(calibration, **floats))
    assert path.stat().st_size > 100_000
    reference = keras_probabilities(trained_model, images)
    assert (reference.argmax(1) == labels).mean() >= 0.8  # a model that learned, on held-out digits
    # Three images' worth at least: on 270 test images one flipped digit is 0.37 pp, so a 1 pp
    # budget would be decided by a single image (issue 16 judges drops by their interval).
    budget = max(exporter.max_accuracy_drop_pp or 0.0, 300 / len(images))
    check = validate(path, exporter, images, labels, reference, max_accuracy_drop_pp=budget)
    assert check.passed, check.failures
    assert check.top1_agreement >= 0.95 and check.accuracy_drop_pp <= 5.0
    if exporter.precision != "fp32":  # a lossy file differs from the float model, visibly
        assert check.max_abs_diff > 1e-4
    if exporter.max_abs_diff is not None:
        assert check.top1_agreement == 1.0 and check.max_abs_diff <= exporter.max_abs_diff
    if exporter.runtime == "litert":
        assert inspect.tflite_summary(path)["fully_integer"] == exporter.fully_integer


def _ops_before_first_conv(path) -> list[str]:
    from ai_edge_litert.interpreter import Interpreter

    names = [op["op_name"] for op in Interpreter(model_path=str(path))._get_ops_details()]
    return names[:names.index("CONV_2D")]


@pytest.mark.parametrize("input_type, output_type", [("uint8", "float"), ("int8", "int8"), ("float", "uint8")])
def test_int8_tflite_takes_raw_pixels_whatever_its_io_types(input_type, output_type, trained_model, images, digits,
                                                             calibration, tmp_path):
    exporter = convert.get("tflite-int8")
    path = tmp_path / f"io{exporter.suffix}"
    exporter.export(trained_model, path, _context(calibration, int8_input=input_type, int8_output=output_type))
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    details = interpreter.get_input_details()[0]
    assert details["dtype"] == np.dtype(input_type if input_type != "float" else "float32")
    assert interpreter.get_signature_list()["serving_default"]["inputs"] == [contract.INPUT_NAME]
    out_dtype = np.dtype(output_type if output_type != "float" else "float32")
    assert interpreter.get_output_details()[0]["dtype"] == out_dtype
    if input_type == "float":  # the raw-pixel float32 contract: the normalization runs in the graph
        assert "SUB" in _ops_before_first_conv(path) and inspect.raw_pixel_offset(path) is None
    else:  # MobileNetV2's (x - 127.5) / 127.5 is the input's quantization: the stored integer is the camera byte
        scale, zero_point = details["quantization"]
        assert scale == pytest.approx(1 / 127.5, rel=1e-6) and _ops_before_first_conv(path) == ["QUANTIZE"]
        offset = {"uint8": 0, "int8": -128}[input_type]
        assert zero_point == 128 + offset and inspect.raw_pixel_offset(path) == offset
        assert inspect.tflite_summary(path)["input"]["feed"].startswith("raw RGB pixel bytes")
    for x in images, digits:  # raw pixels in, the Keras model's answers out, within the int8 budget
        reference = keras_probabilities(trained_model, x)
        check = validate(path, exporter, x, reference.argmax(1), reference)
        assert check.top1_agreement >= 0.95 and check.accuracy_drop_pp <= 5.0, check  # int8 rounding flips a few
    assert inspect.tflite_summary(path)["fully_integer"]


def _bgr_caffe_model():
    """A tiny classifier behind ResNet50's preprocessing: BGR, per-channel means, no scaling."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((SIZE, SIZE, 3), name=contract.INPUT_NAME)
    x = layers.Preprocess((103.939, 116.779, 123.68), (1.0, 1.0, 1.0), "BGR", name=contract.PREPROCESS_LAYER)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, activation="softmax")(x)
    return keras.Model(inputs, outputs)


def test_bgr_per_channel_normalization_is_not_folded_and_uint8_input_is_still_the_camera_byte(images, tmp_path):
    resnet = models.build_classifier(ModelConfig(backbone="resnet50", weights="none"), 2, SIZE)
    assert folding.fold_normalization(resnet) is None
    model = _bgr_caffe_model()
    assert folding.fold_normalization(model) is None
    exporter = convert.get("tflite-int8")
    path = tmp_path / f"bgr{exporter.suffix}"
    exporter.export(model, path, _context(images[:16], int8_input="uint8"))
    from ai_edge_litert.interpreter import Interpreter

    details = Interpreter(model_path=str(path)).get_input_details()[0]
    assert details["dtype"] == np.uint8 and details["quantization"] == (1.0, 0)
    assert {"SUB", "MUL"} & set(_ops_before_first_conv(path)) and inspect.raw_pixel_offset(path) == 0
    reference = keras_probabilities(model, images)
    check = validate(path, exporter, images, reference.argmax(1), reference)
    assert check.top1_agreement >= 0.9 and inspect.tflite_summary(path)["fully_integer"]


# Plain QAT (preserve_sparsity False) is converted by the same code. ~10 s per case on 2 cores since
# the conversion skips the SavedModel (~1 min before); the fast suite converts a sparsity-preserving
# QAT model in the optimize stage's end-to-end test (test_distribution), so these stay in the slow suite.
@pytest.mark.slow
@pytest.mark.parametrize("preserve_sparsity", [True, False])
def test_qat_models_convert_to_full_integer_files_that_match_the_float_model(preserve_sparsity, trained_model, images,
                                                                            calibration, tmp_path):
    """What the QAT exporters get: a tfmot model whose preprocess layer is left un-annotated."""
    from pipeline import compression

    model = keras.models.clone_model(trained_model)
    model.set_weights(trained_model.get_weights())
    if preserve_sparsity:  # a pruned model: half of every conv/dense kernel zero
        rng = np.random.default_rng(0)
        for layer in model.layers:
            if isinstance(layer, compression.PRUNABLE):
                values = layer.kernel.numpy()
                values[rng.random(values.shape) < 0.5] = 0.0
                layer.kernel.assign(values)
    qat = compression.quantize_aware(model, preserve_sparsity=preserve_sparsity)
    compression.initialize_ranges(qat, calibration)
    fold = folding.fold_normalization(qat)
    assert (fold.mean, fold.std) == (127.5, 127.5)
    exporter = convert.get("tflite-pruned-int8" if preserve_sparsity else "tflite-qat-int8")
    path = tmp_path / f"model{exporter.suffix}"
    exporter.export(qat, path, _context(calibration))
    assert _ops_before_first_conv(path) == ["QUANTIZE"] and inspect.raw_pixel_offset(path) == 0
    summary = inspect.tflite_summary(path)
    assert summary["fully_integer"]
    # Held, like the pipeline holds it, against the float model it was made from.
    reference = keras_probabilities(model, images)
    check = validate(path, exporter, images, reference.argmax(1), reference)
    assert check.top1_agreement >= 0.9 and check.passed, check.failures
    if preserve_sparsity:
        assert summary["sparsity"] == pytest.approx(compression.overall_sparsity(model), abs=0.005)
    else:
        assert summary["sparsity"] < 0.05


def _onnx_ops_before_first_conv(path) -> list[str]:
    import onnx

    graph = onnx.load(str(path)).graph
    constants = {i.name for i in graph.initializer}
    ops = []
    for node in graph.node:
        if node.op_type == "Conv":
            return ops
        if not (node.op_type == "DequantizeLinear" and node.input[0] in constants):  # weights
            ops.append(node.op_type)
    return ops


def test_onnx_int8_quantizes_raw_pixels_where_the_normalization_folds(trained_model, images, digits, calibration,
                                                                     tmp_path):
    exporter = convert.get("onnx-int8")
    path = tmp_path / f"folded{exporter.suffix}"
    exporter.export(trained_model, path, _context(calibration))
    # The float input is still raw RGB pixels, but no Sub/Mul runs on it: the QuantizeLinear takes them.
    assert _onnx_ops_before_first_conv(path) == ["Transpose", "QuantizeLinear", "DequantizeLinear"]
    for x in images, digits:
        reference = keras_probabilities(trained_model, x)
        check = validate(path, exporter, x, reference.argmax(1), reference)
        assert check.top1_agreement >= 0.95 and check.accuracy_drop_pp <= 5.0, check  # int8 rounding flips a few

    bgr = _bgr_caffe_model()
    path = tmp_path / f"bgr{exporter.suffix}"
    exporter.export(bgr, path, _context(images[:16]))
    assert {"Sub", "Mul"} <= set(_onnx_ops_before_first_conv(path))
    reference = keras_probabilities(bgr, images)
    assert validate(path, exporter, images, reference.argmax(1), reference).top1_agreement >= 0.9


@pytest.fixture(scope="module")
def onnx_int8_file(trained_model, calibration, tmp_path_factory):
    """The tiny model's plain onnx-int8 file (minmax): what the mixed and percentile files are held against."""
    exporter = convert.get("onnx-int8")
    path = tmp_path_factory.mktemp("onnx-int8") / f"model{exporter.suffix}"
    exporter.export(trained_model, path, _context(calibration))
    return path


def _default_session_probabilities(path, images) -> np.ndarray:
    """Probabilities from ``onnxruntime.InferenceSession(path)`` with default options: how apps load a file."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {contract.INPUT_NAME: images[i:i + 64]})[0]
                           for i in range(0, len(images), 64)])


def _nodes_a_default_session_runs(path, tmp_path) -> list:
    """The graph a default session runs, after its optimizers (saved aside; the optimizations stay the default)."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "as_run.onnx")
    options.log_severity_level = 3  # its warning that the saved graph is hardware-specific
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return list(onnx.load(options.optimized_model_filepath).graph.node)


def _in_layer(name: str, layer: str) -> bool:
    return layer in name.split("/")


def test_onnx_int8_mixed_keeps_its_float_layers_float_in_a_default_session(trained_model, images, calibration,
                                                                         onnx_int8_file, tmp_path):
    import onnx

    float_layers = ("Conv1", "block_1_depthwise")  # the first conv: its input normalization must survive
    exporter = convert.get("onnx-int8-mixed")
    path = tmp_path / f"model{exporter.suffix}"
    exporter.export(trained_model, path, _context(calibration, float_layers=float_layers))
    graph = onnx.load(str(path)).graph
    made_by = {out: node for node in graph.node for out in node.output}
    float_weights = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT}
    convs = {layer: [n for n in graph.node if n.op_type == "Conv" and _in_layer(n.name, layer)]
             for layer in (*float_layers, "block_11_depthwise")}
    for layer in float_layers:
        (conv,) = convs[layer]
        # float32 weights, and no DequantizeLinear feeding it: onnxruntime quantizes a Conv between a
        # DequantizeLinear and a QuantizeLinear when it loads the file, float weights or not.
        assert conv.input[1] in float_weights, layer
        assert all(made_by[i].op_type != "DequantizeLinear" for i in conv.input if i in made_by), layer
    (block_11,) = convs["block_11_depthwise"]  # layers match whole name segments: block_11 stays int8
    assert made_by[block_11.input[1]].op_type == "DequantizeLinear"
    # Conv1 in float takes the image normalized in float, not the raw pixels of a folded input quantization.
    assert _onnx_ops_before_first_conv(path) == ["Sub", "Mul", "Transpose"]

    ran = _nodes_a_default_session_runs(path, tmp_path)
    quantized = [n.name for n in ran if n.op_type.startswith("QLinear")]
    assert not [n for n in quantized for layer in float_layers if _in_layer(n, layer)], quantized
    assert [n for n in quantized if _in_layer(n, "block_11_depthwise")]  # the others still run in int8

    reference = keras_probabilities(trained_model, images).argmax(1)
    mixed = (_default_session_probabilities(path, images).argmax(1) == reference).mean()
    plain = (_default_session_probabilities(onnx_int8_file, images).argmax(1) == reference).mean()
    # Not the collapse of a re-quantized layer (agreement 0.31 where the all-int8 file had 0.86, on flowers).
    # Two float layers need not agree better than all-int8 image for image: on this tiny model 0.974 against
    # 0.985 (3 of 270 images), so the bound allows 3 pp, far from a collapse.
    assert mixed >= plain - 0.03 and mixed >= 0.95, (mixed, plain)


def test_float_layers_map_to_onnx_nodes_by_whole_name_segments(trained_model, calibration, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from exporters.onnx import float_layer_nodes

    # tf2onnx's names: <model>/<layer>/<op>; a conv that absorbed its BatchNormalization outputs the BN's tensor.
    names = [("m/block_1_depthwise/depthwise", "m/block_1_depthwise_BN/FusedBatchNormV3:0"),
             ("m/block_1_depthwise_relu/Relu6", "m/block_1_depthwise_relu/Relu6:0"),
             ("m/block_11_depthwise/depthwise", "m/block_11_depthwise_BN/FusedBatchNormV3:0")]
    nodes, previous = [], "x"
    for name, out in names:
        nodes.append(helper.make_node("Relu", [previous], [out], name=name))
        previous = out
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", previous)]
    path = tmp_path / "names.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", value[:1], value[1:])), str(path))
    assert float_layer_nodes(path, ("block_1_depthwise",)) == ["m/block_1_depthwise/depthwise"]
    assert float_layer_nodes(path, ("block_1_depthwise_BN",)) == ["m/block_1_depthwise/depthwise"]
    assert float_layer_nodes(path, ("block_11_depthwise", "block_1_depthwise_relu")) == [
        "m/block_1_depthwise_relu/Relu6", "m/block_11_depthwise/depthwise"]
    with pytest.raises(ValueError, match="'block_2_depthwise'.*match no node"):
        float_layer_nodes(path, ("block_1_depthwise", "block_2_depthwise"))

    # Errors a caller can make, raised before any conversion.
    out = tmp_path / "never.onnx"
    with pytest.raises(ValueError, match="onnx-int8 quantizes every layer.*onnx-int8-mixed"):
        convert.get("onnx-int8").export(trained_model, out, _context(calibration, float_layers=("Conv1",)))
    with pytest.raises(ValueError, match="'block_1_depthwse' is no layer.*did you mean 'block_1_depthwise'"):
        convert.get("onnx-int8-mixed").export(trained_model, out,
                                              _context(calibration, float_layers=("block_1_depthwse",)))
    with pytest.raises(ValueError, match="unknown calibration method 'entropy'; valid methods: minmax, percentile"):
        convert.get("onnx-int8").export(trained_model, out, _context(calibration, calibration_method="entropy"))


def test_only_layers_with_ops_of_their_own_are_offered_as_float_layers(trained_model, calibration, tmp_path):
    # tf2onnx merges a ZeroPadding2D into its convolution's pads: block_1_pad has no ONNX node,
    # so the ONNX mixed format cannot keep it float (on flowers, every candidate that asked for it
    # failed as a whole); TFLite runs it as a Pad op of its own.
    ranked = ["block_1_pad", "Conv1", "block_1_depthwise", "block_3_pad"]
    ctx = _context(calibration)
    onnx_mixed = convert.get("onnx-int8-mixed")
    keep = onnx_mixed.keepable_float_layers(trained_model, ranked, ctx)
    assert keep == ["Conv1", "block_1_depthwise"]
    assert convert.get("tflite-int8-mixed").keepable_float_layers(trained_model, ranked, ctx) == ranked
    with pytest.raises(ValueError, match="'block_1_pad'.*match no node"):
        onnx_mixed.export(trained_model, tmp_path / "pad.onnx", _context(calibration, float_layers=("block_1_pad",)))
    onnx_mixed.export(trained_model, tmp_path / "kept.onnx", _context(calibration, float_layers=tuple(keep)))
    assert (tmp_path / "kept.onnx").stat().st_size > 0


def _activation_scales(path) -> dict[str, float]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return {n.name: float(values[n.input[1]]) for n in graph.node if n.op_type == "QuantizeLinear"}


def test_onnx_int8_percentile_calibration_makes_a_valid_file(trained_model, images, calibration, onnx_int8_file,
                                                             tmp_path):
    import onnx

    exporter = convert.get("onnx-int8")
    path = tmp_path / f"percentile{exporter.suffix}"
    exporter.export(trained_model, path, _context(calibration, calibration_method="percentile"))
    onnx.checker.check_model(str(path))
    # The ranges are percentile's: no activation range wider than minmax's, some narrower.
    minmax, percentile = _activation_scales(onnx_int8_file), _activation_scales(path)
    assert percentile.keys() == minmax.keys()
    assert all(percentile[q] <= minmax[q] * (1 + 1e-6) for q in minmax)
    assert any(percentile[q] < minmax[q] * 0.99 for q in minmax)
    reference = keras_probabilities(trained_model, images)
    check = validate(path, exporter, images, reference.argmax(1), reference)
    assert check.top1_agreement >= 0.95, check


@pytest.mark.parametrize("fmt", ["tflite-fp32", "tflite-fp16", "tflite-int8", "onnx-fp32", "onnx-int8"])
def test_sparsity_is_read_from_the_file(fmt, calibration, tmp_path):
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
    exporter = convert.get(fmt)
    path = tmp_path / f"sparse{exporter.suffix}"
    exporter.export(model, path, _context(calibration))
    measured = inspect.tflite_summary(path)["sparsity"] if exporter.runtime == "litert" else inspect.onnx_sparsity(path)
    assert measured == pytest.approx(0.5, abs=0.015)


def test_compare_holds_lossy_formats_to_an_accuracy_drop():
    exporter = convert.get("tflite-int8")
    reference = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 25]
    labels = reference.argmax(1)
    worse = reference.copy()
    worse[:2] = worse[2:4]  # two of 100 images now wrong: a 2-point drop, but 100 images cannot tell
    check = compare(worse, reference, labels, exporter)
    assert check.accuracy_drop_pp == pytest.approx(2.0) and check.verdict == "unproven" and check.passed
    assert "neither within nor over the 1 pp budget on 100 test images" in check.unproven
    many = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 100]
    worse = many.copy()
    worse[:16] = worse[1:17]  # 16 of 400 wrong: 4 points, over 1 even at the interval's best
    check = compare(worse, many, many.argmax(1), exporter)
    assert check.verdict == "over" and not check.passed
    assert "top-1 dropped 4.00 pp (95% interval" in check.failures[0] and "over the 1 pp budget" in check.failures[0]
    assert compare(worse, many, many.argmax(1), exporter, max_accuracy_drop_pp=15.0).verdict == "within"


def test_compare_flags_disagreement_and_large_differences():
    exporter = convert.get("tflite-fp32")
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


def test_a_reshape_that_gives_back_its_input_shape_is_dropped_and_the_graph_is_the_same_bytes(tiny_build):
    """tf2onnx leaves such Reshapes in or takes them out from one conversion to the next (exporters.onnx)."""
    import onnx
    from onnx import helper, numpy_helper

    from exporters.onnx import canonicalize, drop_noop_reshapes

    cfg, _ = tiny_build
    shipped = (cfg.build_root / "artifacts" / "tiny_fp32.onnx").read_bytes()
    proto = onnx.ModelProto.FromString(shipped)
    graph = proto.graph
    conv = next(i for i, n in enumerate(graph.node) if n.op_type == "Conv" and "depthwise" in n.name)
    source = graph.node[conv].input[0]
    shape = [d.dim_value or None for d in next(
        v for v in onnx.shape_inference.infer_shapes(proto).graph.value_info
        if v.name == source).type.tensor_type.shape.dim]
    # The same Reshape tf2onnx sometimes leaves: to [-1, H, W, C] of the input, under a counter-numbered name.
    graph.initializer.append(numpy_helper.from_array(np.array([-1, *shape[1:]], np.int64), "shape__77"))
    graph.node.insert(conv, helper.make_node("Reshape", [source, "shape__77"], ["reshaped__78"], name="Reshape__79"))
    graph.node[conv + 1].input[0] = "reshaped__78"
    # And one that changes the shape stays (a flatten feeding nothing: an extra graph output keeps it alive).
    graph.initializer.append(numpy_helper.from_array(np.array([-1, int(np.prod(shape[1:]))], np.int64), "flat"))
    graph.node.append(helper.make_node("Reshape", [source, "flat"], ["flattened"], name="Flatten"))
    graph.output.append(helper.make_tensor_value_info("flattened", onnx.TensorProto.FLOAT, None))
    assert len(graph.node) == len(onnx.ModelProto.FromString(shipped).graph.node) + 2

    drop_noop_reshapes(proto)
    canonicalize(proto)
    assert [n.op_type for n in proto.graph.node].count("Reshape") == [
        n.op_type for n in onnx.ModelProto.FromString(shipped).graph.node].count("Reshape") + 1
    flatten = proto.graph.node[-1]
    assert flatten.name == "Flatten"
    proto.graph.initializer.remove(next(i for i in proto.graph.initializer if i.name == flatten.input[1]))
    del proto.graph.node[-1], proto.graph.output[-1]
    assert proto.SerializeToString() == shipped
