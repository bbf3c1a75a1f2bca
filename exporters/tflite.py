"""TFLite exporters (run on phones by LiteRT)."""

from __future__ import annotations

from pathlib import Path

from exporters.registry import ExportContext, Exporter, register


class TFLiteExporter(Exporter):
    runtime = "litert"

    def converter(self, model, ctx: ExportContext):
        from pipeline.keras_compat import tf

        # from_keras_model traces the model with its own input signature, so the
        # file's input is the raw-pixel [1, H, W, 3] float32 tensor of the contract.
        return tf.lite.TFLiteConverter.from_keras_model(model)

    def export(self, model, path: Path, ctx: ExportContext) -> None:
        path.write_bytes(self.converter(model, ctx).convert())


@register("tflite-fp32")
class TFLiteFP32(TFLiteExporter):
    suffix = "_fp32.tflite"
    description = "TFLite, float32 weights and activations"
