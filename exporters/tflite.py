"""TFLite exporters (run on phones by LiteRT).

All start from ``TFLiteConverter.from_keras_model`` on the flat model, whose
input is the raw-pixel [1, H, W, 3] float32 tensor of the preprocessing
contract; each subclass only sets the converter options that differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporters.registry import ExportContext, Exporter, Lossy, register


class TFLiteExporter(Exporter):
    runtime = "litert"

    def configure(self, converter, ctx: ExportContext) -> None:
        """Set quantization options; plain float32 needs none."""

    def export(self, model, path: Path, ctx: ExportContext) -> None:
        from pipeline.keras_compat import tf

        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        self.configure(converter, ctx)
        path.write_bytes(converter.convert())


@register("tflite-fp32")
class TFLiteFP32(TFLiteExporter):
    suffix = "_fp32.tflite"
    description = "TFLite, float32 weights and activations"


@register("tflite-fp16")
class TFLiteFP16(Lossy, TFLiteExporter):
    suffix = "_fp16.tflite"
    precision = "fp16"
    description = "TFLite, float16 weights (half the size; GPU delegates run it in fp16)"
    max_accuracy_drop_pp = 0.5

    def configure(self, converter, ctx: ExportContext) -> None:
        from pipeline.keras_compat import tf

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]


@register("tflite-dynamic")
class TFLiteDynamic(Lossy, TFLiteExporter):
    suffix = "_dynamic.tflite"
    precision = "dynamic-int8"
    description = "TFLite dynamic-range: int8 weights, activations quantized on the fly"

    def configure(self, converter, ctx: ExportContext) -> None:
        from pipeline.keras_compat import tf

        converter.optimizations = [tf.lite.Optimize.DEFAULT]


def representative_dataset(images: np.ndarray):
    """Calibration batches of one real training image each, as the converter expects."""

    def generate():
        for image in images:
            yield [image[None].astype(np.float32)]

    return generate


@register("tflite-int8")
class TFLiteInt8(Lossy, TFLiteExporter):
    suffix = "_int8.tflite"
    precision = "int8"
    description = "TFLite full-integer int8, calibrated on real training images"
    needs_calibration = True
    fully_integer = True

    def configure(self, converter, ctx: ExportContext) -> None:
        from pipeline.keras_compat import tf

        if ctx.calibration_images is None or not len(ctx.calibration_images):
            raise ValueError(f"{self.name} needs calibration images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(ctx.calibration_images)
        # Only integer kernels: conversion fails loudly rather than silently
        # leaving a float op that an int8-only accelerator cannot run.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = {"float": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[ctx.int8_io]
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type


@register("tflite-qat-int8")
class TFLiteQATInt8(TFLiteInt8):
    suffix = "_qat_int8.tflite"
    description = "TFLite full-integer int8 of the quantization-aware-trained model"
    source = "qat"


@register("tflite-pruned-int8")
class TFLitePrunedInt8(TFLiteInt8):
    suffix = "_pruned_int8.tflite"
    precision = "int8-sparse"
    description = "TFLite full-integer int8 of the pruned model after sparsity-preserving QAT (smaller gzip)"
    source = "pruned-qat"
    max_accuracy_drop_pp = 2.0
