"""Adaptive weight rounding (exporters.rounding): on the quantizer's grid, a smaller layer error, kept by the converter."""

from __future__ import annotations

import numpy as np
import pytest

from exporters import rounding


def _model(seed=0):
    """Conv -> BN -> ReLU6 -> depthwise -> BN -> ReLU6 -> 1x1 conv -> BN -> pool -> softmax, with BatchNorm
    statistics far from identity (as trained ones are)."""
    from core.keras_compat import keras

    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = keras.layers.BatchNormalization(name="dw_bn")(x)
    x = keras.layers.ReLU(6.0)(x)
    x = keras.layers.Conv2D(6, 1, use_bias=False, name="project")(x)
    x = keras.layers.BatchNormalization(name="project_bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.2, 3.0, c), rng.normal(0, 0.5, c), rng.normal(0, 0.3, c),
                               rng.uniform(0.05, 4.0, c)])
    return model


def _images(n=24, seed=1):
    """Smooth images with a positive mean, as post-ReLU activations and photos have."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 1, (n, 4, 4, 3))
    return np.kron(base, np.ones((1, 4, 4, 1))).astype(np.float32) + rng.normal(0, 0.05, (n, 16, 16, 3)).astype(np.float32)


def _folded(fold):
    kernel = fold.conv.get_weights()[0].astype(np.float64)
    k = fold.factor()
    gamma, beta, mean, var = (w.astype(np.float64) for w in fold.norm.get_weights())
    return kernel * k.reshape(1, 1, *kernel.shape[2:]) if fold.depthwise else kernel * k, beta - mean * k


def test_rounded_weights_sit_on_the_grid_with_the_same_scales_and_the_model_is_not_changed():
    model, images = _model(), _images()
    before = [w.copy() for w in model.get_weights()]
    copy, changes = rounding.round_weights(model, images, levels=127)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert [c.layer for c in changes] == ["stem", "dw", "project"]
    assert [c.rounding for c in changes] == [False, True, False]
    original = {f.conv.name: _folded(f)[0] for f in rounding.folds(model)}
    for fold in rounding.folds(copy):
        folded = _folded(fold)[0]
        axes = tuple(range(folded.ndim - 1)) if not fold.depthwise else (0, 1, 3)
        scale = np.abs(folded).max(axis=axes, keepdims=True) / 127
        np.testing.assert_allclose(np.abs(original[fold.conv.name]).max(axis=axes, keepdims=True) / 127, scale,
                                   rtol=1e-6)
        steps = folded / scale
        assert np.max(np.abs(steps - np.round(steps))) < 1e-3, fold.conv.name
    dw = next(c for c in changes if c.layer == "dw")
    assert dw.changed_weights > 0 and dw.error_after < dw.error_before


def _layer_error(model, copy, images, quantized_from):
    """Per channel, the depthwise layer's folded output with int8 weights minus the float one, on ``images``."""
    from core.keras_compat import keras, tf

    probe = keras.Model(model.inputs, model.get_layer("dw").input)
    x = tf.constant(probe(images, training=False).numpy(), tf.float64)
    fold = next(f for f in rounding.folds(model) if f.conv.name == "dw")
    w, b = _folded(fold)
    qfold = next(f for f in rounding.folds(quantized_from) if f.conv.name == "dw")
    qw, qb = _folded(qfold)
    scale = np.abs(qw).max(axis=(0, 1, 3), keepdims=True) / 127
    qw = np.round(qw / scale) * scale  # what the quantizer stores
    exact = tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME").numpy() + b
    quant = tf.nn.depthwise_conv2d(x, qw, [1, 1, 1, 1], "SAME").numpy() + qb
    return (quant - exact).reshape(-1, w.shape[2])


def test_adaptive_rounding_lowers_the_depthwise_output_error_and_takes_its_mean_off_the_bias():
    model, images = _model(), _images()
    copy, _ = rounding.round_weights(model, images, levels=127)
    nearest = _layer_error(model, copy, images, quantized_from=model)
    adaptive = _layer_error(model, copy, images, quantized_from=copy)
    assert np.mean(adaptive ** 2) < 0.9 * np.mean(nearest ** 2)
    # Bias correction: the mean error of every channel is gone on the images it was measured on.
    assert np.all(np.abs(adaptive.mean(0)) < 1e-6 + 1e-3 * np.abs(nearest.mean(0)).max())
    assert np.abs(nearest.mean(0)).max() > 10 * np.abs(adaptive.mean(0)).max()


def test_the_tflite_converter_stores_the_chosen_integers():
    from ai_edge_litert.interpreter import Interpreter

    from exporters.converter import ExportContext
    from exporters.tflite import TFLiteInt8

    model, images = _model(), _images()
    copy, _ = rounding.round_weights(model, images, levels=127)
    fold = next(f for f in rounding.folds(copy) if f.conv.name == "dw")
    folded = _folded(fold)[0][:, :, :, 0]
    expected = np.round(folded / (np.abs(folded).max(axis=(0, 1)) / 127))
    ctx = ExportContext(image_size=16, onnx_opset=17, calibration_images=images, int8_input="float",
                        weight_rounding="adaptive")
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.tflite"
        TFLiteInt8().export(model, path, ctx)
        interpreter = Interpreter(model_path=str(path))
    kernels = [d for d in interpreter.get_tensor_details()
               if d["dtype"] == np.int8 and list(d["shape"]) == [1, 3, 3, 8]]
    assert len(kernels) == 1
    stored = interpreter.get_tensor(kernels[0]["index"])[0].astype(np.float64)
    np.testing.assert_array_equal(stored, expected)
    nearest_ones = np.round(_folded(next(f for f in rounding.folds(model) if f.conv.name == "dw"))[0][:, :, :, 0]
                            / (np.abs(folded).max(axis=(0, 1)) / 127))
    assert np.any(stored != nearest_ones)  # the file differs from what nearest rounding stores


def test_every_rounding_is_tried_for_small_kernels_and_a_coordinate_search_never_loses_to_nearest(monkeypatch):
    rng = np.random.default_rng(3)
    for trial in range(20):
        n = 9
        w = rng.uniform(-127, 127, n)
        w[0] = 0.0
        w[np.argmax(np.abs(w))] = 127.0 * np.sign(w[np.argmax(np.abs(w))])
        a = rng.normal(size=(n, n))
        cov = a @ a.T + 0.1 * np.eye(n)
        q, nearest_cost, cost = rounding._best_rounding(w, cov, 127)
        assert cost <= nearest_cost + 1e-12 and q[0] == 0 and np.abs(q).max() == 127
        assert np.all(np.abs(q - w) < 1)  # each weight went to one of its two neighbours
        monkeypatch.setattr(rounding, "EXHAUSTIVE_WEIGHTS", 0)
        q_greedy, _, greedy_cost = rounding._best_rounding(w, cov, 127)
        monkeypatch.setattr(rounding, "EXHAUSTIVE_WEIGHTS", 10)
        assert cost <= greedy_cost + 1e-12 <= nearest_cost + 2e-12


def test_unknown_rounding_and_asymmetric_onnx_weights_are_refused_with_the_valid_choices(tmp_path):
    from exporters.converter import ExportContext
    from exporters.onnx import ONNXInt8

    with pytest.raises(ValueError, match="valid: nearest, adaptive"):
        rounding.rounded(_model(), _images(), "stochastic", 127)
    ctx = ExportContext(image_size=16, onnx_opset=17, calibration_images=_images(), int8_types="u8u8",
                        weight_rounding="adaptive")
    with pytest.raises(ValueError, match="symmetric int8 weights"):
        ONNXInt8().export(_model(), tmp_path / "m.onnx", ctx)


def test_a_recipe_records_its_rounding_and_an_older_record_reads_as_nearest():
    from pipeline import repair

    recipe = repair.Recipe(200, "minmax", (), "", "adaptive")
    assert repair.Recipe.from_dict(recipe.as_dict()) == recipe
    assert "adaptive weight rounding" in recipe.describe()
    old = {"calibration_images": 200, "calibration_method": "minmax", "float_layers": []}
    assert repair.Recipe.from_dict(old).weight_rounding == "nearest"


def test_the_search_tries_the_other_rounding_before_more_images_and_uint8_weights_with_nearest():
    from exporters.onnx import ONNXInt8
    from pipeline import repair

    base = repair.Recipe(200, weight_rounding="adaptive")
    candidates = repair.calibration_candidates(base, ("minmax", "percentile"), 3000, ("u8s8-7bit", "s8s8", "u8u8"),
                                               ("adaptive", "nearest"), unsupported=ONNXInt8().unsupported)
    assert [(c.calibration_images, c.calibration_method, c.int8_types, c.weight_rounding) for c in candidates] == [
        (200, "percentile", "", "adaptive"), (200, "minmax", "s8s8", "adaptive"), (200, "percentile", "s8s8", "adaptive"),
        (200, "minmax", "u8u8", "nearest"), (200, "percentile", "u8u8", "nearest"), (200, "minmax", "", "nearest"),
        (1000, "minmax", "", "adaptive"), (1000, "minmax", "s8s8", "adaptive"), (1000, "minmax", "u8u8", "nearest")]
