"""Efficiency against the physical limit: how much of this machine's arithmetic a model file uses.

A latency alone does not say whether a file is slow because the model is big or
because its runtime wastes the cores. Dividing the multiply-accumulates of one
inference (counted from the file itself) by its latency gives the achieved
GMAC/s; dividing that by the peak GMAC/s measured on the same host, with the
same thread count, gives the fraction of peak.

    macs = tflite_macs("model_int8.tflite")
    peak = measure_peak(threads=1)
    efficiency(macs, latency_ms=3.4, peak_gmacs=peak_for("tflite-int8", peak))

The counters import only their own format's reader: ``tflite_macs`` runs in a
benchmark subprocess that has LiteRT loaded and TensorFlow not.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

def _product(dims) -> int:
    return math.prod(int(d) for d in dims)


_TFLITE_COUNTED = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "BATCH_MATMUL"}


def tflite_macs(path: Path) -> int:
    """Multiply-accumulates of one single-image inference of a .tflite file's main subgraph.

    Counts CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, TRANSPOSE_CONV and
    BATCH_MATMUL from the tensor shapes stored in the file, whatever the
    weights' precision. A dynamic batch counts as 1; any other dynamic dimension
    of a counted tensor is an error. (A reshape that folds the batch into another
    dimension, ``reshape(x, [-1, C])``, looks like a batch in the file and is
    counted as one row; the pipeline's convolutional models have none.)
    """
    from exporters.inspect import _op_names, _schema, op_name

    schema = _schema()
    model = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    names = _op_names()
    graph = model.Subgraphs(0)

    def shape(index: int) -> list[int]:
        t = graph.Tensors(index)
        dims = t.ShapeAsNumpy().tolist() if t.ShapeLength() else []
        signature = t.ShapeSignatureAsNumpy().tolist() if t.ShapeSignatureLength() else dims
        if any(d < 0 for d in signature[1:]):
            raise ValueError(f"{path}: tensor {t.Name().decode()!r} has the dynamic shape {signature}; "
                             "MACs need every dimension but the batch fixed")
        # The converter stores 1 where the signature has a dynamic batch (-1).
        return [max(d, 1) for d in dims]

    total = 0
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        name = op_name(model, op, names)
        if name not in _TFLITE_COUNTED:
            continue
        ins = op.InputsAsNumpy().tolist()
        # TRANSPOSE_CONV takes (output_shape, filter, input); the others (input, filter, ...). Reading
        # the input's shape also rejects a dynamic non-batch dimension, as Dense on a feature map leaves.
        x, weights = (shape(ins[2]), shape(ins[1])) if name == "TRANSPOSE_CONV" else (shape(ins[0]), shape(ins[1]))
        out = _product(shape(op.Outputs(0)))
        if name == "CONV_2D":  # filter [out_c, kh, kw, in_c / groups]
            total += out * _product(weights[1:])
        elif name == "DEPTHWISE_CONV_2D":  # filter [1, kh, kw, out_c]: one input channel per output
            total += out * weights[1] * weights[2]
        elif name == "FULLY_CONNECTED":  # weights [out, in]
            total += out * weights[-1]
        elif name == "TRANSPOSE_CONV":  # filter [out_c, kh, kw, in_c]: an input element fills kh x kw x out_c
            total += _product(x) * _product(weights[:3])
        else:  # BATCH_MATMUL: the reduced dimension is x's last, or its second last when adjoint
            options, table = schema.BatchMatMulOptions(), op.BuiltinOptions()
            adj_x = False
            if table is not None:
                options.Init(table.Bytes, table.Pos)
                adj_x = bool(options.AdjX())
            total += out * (x[-2] if adj_x else x[-1])
    return total


# ONNX ops that multiply activations by weights, and which input holds the weights.
_ONNX_WEIGHT_INPUT = {
    "Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "ConvTranspose": 1,
    "Gemm": 1, "MatMul": 1, "MatMulInteger": 1, "QLinearMatMul": 3,
}


def onnx_macs(path: Path) -> int:
    """Multiply-accumulates of one single-image inference of an .onnx file.

    Counts Conv (with groups), ConvTranspose, Gemm, MatMul and their integer and
    QLinear forms. A dynamic batch is fixed to 1 before ``onnx.shape_inference``
    runs, so reshapes that fold the batch into another dimension resolve too;
    any dimension still unknown is an error. In a QDQ file a weight is an
    integer initializer behind a DequantizeLinear; its shape is read there.
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    for info in graph.input:
        dims = info.type.tensor_type.shape.dim
        if info.name not in initializers and dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = 1
    # Shapes the exporter stored still carry the symbolic batch: infer them afresh from batch 1.
    del graph.value_info[:]
    for info in graph.output:
        info.type.tensor_type.ClearField("shape")
    graph = onnx.shape_inference.infer_shapes(model).graph

    shapes: dict[str, list] = {}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                 for d in info.type.tensor_type.shape.dim]
    for init in graph.initializer:
        shapes[init.name] = list(init.dims)
    producers = {out: node for node in graph.node for out in node.output}

    def shape(name: str, node) -> list[int]:
        # Read a QDQ weight's shape from the stored integer tensor, not from what inference carried through.
        while name in producers and producers[name].op_type == "DequantizeLinear":
            name = producers[name].input[0]
        dims = shapes.get(name)
        if dims is None or None in dims:
            raise ValueError(f"{path}: {name!r} (at {node.op_type} {node.name!r}) has the unknown or dynamic "
                             f"shape {dims} even with batch 1; MACs need a fixed input size")
        return dims

    total = 0
    for node in graph.node:
        if node.op_type not in _ONNX_WEIGHT_INPUT or node.domain not in ("", "ai.onnx"):
            continue
        x = shape(node.input[0], node)
        weights = shape(node.input[_ONNX_WEIGHT_INPUT[node.op_type]], node)
        if node.op_type == "ConvTranspose":  # weight (in_c, out_c / groups, k...): each input element fills a window
            total += _product(x) * _product(weights[1:])
            continue
        out = _product(shape(node.output[0], node))
        if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):  # weight (out_c, in_c / groups, k...)
            total += out * _product(weights[1:])
        elif node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            total += out * (weights[1] if trans_b else weights[0])
        else:  # MatMul family: weight (..., K, N), or a 1-D (K,)
            total += out * (weights[-2] if len(weights) > 1 else weights[0])
    return total


def keras_macs(model) -> int:
    """Multiply-accumulates of one single-image inference of a tf_keras model.

    Counts Conv1D/2D/3D (with groups), DepthwiseConv2D, SeparableConv2D,
    Conv2DTranspose and Dense, inside nested models and tfmot wrappers too.
    """
    return sum(_keras_layer_macs(layer) for layer in model.layers)


def _keras_layer_macs(layer) -> int:
    from core.keras_compat import keras

    if isinstance(layer, keras.Model):
        return keras_macs(layer)
    # tfmot's prune/quantize wrappers hold the real layer; only the wrapper was called, so shapes come from it.
    inner = layer.layer if isinstance(layer, keras.layers.Wrapper) else layer
    layers = keras.layers
    if not isinstance(inner, (layers.Dense, layers.Conv1D, layers.Conv2D, layers.Conv3D, layers.SeparableConv2D,
                              layers.DepthwiseConv2D)):
        return 0

    def per_image(shape) -> int:
        if any(d is None for d in shape[1:]):
            raise ValueError(f"layer {layer.name!r} has the unknown shape {shape}; MACs need a fixed input size")
        return _product(shape[1:])

    out = per_image(layer.get_output_shape_at(0))
    # Order matters: in tf_keras, DepthwiseConv2D and Conv2DTranspose subclass Conv2D.
    if isinstance(inner, layers.DepthwiseConv2D):
        return out * _product(inner.kernel_size)
    if isinstance(inner, layers.SeparableConv2D):
        depthwise = _product(inner.depthwise_kernel.shape)  # (kh, kw, in_c, multiplier)
        spatial = out // inner.filters  # out_h * out_w
        return spatial * depthwise + out * inner.pointwise_kernel.shape[-2]
    if isinstance(inner, (layers.Conv2DTranspose, layers.Conv3DTranspose, layers.Conv1DTranspose)):
        # Kernel (k..., out_c, in_c): each input element is scattered into a k... x out_c window.
        return per_image(layer.get_input_shape_at(0)) * _product(inner.kernel.shape[:-1])
    if isinstance(inner, layers.Dense):
        return out * inner.kernel.shape[0]
    return out * _product(inner.kernel.shape[:-1])  # Conv kernel (k..., in_c / groups, out_c)


# Big enough that packing and call overhead are small against the arithmetic, small enough
# that a run takes milliseconds and the three 1 MB operands stay in cache. On the 2-core dev
# host 512 beat 256, 768 and 1024 at 1 and 2 threads, fp32 and int8 alike.
_PEAK_SIZE = 512


def _matmul_model(n: int, integer: bool) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if integer:
        # uint8 activations x int8 weights (U8S8), as in our int8 ONNX files: the pair
        # onnxruntime's MLAS int8 GEMM kernels are built around on x86.
        weights = numpy_helper.from_array(rng.integers(-127, 128, (n, n)).astype(np.int8), "weights")
        zero_point = numpy_helper.from_array(np.array(128, np.uint8), "x_zero_point")
        node = helper.make_node("MatMulInteger", ["x", "weights", "x_zero_point"], ["y"])
        inits, x_type, y_type = [weights, zero_point], TensorProto.UINT8, TensorProto.INT32
    else:
        weights = numpy_helper.from_array(rng.standard_normal((n, n)).astype(np.float32), "weights")
        node = helper.make_node("MatMul", ["x", "weights"], ["y"])
        inits, x_type, y_type = [weights], TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph([node], "peak", [helper.make_tensor_value_info("x", x_type, [n, n])],
                              [helper.make_tensor_value_info("y", y_type, [n, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _best_gmacs(n: int, integer: bool, threads: int, seconds: float) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(_matmul_model(n, integer), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).integers(0, 256, (n, n)).astype(np.uint8 if integer else np.float32)
    feed = {"x": x}

    # Warm-up (thread pool start, weight pre-packing) for a tenth of the budget, at least 3 runs.
    warm_end = time.perf_counter() + 0.1 * seconds
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() < warm_end:
        session.run(None, feed)
        runs += 1
    per_run = (time.perf_counter() - start) / runs
    # Repeats of several runs each: timer and Python call overhead average out within a
    # repeat, and the best repeat is the one least disturbed by other processes.
    runs_per_repeat = max(1, int(0.05 * seconds / per_run))
    best = math.inf
    end = time.perf_counter() + 0.9 * seconds
    while True:
        start = time.perf_counter()
        for _ in range(runs_per_repeat):
            session.run(None, feed)
        now = time.perf_counter()
        best = min(best, (now - start) / runs_per_repeat)
        if now + (now - start) > end:  # stop before a repeat that would overrun the budget
            break
    return n ** 3 / best / 1e9


def measure_peak(threads: int, seconds: float = 1.0) -> dict:
    """Best-of-repeats GMAC/s of a compute-bound fp32 and int8 matrix product on this host.

    Measured with onnxruntime's CPU kernels (MLAS) at ``threads`` intra-op threads,
    about ``seconds`` per precision: the highest rate a dense kernel reaches here,
    and the denominator of ``efficiency``. Another runtime's kernels (XNNPACK in
    LiteRT) may be faster still, so a fraction of this peak can exceed 1.
    """
    import onnxruntime as ort

    if threads < 1 or seconds <= 0:
        raise ValueError(f"measure_peak needs threads >= 1 and seconds > 0, got threads={threads}, seconds={seconds}")
    n = _PEAK_SIZE
    return {
        "fp32_gmacs": _best_gmacs(n, integer=False, threads=threads, seconds=seconds),
        "int8_gmacs": _best_gmacs(n, integer=True, threads=threads, seconds=seconds),
        "threads": threads,
        "method": (f"onnxruntime {ort.__version__} CPUExecutionProvider, {n}x{n}x{n} MatMul (fp32) and "
                   f"MatMulInteger uint8 x int8 (int8), best of repeats over ~{seconds:g} s each"),
    }


_PEAK_BY_PRECISION = {
    # int8-mixed: a few layers stay float, nearly all MACs run in int8.
    "int8": "int8", "int8-sparse": "int8", "qat-int8": "int8", "pruned-int8": "int8", "int8-mixed": "int8",
    "fp32": "fp32", "fp16": "fp32", "dynamic-int8": "fp32", "dynamic": "fp32",
}


def peak_precision(name: str) -> str:
    """Which measured peak, "int8" or "fp32", bounds a precision ("int8", "fp16", ...) or an export format.

    Full-integer files (int8, QAT int8, pruned int8, ONNX QDQ int8) run their
    convolutions in int8 and are held to the int8 peak. fp16 TFLite files run
    in fp32 on CPU (XNNPACK expands the weights at load time). Dynamic-range
    files do run int8 matmuls on activations quantized on the fly, but the
    quantizing, dequantizing and every other op stay float, and no single
    int8 rate bounds that mix: they are held to the fp32 peak, and their
    fraction of it may exceed 1.
    """
    from exporters import registry

    if name in registry.names():
        name = registry.get(name).precision
    try:
        return _PEAK_BY_PRECISION[name]
    except KeyError:
        raise ValueError(f"unknown precision or format {name!r}; valid precisions: {', '.join(_PEAK_BY_PRECISION)}; "
                         f"valid formats: {', '.join(registry.names())}") from None


def peak_for(name: str, peak: dict) -> float:
    """The GMAC/s from ``measure_peak`` that bounds files of this precision or format."""
    return peak[f"{peak_precision(name)}_gmacs"]


def efficiency(macs: int, latency_ms: float, peak_gmacs: float) -> dict:
    """Achieved GMAC/s of a single-image inference, and its fraction of the measured peak."""
    if latency_ms <= 0 or peak_gmacs <= 0:
        raise ValueError(f"latency_ms and peak_gmacs must be positive, got {latency_ms} and {peak_gmacs}")
    achieved = macs / (latency_ms * 1e6)  # MACs per ms / 1e6 = GMAC per s
    return {"macs": int(macs), "gmacs_per_s": achieved, "peak_gmacs": peak_gmacs,
            "fraction_of_peak": achieved / peak_gmacs}
