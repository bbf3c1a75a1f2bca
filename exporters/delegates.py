"""Which accelerators can run a ``.tflite`` file, read from the file itself.

- Integer-only accelerators (int8 NPUs, Edge-TPU-style chips) need every op in
  integers: ``fully_integer`` comes from :func:`exporters.inspect.tflite_summary`,
  which allows only the float boundary conversions (QUANTIZE of the input,
  DEQUANTIZE of the output) that such a chip leaves to the CPU.
- The GPU delegate: every op must be one the GPU delegate's compatibility
  checker accepts (``GPU_DELEGATE_OPS``). LiteRT's model analyzer
  (``ai_edge_litert``'s copy of ``tf.lite.experimental.Analyzer``) is asked
  too, and any op it flags counts, but the analyzer in the pip wheels of
  ai-edge-litert 2.3 and TensorFlow 2.21 passed every graph we gave it, even
  UNIQUE, TOPK_V2 and a Flex (TensorFlow) op that the checker rejects, so the
  op set is what decides. Neither runs anything: per-op limits (strides,
  broadcast shapes, Softmax beta, ...) are not checked, and a "compatible"
  answer cannot rule out a runtime failure on a given phone.
"""

from __future__ import annotations

import re
from pathlib import Path

from exporters import inspect

# Builtin ops the GPU delegate's compatibility checker accepts: the cases of CheckGpuDelegateCompatibility
# in tensorflow/lite/tools/versioning/gpu_compatibility.cc (tensorflow/tensorflow at 03a5e4e1); any other
# op is "Not supported op" there. CUSTOM ops are left out: the checker admits only a few of its own.
GPU_DELEGATE_OPS = frozenset("""
    ABS ADD ADD_N ATAN2 AVERAGE_POOL_2D BATCH_MATMUL CAST CEIL CONCATENATION CONV_2D COS CUMSUM DENSIFY
    DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DIV DYNAMIC_UPDATE_SLICE ELU EMBEDDING_LOOKUP EQUAL EXP FLOOR
    FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GELU GREATER GREATER_EQUAL HARD_SWISH LEAKY_RELU LESS LESS_EQUAL
    LOG LOGICAL_AND LOGISTIC LSTM MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL ONE_HOT PACK PAD
    PADV2 POW PRELU QUANTIZE REDUCE_MAX REDUCE_MIN REDUCE_PROD RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR
    RESIZE_NEAREST_NEIGHBOR RSQRT SELECT SELECT_V2 SIGN SIN SLICE SOFTMAX SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE
    SQUARED_DIFFERENCE STABLEHLO_CLAMP STRIDED_SLICE SUB SUM TANH TILE TRANSPOSE TRANSPOSE_CONV
""".split())

# TensorType codes (schema.fbs) and the casts the checker accepts: bool <-> float, float32/int32 <-> float32/int32.
_TYPE_NAMES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 6: "bool", 9: "int8"}
_GPU_CASTS = {(6, 0), (6, 1), (0, 6), (1, 6), (0, 0), (0, 2), (2, 0), (2, 2)}

_OP_LINE = re.compile(r"^\s*Op#(\d+) (\w+)\(")
_WARNING = "GPU COMPATIBILITY WARNING: "
_COMPATIBLE = "Your model looks compatible with GPU delegate"
_RUNTIME = re.compile(r"TFLite runtime version (\S+?)\.?$", re.M)


def analyzer_report(path: Path) -> str:
    """The model analyzer's text for ``path``, with the GPU delegate check on."""
    from ai_edge_litert import _pywrap_analyzer_wrapper as analyzer

    return analyzer.ModelAnalyzer(str(path), True, True)


def parse_gpu_compatibility(report: str) -> dict:
    """The analyzer's verdict: compatible or not, and each op it flagged with the reason it gave."""
    unsupported, op = [], None
    for line in report.splitlines():
        match = _OP_LINE.match(line)
        if match:
            op = {"node": int(match.group(1)), "op": match.group(2)}
        if _WARNING in line and op is not None and not line.lstrip().startswith(_WARNING + "Subgraph#"):
            unsupported.append({**op, "reason": line.split(_WARNING, 1)[1].strip()})
            op = None
    if _COMPATIBLE in report:
        verdict = True
    elif unsupported or "GPU delegate compatibility issues" in report:
        verdict = False
    else:  # neither answer: an analyzer that could not read the file, or a new wording
        raise ValueError(f"the model analyzer gave no GPU verdict: {report.strip()[:300]!r}")
    runtime = _RUNTIME.search(report)
    return {"compatible": verdict, "unsupported_ops": unsupported,
            "checked_for_runtime": runtime.group(1) if runtime else None}


def unsupported_gpu_ops(path: Path) -> list[dict]:
    """Each op of the file outside ``GPU_DELEGATE_OPS``, with its node number (Flex and custom ops by name)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(Path(path).read_bytes(), 0)
    names = inspect._op_names()
    out = []
    for g in range(model.SubgraphsLength()):
        graph = model.Subgraphs(g)
        for k in range(graph.OperatorsLength()):
            op = graph.Operators(k)
            name = inspect.op_name(model, op, names)
            if name == "CUSTOM":
                code = model.OperatorCodes(op.OpcodeIndex()).CustomCode()
                custom = code.decode("utf-8", "replace") if code else "?"
                out.append({"node": k, "op": custom, "reason": f"custom op {custom}: not run by the GPU delegate"})
            elif name not in GPU_DELEGATE_OPS:
                out.append({"node": k, "op": name, "reason": f"{name} is not an op the GPU delegate supports"})
            elif name == "CAST":
                types = (graph.Tensors(op.Inputs(0)).Type(), graph.Tensors(op.Outputs(0)).Type())
                if types not in _GPU_CASTS:
                    kinds = [_TYPE_NAMES.get(t, str(t)) for t in types]
                    out.append({"node": k, "op": name, "reason": f"CAST from {kinds[0]} to {kinds[1]} is not one the "
                                                                  "GPU delegate supports"})
    return out


def tflite_delegates(path: Path) -> dict:
    """What the manifest and the report say about a ``.tflite`` file's accelerators."""
    summary = inspect.tflite_summary(path)
    analyzer = parse_gpu_compatibility(analyzer_report(path))
    unsupported = unsupported_gpu_ops(path)
    seen = {(op["node"], op["op"]) for op in unsupported}
    unsupported += [op for op in analyzer["unsupported_ops"] if (op["node"], op["op"]) not in seen]
    return {
        "fully_integer": summary["fully_integer"],
        "float_ops": summary["float_ops"],
        "gpu": {"compatible": not unsupported and analyzer["compatible"],
                "unsupported_ops": sorted(unsupported, key=lambda op: op["node"]),
                "checked_for_runtime": analyzer["checked_for_runtime"],
                "checked_with": "op set of the GPU delegate's compatibility checker (gpu_compatibility.cc) and "
                                "LiteRT's model analyzer (ai_edge_litert, gpu_compatibility=True)"},
    }
