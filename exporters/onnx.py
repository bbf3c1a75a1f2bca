"""ONNX exporters (tf2onnx), run by onnxruntime."""

from __future__ import annotations

import contextlib
import logging
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
    drop_noop_reshapes(proto)
    canonicalize(proto)
    onnx.checker.check_model(proto)
    path.write_bytes(proto.SerializeToString())


_COUNTER = re.compile(r"__\d+")


def drop_noop_reshapes(proto) -> None:
    """Remove every Reshape that gives back its input's own shape, in place, its consumers fed its input.

    tf2onnx removes such Reshapes (before a depthwise convolution, around a BatchNormalization)
    only sometimes: on the tests' tiny model, 1 conversion in 11 on a loaded 2-core host had
    141 nodes instead of 142, one depthwise input's Reshape gone and its Conv named without the
    ``__2``. Without any of them, the same model gives the same graph. A Reshape is dropped only
    when its target is a constant and every dimension is provably the input's (equal, ``0``
    copying it, or the one ``-1`` where all the others are); one that makes a graph output stays.
    """
    import onnx

    graph = proto.graph
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    shapes = {}
    for value in list(inferred.input) + list(inferred.value_info) + list(inferred.output):
        if value.type.tensor_type.HasField("shape"):
            shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None
                                  for d in value.type.tensor_type.shape.dim]
    constants = {i.name: i for i in graph.initializer}
    outputs = {v.name for v in graph.output}
    rename: dict[str, str] = {}
    kept = []
    for node in graph.node:
        node.input[:] = [rename.get(n, n) for n in node.input]
        if (node.op_type == "Reshape" and len(node.input) == 2 and node.input[1] in constants
                and node.output[0] not in outputs
                and _gives_back(shapes.get(node.input[0]), node, constants[node.input[1]])):
            rename[node.output[0]] = node.input[0]
            continue
        kept.append(node)
    if not rename:
        return
    del graph.node[:]
    graph.node.extend(kept)
    used = {n for node in graph.node for n in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
    for info in [v for v in graph.value_info if v.name in rename]:
        graph.value_info.remove(info)


def _gives_back(shape, node, target_constant) -> bool:
    """Whether the Reshape ``node`` to ``target_constant`` returns ``shape`` (None: an unknown dimension)."""
    from onnx import numpy_helper

    if shape is None:
        return False
    target = [int(t) for t in numpy_helper.to_array(target_constant).ravel()]
    allowzero = next((a.i for a in node.attribute if a.name == "allowzero"), 0)
    if len(target) != len(shape):
        return False
    unmatched = [i for i, (t, d) in enumerate(zip(target, shape))
                 if not ((d is not None and t == d) or (t == 0 and not allowzero))]
    # A -1 is inferred from the others: it is the input's dimension when all the others are.
    return not unmatched or (len(unmatched) == 1 and target[unmatched[0]] == -1)


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
        import io

        from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                              quantize_static)

        from exporters.folding import fold_normalization

        if ctx.calibration_images is None or not len(ctx.calibration_images):
            raise ValueError(f"{self.format} needs calibration images")
        if ctx.calibration_method not in self.calibration_methods:
            raise ValueError(f"{self.format}: unknown calibration method {ctx.calibration_method!r}; "
                             f"valid methods: {', '.join(self.calibration_methods)}")
        float_layers = tuple(ctx.float_layers)
        if float_layers and not self.float_fallback:
            # The row promises int8 throughout; layers kept in float are the mixed format's.
            raise ValueError(f"{self.format} quantizes every layer; to keep {', '.join(float_layers)} "
                             f"in float, export onnx-int8-mixed")
        _check_keras_layers(model, float_layers, self.format)
        # As for tflite-int8: a foldable normalization becomes the input QuantizeLinear's
        # scale and zero point, so no float Sub/Mul runs on the full-resolution image.
        fold = fold_normalization(model)
        if fold is not None and _takes_the_normalized_image(fold, float_layers):
            # A float layer that reads the normalized image (the first convolution; or the
            # preprocess layer itself) must get it in float: the folded graph has raw pixels
            # there, so convert the whole model, its Sub/Mul kept in float ahead of the first conv.
            fold = None

        class Reader(CalibrationDataReader):
            def __init__(self, images: np.ndarray):
                self._batches = iter([{"image": img[None].astype(np.float32)} for img in images])

            def get_next(self):
                return next(self._batches, None)

        types = ctx.int8_types or self.int8_types[0]
        if types not in _TYPES:
            raise ValueError(f"{self.format}: unknown int8 types {types!r}; valid: {', '.join(_TYPES)}")
        refused = self.unsupported(types, ctx.weight_rounding)
        if refused:
            raise ValueError(f"{self.format}: {refused}")
        activations, weights, reduce_range = _TYPES[types]

        def prepare(fold, tmp: Path) -> Path:
            if ctx.weight_rounding == "nearest":
                return _prepared_once(model, fold, tmp, ctx)
            from exporters.rounding import rounded

            source = model if fold is None else fold.model
            images = ctx.calibration_images if fold is None else fold.normalize(ctx.calibration_images)
            # onnxruntime's symmetric int8 weights: 127 steps a side, 64 with reduce_range.
            # (The rounded copy is the model to convert, normalization included or not: no fold.)
            return _prepared_once(rounded(source, images, ctx.weight_rounding, 64 if reduce_range else 127,
                                          keep_float=float_layers), None, tmp, ctx)

        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            prepared = prepare(fold, Path(tmp))
            excluded = float_layer_nodes(prepared, float_layers, self.format)
            if fold is not None and _reads_model_input(prepared, excluded):
                # The same, where tf2onnx dropped a no-op layer between the two (Keras saw none).
                fold = None
                prepared = prepare(None, Path(tmp))
                excluded = float_layer_nodes(prepared, float_layers, self.format)
            calibration = ctx.calibration_images if fold is None else fold.normalize(ctx.calibration_images)
            method, options = _CALIBRATION[ctx.calibration_method]
            method = getattr(CalibrationMethod, method)
            if excluded:
                # Keep Relu/Clip nodes in the graph (the quantizer otherwise drops one when the
                # QuantizeLinear after it clips the same range): a float layer fed by one then reads
                # the activation's own float output, see feed_float_layers_float.
                options = {**options, "QDQKeepRemovableActivations": True}
            # U8S8 (uint8 activations, int8 per-channel weights): the combination
            # onnxruntime's x86 kernels run fastest; S8S8 (its default) is slower there.
            # reduce_range: weights in 7 bits. On x86 without VNNI, onnxruntime's U8S8 kernels
            # sum pairs of products in 16 bits, which full-range weights can saturate (its
            # quantization docs advise reduce_range there). Measured on the tests' tiny digits
            # model on an AVX2-only AMD EPYC: top-1 agreement with Keras 0.856 without it,
            # 0.985 with it (270 test images); the file ships to such edge boxes too.
            # (stdout: the percentile calibrator prints its settings; the run log is about our stages.)
            with contextlib.redirect_stdout(io.StringIO()), quantizer_notes(self.format):
                quantize_static(
                    str(prepared), str(path), Reader(calibration),
                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                    activation_type=getattr(QuantType, activations), weight_type=getattr(QuantType, weights),
                    nodes_to_exclude=nodes_before_first_conv(prepared) + excluded,
                    calibrate_method=method, extra_options=options,
                )
            if excluded:
                feed_float_layers_float(path, prepared, excluded)
        if fold is not None:
            quantize_raw_pixels(path, fold.mean, fold.std)
        import onnx

        proto = onnx.load(str(path))
        canonicalize(proto)
        onnx.checker.check_model(proto)
        path.write_bytes(proto.SerializeToString())


    def unsupported(self, int8_types: str, weight_rounding: str) -> str | None:
        # exporters.rounding writes weights on a symmetric grid; uint8 weights are asymmetric.
        types = int8_types or self.int8_types[0]
        if weight_rounding != "nearest" and types in _TYPES and _TYPES[types][1] != "QInt8":
            return f"{weight_rounding} weight rounding needs symmetric int8 weights, not {types}"
        return None


class ONNXInt8Mixed(ONNXInt8):
    """onnx-int8 with ``ctx.float_layers`` kept in float32 (its row allows them: ``float_fallback``)."""

    format = "onnx-int8-mixed"

    def keepable_float_layers(self, model, layers: list[str], ctx: ExportContext) -> list[str]:
        """Those of ``layers`` that compute in some node of the ONNX graph.

        tf2onnx merges some Keras layers into their neighbours (a ZeroPadding2D becomes its
        convolution's ``pads``): such a layer matches no node and cannot be kept in float on its
        own; its neighbour can. Measured on flowers: ``block_1_pad`` was 6th in the TFLite-ranked
        sensitivity list, and every candidate from 6 layers on failed as a whole. The folded
        preprocess layer stays: asking for it converts the unfolded model (``export``).
        """
        from exporters.folding import fold_normalization

        fold = fold_normalization(model)
        with tempfile.TemporaryDirectory() as tmp:
            import onnx

            nodes = onnx.load(str(_prepared_once(model, fold, Path(tmp), ctx))).graph.node
        known = set().union(*(_scopes(n) for n in nodes))
        if fold is not None:
            known.add(fold.layer.name)
        return [name for name in layers if name in known]


_RAISED = re.compile(r"Increased scale\[(?P<channel>\d+)\] for weight `(?P<weight>[^`]+)` by ratio")
_CLIPPED = re.compile(r"Quantized bias `(?P<weight>[^`]+)` exceeds the range of a int32")
_PER_TENSOR = re.compile(r"Axis -?\d+ is out-of-range for weight '(?P<weight>[^']+)' with rank 1")
log = logging.getLogger("exporters")
_SAID: set[tuple] = set()


def _layer(tensor: str) -> str:
    """The Keras layer a tf2onnx tensor belongs to: ``m/core/Conv1/Conv2D__2:1`` -> ``Conv1``."""
    parts = tensor.split("/")
    return parts[-2] if len(parts) > 1 else tensor


@contextlib.contextmanager
def quantizer_notes(fmt: str):
    """onnxruntime's quantizer logs a line per weight channel and tensor it adjusts: one line of ours per kind.

    Measured on flowers' MobileNetV2: 71 "Increased scale[i] for weight ..." lines (channels whose
    weights are all near zero, so their bias would not fit int32 at the calibrated scale: the
    quantizer raises that channel's weight scale, which leaves its outputs as they were), 9 "Quantized
    bias ... exceeds the range of a int32" warnings (those biases are clipped), and, where tf2onnx left a
    BatchNormalization unfused, "Axis 1 is out-of-range" for each rank-1 scale (quantized per tensor).
    """
    raised: dict[str, set[int]] = {}
    clipped: list[str] = []
    per_tensor: list[str] = []

    class Catch(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            message = record.getMessage()
            for pattern, into in ((_RAISED, None), (_CLIPPED, clipped), (_PER_TENSOR, per_tensor)):
                m = pattern.search(message)
                if m:
                    layer = _layer(m["weight"])
                    if into is None:
                        raised.setdefault(layer, set()).add(int(m["channel"]))
                    elif layer not in into:
                        into.append(layer)
                    return False
            return True

    # onnxruntime logs through the root logger (logging.info / logging.warning).
    root, catch = logging.getLogger(), Catch()
    root.addFilter(catch)
    try:
        yield
    finally:
        root.removeFilter(catch)
    said = (fmt, tuple(sorted((k, tuple(sorted(v))) for k, v in raised.items())), tuple(clipped), tuple(per_tensor))
    if said in _SAID:  # the repair search quantizes one model many ways: each finding once
        return
    _SAID.add(said)
    if raised:
        counts = ", ".join(f"{len(c)} of {layer}" for layer, c in raised.items())
        log.info("[export] %s: output channels with near-zero weights (%s): onnxruntime raised their int8 "
                 "weight scale so that their bias fits in int32, which leaves their outputs as they were", fmt, counts)
    if clipped:
        log.warning("[export] %s: the int32 bias of %s is out of range at the scale calibration gave; onnxruntime "
                    "clipped it (a cause to look at if this file disagrees with Keras)", fmt, ", ".join(clipped))
    if per_tensor:
        log.info("[export] %s: %d BatchNormalization(s) tf2onnx left unfused (%s...) have per-tensor int8 scales",
                 fmt, len(per_tensor), ", ".join(per_tensor[:3]))


# int8_types -> (activation QuantType, weight QuantType, reduce_range). U8S8 is what onnxruntime's
# x86 kernels run fastest; without VNNI they add pairs of u8×s8 products in 16 bits, which
# full-range weights saturate, hence 7-bit weights by default (onnxruntime's quantization docs).
# Measured on flowers' MobileNetV2 1.0 at 128 px on this project's AVX2-only AMD EPYC, agreement
# with Keras on 648 validation images, 200 calibration images: u8s8-7bit 0.863, u8s8 at full
# range 0.887, u8u8 0.926, s8s8 0.932. Which is best depends on the CPU that runs the file: the
# repair search measures them on the build machine.
_TYPES = {
    "u8s8-7bit": ("QUInt8", "QInt8", True),
    "s8s8": ("QInt8", "QInt8", False),
    "u8u8": ("QUInt8", "QUInt8", False),
}

# calibration_method -> onnxruntime CalibrationMethod member, and the extra_options it takes.
_CALIBRATION = {
    # Not CalibMaxIntermediateOutputs: in onnxruntime 1.32 MinMaxCalibrater.collect_data clears
    # the collected outputs every N images without merging their ranges, so only the last
    # images count (a test saw Percentile ranges wider than MinMax's with it).
    "minmax": ("MinMax", {}),
    # 99.999: clips the rare outliers that stretch a MinMax range over a mostly empty grid,
    # keeping all but 1 in 100,000 activation values inside it.
    "percentile": ("Percentile", {"CalibPercentile": 99.999}),
}


# The last few prepared float graphs, by (model object, folded, size, opset): the repair search
# quantizes one model many ways, and tf2onnx's conversion is the slow part (measured on flowers'
# MobileNetV2 at 128 px: ~40 of a ~60 s onnx-int8 export). The conversion gives the same bytes
# for the same model (canonicalize), so a cached graph changes no file.
_PREPARED: dict[tuple, tuple[object, bytes]] = {}
_PREPARED_KEEP = 2


def _prepared_once(model, fold, tmp: Path, ctx: ExportContext) -> Path:
    """``_prepared_fp32`` of ``model`` (or of its folded form), converted once per model object."""
    key = (id(model), fold is not None, ctx.image_size, ctx.onnx_opset)
    path = tmp / "prepared_cached.onnx"
    hit = _PREPARED.get(key)
    if hit is not None and hit[0] is model:
        path.write_bytes(hit[1])
        return path
    prepared = _prepared_fp32(model if fold is None else fold.model, tmp, ctx)
    while len(_PREPARED) >= _PREPARED_KEEP:
        _PREPARED.pop(next(iter(_PREPARED)))
    _PREPARED[key] = (model, prepared.read_bytes())  # the model is held so its id is not reused
    return prepared


def _prepared_fp32(model, tmp: Path, ctx: ExportContext) -> Path:
    """tf2onnx's conversion of ``model``, shape-inferred and fused as onnxruntime's quantization guide asks."""
    from onnxruntime.quantization import quant_pre_process

    fp32, prepared = tmp / f"{model.name}_fp32.onnx", tmp / f"{model.name}_prepared.onnx"
    keras_to_onnx(model, fp32, ctx)
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    return prepared


def _check_keras_layers(model, layers: tuple[str, ...], fmt: str) -> None:
    """Fail before converting when a float layer is no layer of ``model``."""
    import difflib

    names = [layer.name for layer in model.layers]
    for name in layers:
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{fmt}: float layer {name!r} is no layer of model {model.name!r}{hint}")


def _scopes(node) -> set[str]:
    """The path segments of a node's name and outputs: the Keras layers it computes (``float_layer_nodes``)."""
    return {part for name in (node.name, *node.output) for part in name.split("/")[:-1]}


def float_layer_nodes(path: Path, layers: tuple[str, ...], fmt: str = "onnx-int8-mixed") -> list[str]:
    """The names of the ONNX nodes that compute the Keras layers ``layers``, in graph order.

    tf2onnx names a node ``<model>/<layer>/<op>`` (``.../block_5_depthwise/depthwise``), and a
    node that absorbed a layer (a BatchNormalization folded into its convolution) outputs a
    tensor named after it (``.../block_5_depthwise_BN/FusedBatchNormV3:0``). A layer matches
    a node where it is a whole path segment of the node's name or of one of its outputs, so
    ``block_1_depthwise`` does not take ``block_11_depthwise``. A layer that matches no node
    is an error naming it.
    """
    import difflib

    import onnx

    nodes = onnx.load(str(path)).graph.node
    scopes = _scopes
    found = {layer: [n.name for n in nodes if layer in scopes(n)] for layer in layers}
    missing = [layer for layer, names in found.items() if not names]
    if missing:
        known = sorted(set().union(*(scopes(n) for n in nodes)))
        hints = [difflib.get_close_matches(m, known, n=1) for m in missing]
        said = ", ".join(f"{m!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for m, h in zip(missing, hints))
        raise ValueError(f"{fmt}: float layer(s) {said} match no node of the ONNX graph "
                         f"(a layer without ops, or one folded into the input quantization)")
    wanted = {name for names in found.values() for name in names}
    return [n.name for n in nodes if n.name in wanted]


def _takes_the_normalized_image(fold, layers: tuple[str, ...]) -> bool:
    """Whether one of ``layers`` is the preprocess layer, or takes its output (the folded model's input) as it is."""
    image = fold.model.inputs[0]
    core = {layer.name: layer for layer in fold.model.layers}
    for name in layers:
        if name == fold.layer.name:
            return True
        if name not in core:  # the raw input layer: no ops, "matches no node" later
            continue
        layer = core[name]
        for i in range(len(layer.inbound_nodes)):
            inputs = layer.get_input_at(i)
            if any(t is image for t in (inputs if isinstance(inputs, (list, tuple)) else [inputs])):
                return True
    return False


def _reads_model_input(path: Path, excluded: list[str]) -> bool:
    """Whether an excluded node takes the graph input, or the layout Transpose of it, as it is."""
    import onnx

    graph = onnx.load(str(path)).graph
    source = graph.input[0].name
    raw = {source} | {n.output[0] for n in graph.node if n.op_type == "Transpose" and n.input[0] == source}
    names = set(excluded)
    return any(i in raw for n in graph.node if n.name in names for i in n.input)


def feed_float_layers_float(path: Path, prepared: Path, excluded: list[str]) -> None:
    """Let the excluded nodes of the QDQ file at ``path`` read the float tensors they read in ``prepared``.

    The quantizer leaves an excluded node's weights in float, but still feeds it the
    DequantizeLinear of its (quantized) input. onnxruntime takes any Conv/Gemm between a
    DequantizeLinear and a QuantizeLinear as an int8 op: its level-1 graph optimizer
    WeightBiasQuantization quantizes the float weights (per tensor, 8 bits) when a session loads
    the file, and the next level fuses the lot into a QLinearConv (QDQ selectors do the same to
    Add, Mul, pooling... without weights). Measured on flowers' MobileNetV2 1.0 at 128 px with
    expanded_conv_depthwise excluded, default session: top-1 agreement with Keras 0.31 on 648
    validation images, 0.95 with that optimizer disabled, 0.86 for plain onnx-int8. Apps load
    files with default options, so the file itself must not hold that pattern: each excluded
    node reads the float tensor ahead of the QuantizeLinear (the producer's float output,
    a Relu/Clip kept for it), and a Q/DQ pair left without consumers goes.
    See onnxruntime/core/optimizer/qdq_transformer/weight_bias_quantization.cc.
    """
    import onnx

    before = onnx.load(str(prepared)).graph
    original = {n.name: list(n.input) for n in before.node if n.name in set(excluded)}
    float_constants = {i.name: i for i in before.initializer}
    proto = onnx.load(str(path))
    graph = proto.graph
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    initializers = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.name not in original:
            continue
        for slot, name in enumerate(original[node.name]):
            if not name or name in initializers or node.input[slot] == name:
                continue
            if name in float_constants:
                # A constant shared with quantized nodes (tf2onnx makes one of MobileNetV3's hard-swish 1/6 and
                # +3 for every block) is stored quantized only; the float node gets its float value back.
                graph.initializer.append(float_constants[name])
                initializers.add(name)
            elif name not in produced:  # the quantizer folded it away: our bug, not the user's
                raise RuntimeError(f"{path}: float node {node.name!r} cannot read {name!r}: no node makes it")
            node.input[slot] = name
    _drop_unused_qdq(graph)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _drop_unused_qdq(graph) -> None:
    """QuantizeLinear/DequantizeLinear nodes (and initializers) that feed nothing any more, removed."""
    outputs = {o.name for o in graph.output}
    while True:
        consumed = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node
                if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not set(n.output) & consumed]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    consumed = {i for n in graph.node for i in n.input}
    unused = [i for i in graph.initializer if i.name not in consumed]
    for init in unused:
        graph.initializer.remove(init)


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


CONVERTERS = (ONNXFP32, ONNXInt8, ONNXInt8Mixed)
