"""ONNX exporters (tf2onnx), run by onnxruntime."""

from __future__ import annotations

import logging
from pathlib import Path

from exporters.registry import ExportContext, Exporter, register


@register("onnx-fp32")
class ONNXFP32(Exporter):
    suffix = "_fp32.onnx"
    runtime = "onnxruntime"
    description = "ONNX (tf2onnx), float32"

    def export(self, model, path: Path, ctx: ExportContext) -> None:
        import onnx
        import tf2onnx
        from tf2onnx import verbose_logging

        # tf2onnx logs every graph rewrite at INFO; keep the run log about our stages.
        verbose_logging.set_level(logging.WARNING)

        from pipeline.keras_compat import tf

        # A dynamic batch dimension lets servers batch while phones feed one image.
        spec = (tf.TensorSpec((None, ctx.image_size, ctx.image_size, 3), tf.float32, name="image"),)
        proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=ctx.onnx_opset)
        onnx.checker.check_model(proto)
        path.write_bytes(proto.SerializeToString())
