"""ONNX exporters (tf2onnx), run by onnxruntime."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np

from exporters.converter import Converter, ExportContext


def keras_to_onnx(model, path: Path, ctx: ExportContext) -> None:
    """tf2onnx's conversion of ``model``, the same bytes for the same model whatever the process did before."""
    import onnx

    from exporters.onnx_process import convert

    convert(model, path, ctx.image_size, ctx.onnx_opset)
    proto = onnx.load(str(path))
    canonicalize(proto)
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())


_COUNTER = re.compile(r"__\d+")


def canonicalize(proto) -> None:
    """Name the graph's nodes, tensors and constants the same way for the same model, in place.

    tf2onnx names what it inserts from a process-wide counter and, when it merges equal
    constants, keeps whichever name it met first in an order that changes from run to run
    (measured: two conversions of one model in two processes, same ops in the same order,
    35 of 142 nodes fed differently named constants). So: counters are dropped from node and
    tensor names (a repeat gets ``__2``, ``__3``... in node order), each constant is named after
    its first consumer and input slot, and the constants are stored sorted by name. The graph's
    inputs and outputs keep their names.
    """
    import onnx

    graph = proto.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return  # control flow with subgraphs: not produced for our models; left as it is
    boundary = {v.name for v in graph.input} | {v.name for v in graph.output}
    used: set[str] = set(boundary)

    def unique(base: str) -> str:
        name, k = base, 1
        while name in used:
            k += 1
            name = f"{base}__{k}"
        used.add(name)
        return name

    constants = {i.name for i in graph.initializer}
    tensors: dict[str, str] = {name: name for name in boundary}
    for node in graph.node:
        node.name = unique(_COUNTER.sub("", node.name) or node.op_type)
        for slot, name in enumerate(node.input):
            if name in constants and name not in tensors:
                tensors[name] = unique(f"{node.name}:{slot}")
        for name in node.output:
            if name and name not in tensors:
                tensors[name] = unique(_COUNTER.sub("", name))
    for init in graph.initializer:
        if init.name not in tensors:  # unused constant
            tensors[init.name] = unique(_COUNTER.sub("", init.name))
    for node in graph.node:
        node.input[:] = [tensors.get(n, n) if n else n for n in node.input]
        node.output[:] = [tensors.get(n, n) if n else n for n in node.output]
    for init in graph.initializer:
        init.name = tensors[init.name]
    for info in graph.value_info:
        info.name = tensors.get(info.name, info.name)
    # Free dimensions are named from the same counter ("unk__648"): the batch of the graph's
    # inputs and outputs becomes "batch", any other one "dim_1", "dim_2"... in order of appearance.
    symbols: dict[str, str] = {}
    for where, values in (("boundary", list(graph.input) + list(graph.output)), ("inside", graph.value_info)):
        for value in values:
            for axis, dim in enumerate(value.type.tensor_type.shape.dim):
                if dim.HasField("dim_param"):
                    if dim.dim_param not in symbols:
                        batch = where == "boundary" and axis == 0
                        symbols[dim.dim_param] = "batch" if batch else f"dim_{len(symbols) + 1}"
                    dim.dim_param = symbols[dim.dim_param]
    ordered = sorted(graph.initializer, key=lambda i: i.name)
    del graph.initializer[:]
    graph.initializer.extend(ordered)
    infos = sorted(graph.value_info, key=lambda v: v.name)
    del graph.value_info[:]
    graph.value_info.extend(infos)


class ONNXFP32(Converter):
    format = "onnx-fp32"

    def export(self, model, path: Path, ctx: ExportContext) -> None:
        keras_to_onnx(model, path, ctx)


class ONNXInt8(Converter):
    format = "onnx-int8"

    def export(self, model, path: Path, ctx: ExportContext) -> None:
        from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                              quantize_static)

        from exporters.folding import fold_normalization

        if ctx.calibration_images is None or not len(ctx.calibration_images):
            raise ValueError(f"{self.format} needs calibration images")
        # As for tflite-int8: a foldable normalization becomes the input QuantizeLinear's
        # scale and zero point, so no float Sub/Mul runs on the full-resolution image.
        fold = fold_normalization(model)
        calibration = ctx.calibration_images if fold is None else fold.normalize(ctx.calibration_images)

        class Reader(CalibrationDataReader):
            def __init__(self, images: np.ndarray):
                self._batches = iter([{"image": img[None].astype(np.float32)} for img in images])

            def get_next(self):
                return next(self._batches, None)

        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            fp32, prepared = Path(tmp) / "fp32.onnx", Path(tmp) / "prepared.onnx"
            keras_to_onnx(model if fold is None else fold.model, fp32, ctx)
            # Shape inference and graph fusions first, as onnxruntime's quantization guide asks.
            quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
            # U8S8 (uint8 activations, int8 per-channel weights): the combination
            # onnxruntime's x86 kernels run fastest; S8S8 (its default) is slower there.
            # reduce_range: weights in 7 bits. On x86 without VNNI, onnxruntime's U8S8 kernels
            # sum pairs of products in 16 bits, which full-range weights can saturate (its
            # quantization docs advise reduce_range there). Measured on the tests' tiny digits
            # model on an AVX2-only AMD EPYC: top-1 agreement with Keras 0.856 without it,
            # 0.985 with it (270 test images); the file ships to such edge boxes too.
            quantize_static(
                str(prepared), str(path), Reader(calibration),
                quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=nodes_before_first_conv(prepared),
            )
        if fold is not None:
            quantize_raw_pixels(path, fold.mean, fold.std)
        import onnx

        proto = onnx.load(str(path))
        canonicalize(proto)
        onnx.checker.check_model(proto)
        path.write_bytes(proto.SerializeToString())


def quantize_raw_pixels(path: Path, mean: float, std: float) -> None:
    """Let the QuantizeLinear ops that quantize the (normalized) graph input take raw pixels instead.

    The input q-grid stays the calibrated one, ``value = s * (q - z)`` with the
    DequantizeLinear (and the int32 bias) untouched; a raw pixel p lands on it as
    ``q = round((p - mean) / std / s + z) = round(p / (s * std) + z - mean / (s * std))``:
    scale ``s * std``, zero point ``z - mean / (s * std)`` rounded (half a grey level
    at most: 0.5 for MobileNetV2's mean 127.5).
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    graph = proto.graph
    source = graph.input[0].name
    inits = {i.name: i for i in graph.initializer}
    layout = {n.output[0] for n in graph.node if n.op_type == "Transpose" and n.input[0] == source}
    quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] in layout | {source}]
    if not quantizers:
        raise ValueError(f"{path}: no QuantizeLinear takes the input {source!r}; cannot fold its normalization")
    for q in quantizers:
        s = float(numpy_helper.to_array(inits[q.input[1]]))
        z_array = numpy_helper.to_array(inits[q.input[2]])
        info = np.iinfo(z_array.dtype)
        zero_point = float(z_array) - mean / (s * std)
        rounded = int(np.floor(zero_point + 0.5))
        if not info.min <= rounded <= info.max:
            raise ValueError(f"{path}: folded zero point {zero_point:.1f} is outside {z_array.dtype}")
        scale_name, zero_name = f"{q.name}_raw_pixel_scale", f"{q.name}_raw_pixel_zero_point"
        graph.initializer.append(numpy_helper.from_array(np.array(s * std, np.float32), scale_name))
        graph.initializer.append(numpy_helper.from_array(np.array(rounded, z_array.dtype), zero_name))
        q.input[1], q.input[2] = scale_name, zero_name
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def nodes_before_first_conv(path: Path) -> list[str]:
    """The in-graph normalization (Sub, Mul, layout Transpose) ahead of the first convolution.

    Quantizing these element-wise ops on the full-resolution image costs more than
    it saves: measured on MobileNetV2 1.0 at 224 px, 1 thread, keeping them in
    float took onnx-int8 from 5.80 to 5.11 ms (fp32: 9.06 ms). (Where the
    normalization folds, only the Transpose is left here.)
    """
    import onnx

    names = []
    for node in onnx.load(str(path)).graph.node:
        if node.op_type == "Conv":
            break
        names.append(node.name)
    return names


CONVERTERS = (ONNXFP32, ONNXInt8)
