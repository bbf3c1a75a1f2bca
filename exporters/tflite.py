"""TFLite exporters (run on phones by LiteRT).

All start from the flat model's inference function, frozen in memory
(``keras_converter``), whose input is the raw-pixel [1, H, W, 3] float32 tensor
of the preprocessing contract; each subclass only sets the converter options
that differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exporters.converter import Converter, ExportContext
from exporters.inspect import RAW_PIXEL_METADATA


def keras_converter(model):
    """A TFLite converter for ``model(image, training=False)``, frozen in memory.

    ``TFLiteConverter.from_keras_model`` first saves the model as a SavedModel and loads
    it back, tracing every layer's call functions on the way: measured on the tiny test
    model (MobileNetV2 0.35, 32 px), 13.2 s of a 13.9 s conversion, and the same files
    (same ops, outputs equal bit for bit) come from the frozen concrete function in 0.8 s.
    That path writes no SignatureDef, which ``with_serving_signature`` adds back.
    """
    from core.keras_compat import tf

    (source,) = model.inputs
    name = source.name.split(":")[0]
    output_name = model.output_names[0]

    @tf.function(input_signature=[tf.TensorSpec(source.shape, source.dtype, name=name)])
    def serve(image):
        return {output_name: model(image, training=False)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], model)
    converter.experimental_lower_to_saved_model = False  # the point: no SavedModel round trip
    return converter


def with_serving_signature(flatbuffer: bytes, model) -> bytes:
    """The flatbuffer with the ``serving_default`` signature a SavedModel conversion writes.

    Runtimes and apps look the input and output up by signature (LiteRT's
    ``get_signature_runner``, Android's ``runSignature``); the names are the Keras
    model's input and output names, and the tensors are named as a SavedModel
    conversion names them.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    packed = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    graph = packed.subgraphs[0]
    input_name, output_name = model.inputs[0].name.split(":")[0], model.output_names[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError(f"expected one input and one output, found {len(graph.inputs)} and {len(graph.outputs)}")
    signature = schema.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = "serving_default", 0
    signature.inputs, signature.outputs = [schema.TensorMapT()], [schema.TensorMapT()]
    signature.inputs[0].name, signature.inputs[0].tensorIndex = input_name, int(graph.inputs[0])
    signature.outputs[0].name, signature.outputs[0].tensorIndex = output_name, int(graph.outputs[0])
    graph.tensors[int(graph.inputs[0])].name = f"serving_default_{input_name}:0"
    graph.tensors[int(graph.outputs[0])].name = "StatefulPartitionedCall:0"
    packed.signatureDefs = [signature]
    builder = flatbuffers.Builder(len(flatbuffer) + 1024)
    builder.Finish(packed.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


class TFLiteConverter(Converter):

    def configure(self, converter, ctx: ExportContext) -> None:
        """Set quantization options; plain float32 needs none."""

    def export(self, model, path: Path, ctx: ExportContext) -> None:
        converter = keras_converter(model)
        self.configure(converter, ctx)
        path.write_bytes(with_serving_signature(converter.convert(), model))


class TFLiteFP32(TFLiteConverter):
    format = "tflite-fp32"


class TFLiteFP16(TFLiteConverter):
    format = "tflite-fp16"

    def configure(self, converter, ctx: ExportContext) -> None:
        from core.keras_compat import tf

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]


class TFLiteDynamic(TFLiteConverter):
    format = "tflite-dynamic"

    def configure(self, converter, ctx: ExportContext) -> None:
        from core.keras_compat import tf

        converter.optimizations = [tf.lite.Optimize.DEFAULT]


def representative_dataset(images: np.ndarray):
    """Calibration batches of one real training image each, as the converter expects."""

    def generate():
        for image in images:
            yield [image[None].astype(np.float32)]

    return generate


_INTEGER_TYPES = {"uint8": (np.uint8, 0), "int8": (np.int8, -128)}  # numpy type, pixel offset


def convert_full_integer(model, ctx: ExportContext, configure, quantize=None) -> bytes:
    """A full-integer TFLite flatbuffer of ``model`` with ``ctx.int8_input`` in, ``ctx.int8_output`` out.

    ``configure(converter, ctx)`` sets the quantization options (calibration for
    post-training quantization; none for a QAT model, whose ranges are learned).
    With integer input the stored integer is the camera byte (uint8) or the byte
    minus 128 (int8), and the file says so in its metadata:

    - normalization foldable (see ``exporters.folding``): the converter sees the
      model without its ``preprocess`` layer, calibrated on normalized images, and the
      input's quantization becomes scale 1/std, zero point round(mean): no int8
      SUB/MUL runs on the full-resolution image (Google's int8 MobileNetV2 does the same);
    - otherwise the normalization stays in the graph and the input's quantization is
      pinned to scale 1 (the calibrated one is already close: pixels span 0..255).
    """
    from dataclasses import replace

    from exporters.folding import fold_normalization

    input_name = model.inputs[0].name.split(":")[0] if len(model.inputs) == 1 else None
    fold = fold_normalization(model) if ctx.int8_input in _INTEGER_TYPES else None
    if fold is not None:
        model = fold.model
        ctx = replace(ctx, calibration_images=fold.normalize(ctx.calibration_images))
    from exporters.rounding import rounded

    # A mixed file's float layers keep their trained weights.
    model = rounded(model, ctx.calibration_images, ctx.weight_rounding, levels=127, keep_float=ctx.float_layers)
    converter = keras_converter(model)
    configure(converter, ctx)
    # ``quantize(converter, model, ctx)``: a converter that quantizes the calibrated model itself
    # (tflite-int8-mixed keeps some layers float); by default the converter's own pass.
    flatbuffer = with_serving_signature(converter.convert() if quantize is None else quantize(converter, model, ctx),
                                        model)
    if ctx.int8_input not in _INTEGER_TYPES:
        return flatbuffer
    offset = _INTEGER_TYPES[ctx.int8_input][1]
    if fold is not None:
        scale, zero_point = 1.0 / fold.std, int(np.floor(fold.mean + 0.5)) + offset
    else:
        scale, zero_point = 1.0, offset
    return set_raw_pixel_input(flatbuffer, scale, zero_point, offset, input_name=input_name)


def set_raw_pixel_input(flatbuffer: bytes, scale: float, zero_point: int, pixel_offset: int,
                        input_name: str | None = None) -> bytes:
    """Give the (single, integer) input the quantization ``scale``/``zero_point`` and record that it takes
    ``pixel + pixel_offset``; ``input_name`` renames the input (signature and tensor).

    The first kernel keeps the input scale it was calibrated for (its int32 bias
    is quantized with it): when the input does not already go through a QUANTIZE
    op (uint8 input does), one is inserted to requantize.
    """
    import json

    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1:
        raise ValueError(f"expected one input tensor, found {len(graph.inputs)}")
    index = int(graph.inputs[0])
    tensor = graph.tensors[index]
    if tensor.quantization is None or tensor.type not in (schema.TensorType.UINT8, schema.TensorType.INT8):
        raise ValueError("the input tensor is not quantized uint8/int8")

    def opcode(op):
        code = model.operatorCodes[op.opcodeIndex]
        return max(code.builtinCode, code.deprecatedBuiltinCode)

    consumers = [op for op in graph.operators if index in list(op.inputs)]
    if not all(opcode(op) == schema.BuiltinOperator.QUANTIZE for op in consumers):
        index = _insert_requantize(model, graph, index, schema)
        tensor = graph.tensors[index]
    tensor.quantization.scale = [float(scale)]
    tensor.quantization.zeroPoint = [int(zero_point)]
    if input_name is not None:
        for signature in model.signatureDefs or []:
            for entry in signature.inputs:
                entry.name = input_name
        tensor.name = f"serving_default_{input_name}:0"
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps({"pixel_offset": int(pixel_offset)}).encode(), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = RAW_PIXEL_METADATA, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != RAW_PIXEL_METADATA.encode()] + [entry]
    builder = flatbuffers.Builder(len(flatbuffer) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _insert_requantize(model, graph, old: int, schema) -> int:
    """Make a new input tensor feed the old one through a QUANTIZE op; return the new tensor's index."""
    import copy

    new_tensor = copy.deepcopy(graph.tensors[old])
    new_tensor.buffer = 0  # the empty buffer: an input has no data
    name = graph.tensors[old].name
    graph.tensors[old].name = (name.decode() if isinstance(name, bytes) else name) + "_requantized"
    graph.tensors.append(new_tensor)
    new = len(graph.tensors) - 1
    codes = [i for i, c in enumerate(model.operatorCodes)
             if max(c.builtinCode, c.deprecatedBuiltinCode) == schema.BuiltinOperator.QUANTIZE]
    if codes:
        code_index = codes[0]
        model.operatorCodes[code_index].version = max(model.operatorCodes[code_index].version, 2)
    else:
        code = schema.OperatorCodeT()
        code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.QUANTIZE
        code.version = 2  # int8 -> int8 requantization
        model.operatorCodes.append(code)
        code_index = len(model.operatorCodes) - 1
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = code_index, [new], [old]
    op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.QuantizeOptions, schema.QuantizeOptionsT()
    graph.operators.insert(0, op)
    graph.inputs = [new]
    for signature in model.signatureDefs or []:
        for entry in signature.inputs:
            if entry.tensorIndex == old:
                entry.tensorIndex = new
    return new


class TFLiteInt8(TFLiteConverter):
    format = "tflite-int8"

    def configure(self, converter, ctx: ExportContext) -> None:
        from core.keras_compat import tf

        if ctx.calibration_images is None or not len(ctx.calibration_images):
            raise ValueError(f"{self.format} needs calibration images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(ctx.calibration_images)
        # Only integer kernels: conversion fails loudly rather than silently
        # leaving a float op that an int8-only accelerator cannot run.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        types = {"float": tf.float32, "int8": tf.int8, "uint8": tf.uint8}
        converter.inference_input_type = types[ctx.int8_input]
        converter.inference_output_type = types[ctx.int8_output]

    def export(self, model, path: Path, ctx: ExportContext) -> None:
        path.write_bytes(convert_full_integer(model, ctx, self.configure))


class TFLiteInt8Mixed(TFLiteInt8):
    """tflite-int8 with the layers in ``ctx.float_layers`` left in float32.

    The converter only calibrates; TFLite's MLIR quantizer then quantizes the calibrated
    model with those layers' ops on its deny list (what ``QuantizationDebugger`` does
    with ``denylisted_nodes``), and float kernels are allowed for them alone.
    """

    format = "tflite-int8-mixed"

    def configure(self, converter, ctx: ExportContext) -> None:
        from core.keras_compat import tf

        super().configure(converter, ctx)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
        converter._experimental_calibrate_only = True  # noqa: SLF001 - the documented debugger recipe

    def quantize(self, converter, model, ctx: ExportContext) -> bytes:
        from core.keras_compat import tf
        from tensorflow.lite.python.convert import mlir_quantize

        from exporters.inspect import tensors_of_layers

        calibrated = converter.convert()
        denied = tensors_of_layers(calibrated, ctx.float_layers, model)
        types = {"float": tf.float32, "int8": tf.int8, "uint8": tf.uint8}
        return mlir_quantize(calibrated, input_data_type=types[ctx.int8_input],
                             output_data_type=types[ctx.int8_output], denylisted_nodes=denied)

    def export(self, model, path: Path, ctx: ExportContext) -> None:
        if not ctx.float_layers:
            raise ValueError(f"{self.format} needs the layers to keep in float (the repair search chooses them)")
        path.write_bytes(convert_full_integer(model, ctx, self.configure, self.quantize))


class TFLiteQATInt8(TFLiteInt8):
    """The learned ranges of the QAT model; the converter still reads calibration images, as for tflite-int8."""

    format = "tflite-qat-int8"


class TFLitePrunedInt8(TFLiteInt8):
    format = "tflite-pruned-int8"


CONVERTERS = (TFLiteFP32, TFLiteFP16, TFLiteDynamic, TFLiteInt8, TFLiteInt8Mixed, TFLiteQATInt8, TFLitePrunedInt8)
