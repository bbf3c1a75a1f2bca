"""How much each layer of a model loses when it is quantized to int8: the ranking the repair search uses.

TFLite's ``QuantizationDebugger`` runs the calibrated int8 model with every quantized
op's float twin beside it, on the same (quantized) input, so each op's error is its
own. The figure per op is the RMSE between the float and the dequantized int8 output
divided by the output's quantization step (``rmse/scale``, the debugger guide's
figure): about 0.29 is pure rounding of a uniform signal; far above it, that op's
range or weights do not fit in 8 bits. Ops are attributed to the Keras layer that
made them (``exporters.inspect.layer_of_tensor``), so one ranking serves both
TFLite and ONNX files.

A layer whose calibrated range collapsed (a step under ``COLLAPSED_SCALE``: calibration
saw a constant or all-zero output, e.g. hard-swish or squeeze-excite products of a
model trained a few epochs) clips every value off that point, so its ratio is
astronomical (measured: 6e39 on MobileNetV3) and says nothing but "collapsed". It stays
at the top of the ranking, and ``core.sensitivity.figure`` names it that way instead of
printing the ratio.
"""

from __future__ import annotations

import numpy as np

from exporters.converter import ExportContext


def _scale(float_values, quant_values, scale, zero_point) -> float:
    return float(scale)


def _rmse_per_scale(float_values, quant_values, scale, zero_point) -> float:
    dequantized = (np.asarray(quant_values, np.float32) - zero_point) * scale
    return float(np.sqrt(np.mean(np.square(np.asarray(float_values, np.float32) - dequantized))) / scale)


def layer_sensitivity(model, ctx: ExportContext, images: np.ndarray) -> list[dict]:
    """Layers of ``model``, most sensitive first: ``{"layer", "rmse_per_scale", "scale", "ops"}``.

    ``scale``: the smallest int8 step among the layer's ops (``core.sensitivity.collapsed`` reads it).

    ``ctx.calibration_images`` calibrate the ranges (as tflite-int8 does); ``images``
    (raw pixels, no labels) are the ones the errors are measured on.
    """
    from core.keras_compat import tf
    from tensorflow.lite.tools.optimize.debugging.python import debugger

    from exporters.folding import fold_normalization
    from exporters.inspect import layer_of_tensor
    from exporters.tflite import keras_converter, representative_dataset

    fold = fold_normalization(model)
    if fold is not None:  # as tflite-int8 converts it: without the preprocess layer
        model, calibration, images = fold.model, fold.normalize(ctx.calibration_images), fold.normalize(images)
    else:
        calibration = ctx.calibration_images
    converter = keras_converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(calibration)
    options = debugger.QuantizationDebugOptions(layer_direct_compare_metrics={"rmse_per_scale": _rmse_per_scale, "scale": _scale})
    debug = debugger.QuantizationDebugger(converter=converter, debug_dataset=representative_dataset(images),
                                          debug_options=options)
    debug.run()
    order = {layer.name: i for i, layer in enumerate(model.layers)}
    # The output layer is left out: its softmax is quantized on TFLite's fixed 1/256 grid, and
    # the debugger's figure for it is not an error measure (measured on flowers: 7e31).
    output_layer = model.layers[-1].name
    by_layer: dict[str, dict] = {}
    for tensor, metrics in debug.layer_statistics.items():
        layer = layer_of_tensor(tensor, order)
        if layer is None or layer == output_layer:
            continue
        row = by_layer.setdefault(layer, {"layer": layer, "rmse_per_scale": 0.0, "scale": float("inf"), "ops": 0})
        row["rmse_per_scale"] = max(row["rmse_per_scale"], round(float(metrics["rmse_per_scale"]), 4))
        row["scale"] = min(row["scale"], float(f"{float(metrics['scale']):.4g}"))
        row["ops"] += 1
    return sorted(by_layer.values(), key=lambda r: (-r["rmse_per_scale"], order[r["layer"]]))
