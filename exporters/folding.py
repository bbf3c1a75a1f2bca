"""Folding the model's input normalization into the quantization of its input.

A quantized tensor q stands for ``scale * (q - zero_point)``. When the
``preprocess`` layer computes ``(pixel - mean) / std`` with one mean and one std
for all three channels and no channel reversal (MobileNetV2: 127.5, 127.5), an
exporter can convert the model *without* that layer, calibrate it on normalized
images, and then let the input's quantization take the raw pixel: scale 1/std,
zero point mean (rounded to an integer: 128 for 127.5, half a grey level off, as
in Google's own int8 MobileNetV2). No normalization op then runs on the
full-resolution image: on MobileNetV2 1.0 at 224 px, 1 thread, LiteRT's int8
SUB+MUL took ~0.8 ms of 4.2, onnxruntime's float Sub+Mul (broadcast over the
3-channel last axis) ~1.4 ms of 5.6 (profiled).

ResNet50's caffe preprocessing (BGR, a mean per channel) cannot be folded that
way; exporters keep it in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FoldedNormalization:
    model: object  # the Keras model from the preprocess layer's output on: takes normalized images
    layer: object  # the preprocess layer
    mean: float
    std: float

    def normalize(self, images: np.ndarray, batch: int = 64) -> np.ndarray:
        """Raw-pixel images through the preprocess layer, as the folded model's calibration wants them."""
        from core.keras_compat import tf

        if images is None or not len(images):
            return images
        return np.concatenate([self.layer(tf.constant(images[i:i + batch], tf.float32)).numpy()
                               for i in range(0, len(images), batch)])


def fold_normalization(model) -> FoldedNormalization | None:
    """The model without its ``preprocess`` layer and that layer's (mean, std), when they can fold; else None.

    The layer is found by name, so a tfmot QAT model that left it un-annotated folds too.
    """
    found = _preprocess_call(model)
    if found is None:
        return None
    layer, output = found
    mean, std = getattr(layer, "mean", None), getattr(layer, "std", None)
    if mean is None or std is None or getattr(layer, "channel_order", None) != "RGB":
        return None
    if len(set(mean)) != 1 or len(set(std)) != 1 or not 0 <= mean[0] <= 255 or std[0] <= 0:
        return None
    from core.keras_compat import keras

    try:
        core = keras.Model(output, model.outputs, name=f"{model.name}_core")
    except ValueError:  # the raw input also reaches past the layer: "cannot be reached"
        return None
    return FoldedNormalization(core, layer, float(mean[0]), float(std[0]))


def _preprocess_call(model):
    """(layer, output tensor) of the ``preprocess`` layer applied to the model's single input, or None.

    tfmot's quantize_apply reuses an un-annotated layer object, which then has
    one call per model: take the call on this model's input.
    """
    from core.contract import PREPROCESS_LAYER

    if len(model.inputs) != 1:
        return None
    try:
        layer = model.get_layer(PREPROCESS_LAYER)
    except ValueError:
        return None
    for i in range(len(layer.inbound_nodes)):
        if layer.get_input_at(i) is model.inputs[0]:
            return layer, layer.get_output_at(i)
    return None
