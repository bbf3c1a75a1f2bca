"""Read exported files back: which ops run in float, and how sparse the weights really are.

Figures here come from the bytes of the file, not from the config that made
it: a pruned model whose zeros were lost in conversion shows up as dense.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# TFLite TensorType codes (schema.fbs) of the tensor types we meet.
_FLOAT_TYPES = {0: "float32", 1: "float16", 10: "float64"}
_NUMPY = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 9: np.int8, 7: np.int16, 4: np.int64}
# Ops whose kernels count as "prunable weights": the convolutions and dense layers
# tfmot prunes. Depthwise kernels are excluded, as tfmot's prune registry does.
_KERNEL_OPS = {"CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"}


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _op_names():
    schema = _schema()
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def op_name(model, op, names: dict[int, str]) -> str:
    """The builtin name of a TFLite operator ("CUSTOM" for others); ``names`` is ``_op_names()``."""
    code = model.OperatorCodes(op.OpcodeIndex())
    # Codes past 127 live only in BuiltinCode; older files keep them in the deprecated byte.
    return names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")


def tflite_summary(path: Path) -> dict:
    """Float ops outside the I/O boundary, and sparsity of conv/dense kernels, read from the flatbuffer."""
    schema = _schema()
    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAsModel(buf, 0)
    names = _op_names()
    graph = model.Subgraphs(0)
    inputs, outputs = set(graph.InputsAsNumpy().tolist()), set(graph.OutputsAsNumpy().tolist())

    def tensor(i):
        return graph.Tensors(i)

    def is_constant(i):
        b = model.Buffers(tensor(i).Buffer())
        return b is not None and b.DataLength() > 0

    float_ops, kernels = [], []
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        name = op_name(model, op, names)
        ins = [i for i in op.InputsAsNumpy().tolist() if i >= 0]
        outs = op.OutputsAsNumpy().tolist()
        if name in _KERNEL_OPS and len(ins) > 1:
            kernels.append(_weight_tensor(model, graph, ins[1]))
        # Boundary conversions are allowed: float pixels in, float probabilities out.
        if name == "QUANTIZE" and set(ins) <= inputs:
            continue
        if name == "DEQUANTIZE" and set(outs) <= outputs:
            continue
        if name == "DEQUANTIZE" and all(is_constant(i) for i in ins):
            float_ops.append(name)  # fp16 weights expanded to float at load time
            continue
        if any(tensor(i).Type() in _FLOAT_TYPES for i in ins + outs if not is_constant(i)):
            float_ops.append(name)
    zeros = sum(int(z) for z, _ in kernels if z is not None)
    total = sum(int(n) for z, n in kernels if z is not None)
    return {
        "fully_integer": not float_ops,
        "float_ops": sorted(set(float_ops)),
        "sparsity": round(zeros / total, 6) if total else 0.0,
        "prunable_weights": total,
        "input": _input_summary(path, tensor(graph.Inputs(0))),
    }


# Metadata entry of a full-integer file whose integer input is the camera byte itself
# (written by ``exporters.tflite.set_raw_pixel_input``): JSON {"pixel_offset": k} says the stored
# integer is ``pixel + k`` (0 for uint8, -128 for int8), whatever the tensor's quantization
# describes (for a folded file, the normalized value).
RAW_PIXEL_METADATA = "pipeline.raw_pixel_input"


def raw_pixel_offset(path: Path) -> int | None:
    """``k`` when the file's integer input is ``pixel + k`` (see ``set_raw_pixel_input``), else None."""
    import json

    from ai_edge_litert import schema_py_generated as schema

    buf = Path(path).read_bytes()
    model = schema.Model.GetRootAsModel(buf, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == RAW_PIXEL_METADATA.encode():
            return int(json.loads(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())["pixel_offset"])
    return None


def _input_summary(path, t) -> dict:
    """What an app feeds: dtype, and for an integer input what the integer stands for."""
    dtype = np.dtype(_NUMPY.get(t.Type(), np.float32)).name
    if not np.issubdtype(np.dtype(dtype), np.integer):
        return {"dtype": dtype, "feed": "raw RGB pixels 0..255 as float"}
    q = t.Quantization()
    offset = raw_pixel_offset(path)
    feed = ("quantize raw pixels with scale and zero_point" if offset is None else
            "raw RGB pixel bytes" if offset == 0 else f"raw RGB pixel bytes {offset:+d}")
    return {"dtype": dtype, "scale": float(q.ScaleAsNumpy()[0]), "zero_point": int(q.ZeroPointAsNumpy()[0]),
            "feed": feed}


def _weight_tensor(model, graph, index):
    """(zero count, element count) of a kernel; follows a DEQUANTIZE of fp16 weights back to its constant."""
    t = graph.Tensors(index)
    data = model.Buffers(t.Buffer())
    if data is None or data.DataLength() == 0:
        producer = _producer(graph, index)
        if producer is None:
            return None, 0
        return _weight_tensor(model, graph, producer.InputsAsNumpy()[0])
    dtype = _NUMPY.get(t.Type())
    if dtype is None:
        return None, 0
    values = np.frombuffer(data.DataAsNumpy().tobytes(), dtype=dtype)
    zero = 0
    q = t.Quantization()
    if q is not None and q.ZeroPointLength() and np.issubdtype(dtype, np.integer):
        zp = q.ZeroPointAsNumpy()
        zero = zp if zp.size == 1 else None
        if zero is None:  # per-channel zero points along the quantized dimension
            shape = t.ShapeAsNumpy()
            axis = q.QuantizedDimension()
            reshaped = values.reshape(shape)
            bshape = [1] * len(shape)
            bshape[axis] = -1
            return int(np.sum(reshaped == zp.reshape(bshape))), values.size
    return int(np.sum(values == zero)), values.size


def _producer(graph, tensor_index):
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        if tensor_index in op.OutputsAsNumpy().tolist():
            return op
    return None


def onnx_sparsity(path: Path) -> float:
    """Zero fraction of Conv (not depthwise)/Gemm/MatMul weight initializers (quantized ones against their zero point)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    zeros = total = 0
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2:
            continue
        if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute):
            continue  # depthwise: not a prunable weight
        name = node.input[1]
        zp = 0
        if name not in inits and name in producers and producers[name].op_type == "DequantizeLinear":
            dq = producers[name]
            name = dq.input[0]
            if len(dq.input) > 2 and dq.input[2] in inits:
                zp = inits[dq.input[2]]
                if zp.size > 1:
                    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
                    shape = [1] * inits[name].ndim
                    shape[axis] = -1
                    zp = zp.reshape(shape)
        if name in inits and inits[name].ndim >= 2:
            zeros += int(np.sum(inits[name] == zp))
            total += inits[name].size
    return round(zeros / total, 6) if total else 0.0


# ---------------------------------------------------------------------------------------------
# A Keras model, also through tfmot's pruning and quantize wrappers


def prunable_layers():
    """Layers whose kernels are pruned: the "prunable weights" that sparsity figures count.

    tfmot's prune registry leaves depthwise kernels dense (few weights, each one a
    whole spatial filter), so they are not pruned and not counted (``_KERNEL_OPS`` above).
    """
    from core.keras_compat import keras

    return (keras.layers.Conv2D, keras.layers.Dense)


def _kernels(layer):
    """Kernel variables of a conv/dense layer, also through pruning and quantize wrappers."""
    inner = getattr(layer, "layer", layer)
    if not isinstance(inner, prunable_layers()):
        return
    for w in layer.weights:
        if w.name.split("/")[-1].split(":")[0] in ("kernel", "depthwise_kernel"):
            yield w


def layer_sparsity(model) -> dict[str, float]:
    """Zero fraction of each conv/dense kernel, by layer name."""
    out = {}
    for layer in model.layers:
        for w in _kernels(layer):
            values = w.numpy()
            out[getattr(layer, "layer", layer).name] = round(float(np.mean(values == 0)), 6)
    return out


def keras_sparsity(model) -> float:
    """Zero fraction of the model's prunable kernels."""
    zeros = total = 0
    for layer in model.layers:
        for w in _kernels(layer):
            values = w.numpy()
            zeros += int(np.sum(values == 0))
            total += values.size
    return round(zeros / total, 6) if total else 0.0


def layer_of_tensor(name: str, layer_order: dict[str, int]) -> str | None:
    """The Keras layer that made a converted tensor, from its name; None if no layer is named in it.

    TFLite names a fused op's output after every op it fused, ``;``-joined
    (``m/block_5_depthwise_relu/Relu6;m/block_5_depthwise_BN/...;m/block_5_depthwise/depthwise``):
    the layer is the earliest of them in the model (the convolution, not its BatchNorm or
    activation). Path segments are matched whole, so ``block_1_depthwise`` is not
    ``block_11_depthwise``.
    """
    found = [segment for part in name.split(";") for segment in part.split("/") if segment in layer_order]
    return min(found, key=layer_order.__getitem__) if found else None


def tensors_of_layers(flatbuffer: bytes, layers, model) -> list[str]:
    """Names of the op outputs in a TFLite flatbuffer that the Keras ``layers`` (names) made.

    A layer that made no op output (a name that is not in the model, or one fused away) is an error.
    """
    schema = _schema()
    order = {layer.name: i for i, layer in enumerate(model.layers)}
    graph = schema.Model.GetRootAs(flatbuffer, 0).Subgraphs(0)
    wanted = set(layers)
    out, seen = [], set()
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        for index in op.OutputsAsNumpy().tolist():
            name = graph.Tensors(index).Name().decode()
            layer = layer_of_tensor(name, order)
            if layer in wanted:
                out.append(name)
                seen.add(layer)
    missing = sorted(wanted - seen)
    if missing:
        raise ValueError(f"no op of the converted model comes from layer(s) {', '.join(missing)}; "
                         f"layers of this model: {', '.join(list(order)[:8])}...")
    return out
