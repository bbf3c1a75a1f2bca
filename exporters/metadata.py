"""Metadata that lets a phone app load an exported file without guessing: labels, input, normalization.

TFLite: the standard TFLite Metadata (the ``TFLITE_METADATA`` entry of the model's
``metadata`` vector: a ``ModelMetadata`` flatbuffer, file identifier ``M001``), which
MediaPipe Tasks, ML Kit, the TFLite Task Library and Android Studio's model binding
read. ``tflite-support``, the package that used to write it, no longer imports beside
current TensorFlow, so the flatbuffer is built here with the ``flatbuffers`` package,
field by field, from the published schema. As the standard populator does, the labels
file is packed into the model file as an associated file: a zip archive appended to the
flatbuffer, which LiteRT ignores.

ONNX: ``metadata_props`` (labels, normalization, the preprocessing contract, the
``Image.*`` keys of onnx/docs/MetadataProps.md), ``doc_string`` and ``model_version``.

What the input takes is read from the file itself, so the metadata cannot disagree
with it. Every file takes RGB pixels in [0, 255] with the normalization inside the
model (README, "The preprocessing contract"), so the normalization a caller applies,
``(x - mean) / std``, is the identity for float inputs: mean 0, std 1. A full-integer
TFLite file takes the camera byte itself (``exporters.inspect.RAW_PIXEL_METADATA``).
MediaPipe and the Task Library feed a uint8 input the bytes as they are, whatever the
normalization says (MediaPipe feeds an int8 input the byte minus 128), while the
schema's own convention (and Android Studio's generated code) normalizes, then
quantizes with the input's scale and zero point. The mean and std written for an
integer input satisfy both: ``std = 1 / scale``, ``mean = zero_point - pixel_offset``
quantize a pixel back to exactly the integer the file takes (mean 128, std 127.5 for
MobileNetV2's folded input; mean 0, std 1 where the normalization stays in the graph).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.contract import INPUT_NAME, check_label
from exporters.registry import kind_of_file

TFLITE_METADATA = "TFLITE_METADATA"  # the model metadata entry that metadata readers look up
METADATA_FILE_IDENTIFIER = b"M001"
# Our contract as JSON, beside the standard metadata (LiteRT ignores entries it does not know).
PREPROCESSING_METADATA = "pipeline.preprocessing"
LABELS_FILE = "labels.txt"
OUTPUT_NAME = "probability"
# The oldest metadata parser that understands every field written here. The standard populator
# stores the version computed by metadata_version.cc, which stays at 1.0.0 unless a file uses a
# later member (VOCABULARY files, tokenizers, tensor groups, audio, custom metadata): none here.
MIN_PARSER_VERSION = "1.0.0"

# Field order of the metadata tables written here, from tensorflow_lite_support/metadata/
# metadata_schema.fbs (schema 1.5.0, in the tflite-support 0.4.4 wheel). A field's slot is
# its position; a union field takes two slots, its type then its value.
_SCHEMA = {
    "ModelMetadata": ("name", "description", "version", "subgraph_metadata", "author", "license",
                      "associated_files", "min_parser_version"),
    "SubGraphMetadata": ("name", "description", "input_tensor_metadata", "output_tensor_metadata",
                         "associated_files", "input_process_units", "output_process_units",
                         "input_tensor_groups", "output_tensor_groups", "custom_metadata"),
    "TensorMetadata": ("name", "description", "dimension_names", "content", "process_units", "stats",
                       "associated_files"),
    "Content": ("content_properties_type", "content_properties", "range"),
    "FeatureProperties": (),
    "ImageProperties": ("color_space", "default_size"),
    "ProcessUnit": ("options_type", "options"),
    "NormalizationOptions": ("mean", "std"),
    "Stats": ("max", "min"),
    "AssociatedFile": ("name", "description", "type", "locale", "version"),
}
# Enums are ``byte``, union types ``ubyte``.
_BYTE_FIELDS = {"color_space": "int8", "type": "int8", "content_properties_type": "uint8", "options_type": "uint8"}
# Enum and union values, from the same schema.
CONTENT_FEATURE, CONTENT_IMAGE = 1, 2  # ContentProperties: FeatureProperties, ImageProperties
OPTIONS_NORMALIZATION = 1  # ProcessUnitOptions: NormalizationOptions
COLOR_SPACES = {0: "UNKNOWN", 1: "RGB", 2: "GRAYSCALE"}  # ColorSpaceType
TENSOR_AXIS_LABELS = 2  # AssociatedFileType

_TFLITE_INTEGER = {"uint8": np.uint8, "int8": np.int8}


class MetadataError(ValueError):
    """A file's metadata is missing or does not say what a reader needs."""


@dataclass(frozen=True)
class ModelInfo:
    """What the metadata of every exported file says about the model.

    ``preprocessing`` is the contract of ``core.contract.preprocessing_contract``; what
    each file's input takes (float pixels, uint8 bytes, int8 bytes - 128) is read from the file.
    """

    name: str
    description: str
    version: int  # a release number: ONNX's model_version is an integer; TFLite stores it as text
    labels: tuple[str, ...]
    preprocessing: dict[str, Any] = field(repr=False)
    author: str | None = None
    license: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"model name must be a non-empty string, not {self.name!r}")
        for key in ("description", "author", "license"):
            value = getattr(self, key)
            if not isinstance(value, str) and not (value is None and key != "description"):
                raise ValueError(f"model {key} must be a string, not {value!r}")
        if not isinstance(self.version, int) or isinstance(self.version, bool) or not 0 <= self.version < 2**63:
            raise ValueError(f"model version must be a non-negative integer, not {self.version!r}")
        if isinstance(self.labels, str):
            raise ValueError(f"labels must be a sequence of strings, not the string {self.labels!r}")
        labels = tuple(self.labels)
        if not labels:
            raise ValueError("a classifier needs at least one label")
        for i, label in enumerate(labels):
            check_label(label, i)
        object.__setattr__(self, "labels", labels)
        try:  # a private, JSON-clean copy: the caller's dict can change later without changing this
            contract = json.loads(json.dumps(dict(self.preprocessing), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"preprocessing contract is not JSON: {exc}") from None
        object.__setattr__(self, "preprocessing", contract)

    def labels_text(self) -> str:
        """``labels.txt`` as the export stage writes it: one label a line, each line ended."""
        return "".join(f"{label}\n" for label in self.labels)


def _pixel_range(contract: dict) -> tuple[float, float]:
    """The contract's pixel range, after checking that a caller feeds raw RGB pixels, unnormalized."""
    if contract.get("channel_order") != "RGB":
        raise ValueError(f"the preprocessing contract must take RGB pixels, not {contract.get('channel_order')!r}")
    if contract.get("normalization") != "inside the model":
        raise ValueError("only contracts whose normalization is inside the model are supported, "
                         f"not {contract.get('normalization')!r}")
    if len(contract.get("value_range") or ()) != 2:
        raise ValueError(f"the preprocessing contract's value_range is {contract.get('value_range')!r}, "
                         "not [low, high]")
    low, high = (float(v) for v in contract["value_range"])
    return low, high


# ---------------------------------------------------------------------------------------------
# TFLite: writer


def write_tflite_metadata(flatbuffer_or_path: bytes | str | os.PathLike, info: ModelInfo) -> bytes:
    """The model with standard TFLite Metadata, its labels packed in, and our contract entry.

    Any earlier ``TFLITE_METADATA``, contract entry and packed files are replaced (only
    ``labels.txt`` is packed); the other metadata entries (``min_runtime_version``,
    ``pipeline.raw_pixel_input``, ...) are kept. The same model and ``info`` give the same bytes.
    """
    from ai_edge_litert import schema_py_generated as schema

    data = (Path(flatbuffer_or_path).read_bytes() if isinstance(flatbuffer_or_path, (str, os.PathLike))
            else bytes(flatbuffer_or_path))
    if not _is_tflite(data):
        raise MetadataError("not a TFLite flatbuffer (no TFL3 identifier)")
    model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise MetadataError(f"expected one input and one output, found {len(graph.inputs)} and {len(graph.outputs)}")
    inp, out = graph.tensors[int(graph.inputs[0])], graph.tensors[int(graph.outputs[0])]
    shape = [int(d) for d in inp.shape]
    expected = info.preprocessing.get("input_shape")
    if len(shape) != 4 or shape[-1] != 3 or (expected and shape[1:] != list(expected)[1:]):
        raise MetadataError(f"the input shape {shape} is not the contract's image {expected}")
    classes = int(np.prod(out.shape[1:]))
    if classes != len(info.labels):
        raise MetadataError(f"the model has {classes} outputs but {len(info.labels)} labels were given")

    feed = _tflite_input(model, inp, schema, info.preprocessing)
    metadata = _model_metadata(info, feed, _tflite_output_stats(out, schema))
    _set_metadata_entry(model, TFLITE_METADATA, metadata, schema)
    _set_metadata_entry(model, PREPROCESSING_METADATA, json.dumps(info.preprocessing).encode(), schema)
    return _with_labels(_pack_model(model, schema, len(data)), info.labels_text())


def _is_tflite(data: bytes) -> bool:
    import flatbuffers

    return len(data) >= 8 and flatbuffers.util.BufferHasIdentifier(data, 0, b"TFL3")


def _metadata_entry(model, name: str) -> bytes | None:
    """The bytes of the model metadata entry ``name`` of an object-API model, or None."""
    for entry in model.metadata or []:
        if _text(entry.name) == name:
            return np.asarray(model.buffers[entry.buffer].data, np.uint8).tobytes()
    return None


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, (bytes, bytearray)) else str(value)


def _tflite_input(model, tensor, schema, contract: dict) -> dict:
    """What the input takes, as normalization mean/std and the value range of the tensor, per channel."""
    from exporters.inspect import RAW_PIXEL_METADATA

    low, high = _pixel_range(contract)
    types = {schema.TensorType.FLOAT32: "float32", schema.TensorType.UINT8: "uint8", schema.TensorType.INT8: "int8"}
    dtype = types.get(tensor.type)
    size = f"{tensor.shape[1]}x{tensor.shape[2]}"
    if dtype == "float32":
        return {"dtype": dtype, "mean": 0.0, "std": 1.0, "min": low, "max": high,
                "description": f"RGB image, {size}, pixels {low:g}..{high:g} as float32; "
                               "the model normalizes them itself"}
    if dtype not in _TFLITE_INTEGER:
        raise MetadataError(f"unsupported input tensor type {tensor.type} (float32, uint8 or int8 expected)")
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) != 1:
        raise MetadataError("the integer input has no single scale and zero point")
    scale, zero_point = float(q.scale[0]), int(q.zeroPoint[0])
    raw = _metadata_entry(model, RAW_PIXEL_METADATA)
    if raw is not None:  # the stored integer is pixel + offset, whatever the quantization stands for
        offset = int(json.loads(raw)["pixel_offset"])
        slope, intercept = 1.0, float(offset)
        what = "the camera's 8-bit RGB pixels as they are" if offset == 0 else \
            f"the camera's 8-bit RGB pixels {offset:+d}"
    else:  # the quantized value stands for the raw pixel
        slope, intercept = 1.0 / scale, float(zero_point)
        what = "RGB pixels quantized with the input's scale and zero point"
    # A caller that normalizes, then quantizes (q = x / scale + zero_point), must land on
    # q = slope * pixel + intercept: std = 1 / (slope * scale), mean = (zero_point - intercept) / slope.
    limits = np.iinfo(_TFLITE_INTEGER[dtype])
    return {"dtype": dtype, "mean": (zero_point - intercept) / slope, "std": 1.0 / (slope * scale),
            "min": float(np.clip(slope * low + intercept, limits.min, limits.max)),
            "max": float(np.clip(slope * high + intercept, limits.min, limits.max)),
            "description": f"RGB image, {size}, {what}, as {dtype}"}


def _tflite_output_stats(tensor, schema) -> tuple[float, float]:
    """The range of the output tensor's values: probabilities 0..1, or their quantized integers."""
    if tensor.type == schema.TensorType.FLOAT32:
        return 0.0, 1.0
    dtype = {schema.TensorType.UINT8: np.uint8, schema.TensorType.INT8: np.int8}.get(tensor.type)
    q = tensor.quantization
    if dtype is None or q is None or q.scale is None or len(q.scale) != 1:
        raise MetadataError(f"unsupported output tensor type {tensor.type}")
    limits = np.iinfo(dtype)
    scale, zero_point = float(q.scale[0]), int(q.zeroPoint[0])
    low, high = (float(np.clip(np.round(p / scale + zero_point), limits.min, limits.max)) for p in (0.0, 1.0))
    return low, high


def _model_metadata(info: ModelInfo, feed: dict, output_range: tuple[float, float]) -> bytes:
    """The ``ModelMetadata`` flatbuffer: one subgraph, an image in, probabilities out with labels."""
    import flatbuffers

    b = flatbuffers.Builder(1024)

    def text(value):
        return None if value is None else b.CreateString(value)

    def floats(values):
        return b.CreateNumpyVector(np.asarray(values, np.float32))

    def offsets(items):
        b.StartVector(4, len(items), 4)
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        return b.EndVector()

    def stats(low, high, channels):
        low, high = floats([low] * channels), floats([high] * channels)
        return _table(b, "Stats", min=low, max=high)

    # Input: an RGB image; the normalization a caller applies; the range of the tensor's values.
    image = _table(b, "ImageProperties", color_space=1)  # RGB
    content_in = _table(b, "Content", content_properties_type=CONTENT_IMAGE, content_properties=image)
    mean, std = floats([feed["mean"]] * 3), floats([feed["std"]] * 3)
    normalization = _table(b, "NormalizationOptions", mean=mean, std=std)
    unit = _table(b, "ProcessUnit", options_type=OPTIONS_NORMALIZATION, options=normalization)
    input_md = _table(b, "TensorMetadata", name=text(INPUT_NAME), description=text(feed["description"]),
                      content=content_in, process_units=offsets([unit]),
                      stats=stats(feed["min"], feed["max"], 3))
    # Output: one probability per line of labels.txt.
    labels = _table(b, "AssociatedFile", name=text(LABELS_FILE), type=TENSOR_AXIS_LABELS,
                    description=text("Class names, one per line, in the order of the output"))
    features = _table(b, "FeatureProperties")
    content_out = _table(b, "Content", content_properties_type=CONTENT_FEATURE, content_properties=features)
    output_md = _table(b, "TensorMetadata", name=text(OUTPUT_NAME),
                       description=text(f"Probability of each of the {len(info.labels)} classes (softmax), "
                                        f"in the order of {LABELS_FILE}"),
                       content=content_out, stats=stats(*output_range, 1), associated_files=offsets([labels]))
    subgraph = _table(b, "SubGraphMetadata", input_tensor_metadata=offsets([input_md]),
                      output_tensor_metadata=offsets([output_md]))
    root = _table(b, "ModelMetadata", name=text(info.name), description=text(info.description),
                  version=text(str(info.version)), subgraph_metadata=offsets([subgraph]),
                  author=text(info.author), license=text(info.license),
                  min_parser_version=text(MIN_PARSER_VERSION))
    b.Finish(root, file_identifier=METADATA_FILE_IDENTIFIER)
    return bytes(b.Output())


def _table(builder, kind: str, **fields) -> int:
    """One table of the metadata schema; ``fields`` are offsets already built, or enum values."""
    from flatbuffers import number_types

    names = _SCHEMA[kind]
    builder.StartObject(len(names))
    for name, value in fields.items():
        if value is None:
            continue
        slot = names.index(name)
        if name in _BYTE_FIELDS:
            flags = number_types.Int8Flags if _BYTE_FIELDS[name] == "int8" else number_types.Uint8Flags
            builder.PrependSlot(flags, slot, value, 0)
        else:
            builder.PrependUOffsetTRelativeSlot(slot, value, 0)
    return builder.EndObject()


def _set_metadata_entry(model, name: str, data: bytes, schema) -> None:
    """Point the model metadata entry ``name`` at a buffer holding ``data`` (replacing its old buffer)."""
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(data, np.uint8)
    for entry in model.metadata or []:
        if _text(entry.name) == name:
            model.buffers[entry.buffer] = buffer
            return
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = name, len(model.buffers) - 1
    model.metadata = list(model.metadata or []) + [entry]


def _pack_model(model, schema, size_hint: int) -> bytes:
    """Serialize an object-API model, with every buffer's data 16-byte aligned.

    schema.fbs declares ``Buffer.data`` with ``force_align: 16``; the generated Python
    ``Pack`` ignores it (the converter's own files are only 4-aligned), so we align here.
    """
    import flatbuffers

    class AlignedBuffer(schema.BufferT):
        def Pack(self, builder):
            if self.data is not None and len(self.data):
                builder.Prep(16, len(self.data))  # the vector's data, written next, starts 16-aligned
            return super().Pack(builder)

    for i, buffer in enumerate(model.buffers):
        if buffer.offset:  # weights outside the flatbuffer (files over 2 GB): repacking would lose them
            raise MetadataError("the model keeps its weights outside the flatbuffer; cannot add metadata")
        data = None if buffer.data is None else np.asarray(buffer.data, np.uint8)
        model.buffers[i] = AlignedBuffer(data, buffer.offset, buffer.size)
    builder = flatbuffers.Builder(size_hint + 65536)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _with_labels(flatbuffer: bytes, labels_text: str) -> bytes:
    """The flatbuffer with the labels file packed in: a zip archive appended to it.

    As the standard populator packs associated files (zipfile writing after the model
    bytes, so the archive's offsets count from the start of the file), but reproducible:
    a fixed time stamp and attributes, stored uncompressed (an app can map it in place).
    """
    entry = zipfile.ZipInfo(LABELS_FILE, date_time=(1980, 1, 1, 0, 0, 0))
    entry.compress_type = zipfile.ZIP_STORED
    entry.create_system = 3  # unix, whatever the host
    entry.external_attr = 0o644 << 16
    out = io.BytesIO()
    out.write(flatbuffer)
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr(entry, labels_text.encode("utf-8"))
    return out.getvalue()


# ---------------------------------------------------------------------------------------------
# TFLite: reader (our own, from the same schema; the tests check it against the generated one)


class _Table:
    """Read access to one table of the metadata schema, by field name."""

    def __init__(self, buf, pos: int, kind: str):
        from flatbuffers.table import Table

        self._tab, self.kind = Table(buf, pos), kind

    def _offset(self, name: str) -> int:
        return self._tab.Offset(4 + 2 * _SCHEMA[self.kind].index(name))

    def string(self, name: str) -> str | None:
        o = self._offset(name)
        return self._tab.String(o + self._tab.Pos).decode("utf-8") if o else None

    def scalar(self, name: str) -> int:
        from flatbuffers import number_types

        o = self._offset(name)
        flags = number_types.Int8Flags if _BYTE_FIELDS[name] == "int8" else number_types.Uint8Flags
        return self._tab.Get(flags, o + self._tab.Pos) if o else 0

    def table(self, name: str, kind: str) -> _Table | None:
        o = self._offset(name)
        return _Table(self._tab.Bytes, self._tab.Indirect(o + self._tab.Pos), kind) if o else None

    def tables(self, name: str, kind: str) -> list[_Table]:
        o = self._offset(name)
        if not o:
            return []
        start = self._tab.Vector(o)
        return [_Table(self._tab.Bytes, self._tab.Indirect(start + 4 * i), kind) for i in range(self._tab.VectorLen(o))]

    def floats(self, name: str) -> list[float]:
        from flatbuffers import number_types

        o = self._offset(name)
        return [float(v) for v in self._tab.GetVectorAsNumpy(number_types.Float32Flags, o)] if o else []


def read_tflite_metadata(path: str | os.PathLike) -> dict:
    """What a TFLite file's metadata says: name, version, labels (from the packed file), input, output.

    ``input.normalization`` is what a caller applies, ``(x - mean) / std``, before quantizing
    with the input's own scale and zero point; ``input.value_range`` is the range of the
    input tensor's values (stats), ``preprocessing`` our contract entry, if the file has one.
    """
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    path = Path(path)
    data = path.read_bytes()
    if not _is_tflite(data):
        raise MetadataError(f"{path} is not a TFLite file")
    model = schema.Model.GetRootAsModel(data, 0)
    entries = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        entries[entry.Name().decode("utf-8")] = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    buf = entries.get(TFLITE_METADATA)
    if buf is None:
        raise MetadataError(f"{path} has no {TFLITE_METADATA} entry")
    if not flatbuffers.util.BufferHasIdentifier(buf, 0, METADATA_FILE_IDENTIFIER):
        raise MetadataError(f"{path}: the {TFLITE_METADATA} buffer is not a ModelMetadata flatbuffer")
    root = _Table(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0), "ModelMetadata")
    subgraphs = root.tables("subgraph_metadata", "SubGraphMetadata")
    if len(subgraphs) != 1:
        raise MetadataError(f"{path}: expected one subgraph metadata, found {len(subgraphs)}")
    inputs = subgraphs[0].tables("input_tensor_metadata", "TensorMetadata")
    outputs = subgraphs[0].tables("output_tensor_metadata", "TensorMetadata")
    if len(inputs) != 1 or len(outputs) != 1:
        raise MetadataError(f"{path}: expected one input and one output tensor metadata")
    packed = _packed_files(data)
    output = _tensor_metadata(outputs[0])
    label_files = [f["name"] for f in output["associated_files"] if f["type"] == TENSOR_AXIS_LABELS]
    if not label_files:
        raise MetadataError(f"{path}: the output has no TENSOR_AXIS_LABELS file")
    if label_files[0] not in packed:
        raise MetadataError(f"{path}: the labels file {label_files[0]!r} is not packed in the model file")
    version = root.string("version")
    graph = model.Subgraphs(0)
    preprocessing = entries.get(PREPROCESSING_METADATA)
    return {
        "format": "tflite",
        "name": root.string("name"),
        "description": root.string("description"),
        "version": int(version) if version is not None and version.isdigit() else version,
        "author": root.string("author"),
        "license": root.string("license"),
        "min_parser_version": root.string("min_parser_version"),
        "labels": packed[label_files[0]].decode("utf-8").splitlines(),
        "labels_file": label_files[0],
        "input": {**_tensor_metadata(inputs[0]), **_tflite_tensor(graph.Tensors(graph.Inputs(0)))},
        "output": {**output, **_tflite_tensor(graph.Tensors(graph.Outputs(0)))},
        "preprocessing": json.loads(preprocessing) if preprocessing is not None else None,
        "packed_files": sorted(packed),
    }


_TFLITE_TYPE_NAMES = {0: "float32", 1: "float16", 3: "uint8", 9: "int8"}  # schema.fbs TensorType


def _tflite_tensor(t) -> dict:
    """Graph name, dtype, shape (-1 for a free dimension) and quantization of a tensor of the model."""
    q = t.Quantization()
    quantization = None
    if q is not None and q.ScaleLength() == 1:
        quantization = {"scale": float(q.ScaleAsNumpy()[0]), "zero_point": int(q.ZeroPointAsNumpy()[0])}
    signature = t.ShapeSignatureAsNumpy() if t.ShapeSignatureLength() else t.ShapeAsNumpy()
    return {"tensor": t.Name().decode("utf-8"), "dtype": _TFLITE_TYPE_NAMES.get(t.Type(), "other"),
            "shape": [None if int(d) < 0 else int(d) for d in signature], "quantization": quantization}


def _tensor_metadata(t: _Table) -> dict:
    content = t.table("content", "Content")
    kind = content.scalar("content_properties_type") if content else 0
    result = {"name": t.string("name"), "description": t.string("description"),
              "content": {CONTENT_IMAGE: "image", CONTENT_FEATURE: "feature"}.get(kind, "other")}
    if kind == CONTENT_IMAGE:
        image = content.table("content_properties", "ImageProperties")
        result["color_space"] = COLOR_SPACES.get(image.scalar("color_space") if image else 0, "UNKNOWN")
    for unit in t.tables("process_units", "ProcessUnit"):
        if unit.scalar("options_type") == OPTIONS_NORMALIZATION:
            options = unit.table("options", "NormalizationOptions")
            result["normalization"] = {"mean": options.floats("mean"), "std": options.floats("std")}
    stats = t.table("stats", "Stats")
    if stats is not None:
        low, high = stats.floats("min"), stats.floats("max")
        result["stats"] = {"min": low, "max": high}
        result["value_range"] = [min(low), max(high)] if low and high else None
    result["associated_files"] = [{"name": f.string("name"), "type": f.scalar("type"),
                                   "description": f.string("description")}
                                  for f in t.tables("associated_files", "AssociatedFile")]
    return result


def _packed_files(data: bytes) -> dict[str, bytes]:
    """The files packed after the flatbuffer (a zip archive), by name; none when there is no archive."""
    stream = io.BytesIO(data)
    if not zipfile.is_zipfile(stream):
        return {}
    with zipfile.ZipFile(stream) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


# ---------------------------------------------------------------------------------------------
# ONNX

ONNX_PROPS = ("name", "version", "labels", "normalization", "value_range", "preprocessing")


def write_onnx_metadata(model_path: str | os.PathLike, info: ModelInfo) -> None:
    """Write ``doc_string``, ``model_version`` and ``metadata_props`` into the ONNX file, in place.

    Props: ``name``, ``version``, ``labels`` (JSON list), ``normalization`` (JSON mean/std the
    caller applies: identity, the model normalizes itself), ``value_range`` (JSON), ``preprocessing``
    (the contract, JSON), ``model_author``/``model_license`` (onnx/docs/IR.md) and the ``Image.*``
    keys of onnx/docs/MetadataProps.md (informative: they bind to inputs denoted IMAGE, which
    means NCHW; ours is NHWC, so it carries no denotation). Other props are kept.
    """
    import onnx

    path = Path(model_path)
    proto = onnx.load(str(path))
    low, high = _pixel_range(info.preprocessing)
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise MetadataError(f"{path}: expected one input and one output, found {len(graph.input)} and "
                            f"{len(graph.output)}")
    if graph.input[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise MetadataError(f"{path}: the input is not float32 raw pixels")
    dims = graph.output[0].type.tensor_type.shape.dim
    if dims and dims[-1].HasField("dim_value") and dims[-1].dim_value != len(info.labels):
        raise MetadataError(f"{path}: the model has {dims[-1].dim_value} outputs but {len(info.labels)} labels "
                            "were given")
    props = {
        "name": info.name,
        "version": str(info.version),
        "labels": json.dumps(list(info.labels), ensure_ascii=False),
        "normalization": json.dumps({"mean": [0.0] * 3, "std": [1.0] * 3}),
        "value_range": json.dumps([low, high]),
        "preprocessing": json.dumps(info.preprocessing, ensure_ascii=False),
        "model_author": info.author,
        "model_license": info.license,
        "Image.BitmapPixelFormat": "Rgb8",
        "Image.ColorSpaceGamma": "SRGB",
        "Image.NominalPixelRange": "NominalRange_0_255" if (low, high) == (0.0, 255.0) else None,
    }
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    for key, value in kept + [(k, v) for k, v in props.items() if v is not None]:
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = info.description
    proto.model_version = info.version
    onnx.checker.check_model(proto)
    _replace(path, proto.SerializeToString())


def read_onnx_metadata(path: str | os.PathLike) -> dict:
    """What an ONNX file's metadata says, in the shape of ``read_tflite_metadata``'s answer."""
    import onnx

    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    missing = [key for key in ONNX_PROPS if key not in props]
    if missing:
        raise MetadataError(f"{path} has no metadata props {', '.join(missing)}")
    normalization = json.loads(props["normalization"])
    graph = proto.graph
    return {
        "format": "onnx",
        "name": props["name"],
        "description": proto.doc_string,
        "version": proto.model_version,
        "author": props.get("model_author"),
        "license": props.get("model_license"),
        "labels": json.loads(props["labels"]),
        "input": {**_onnx_tensor(graph.input[0]), "normalization": normalization,
                  "value_range": json.loads(props["value_range"])},
        "output": _onnx_tensor(graph.output[0]),
        "preprocessing": json.loads(props["preprocessing"]),
        "props": props,
    }


def _onnx_tensor(value) -> dict:
    """Name, dtype and shape (None for a named or free dimension) of a graph input or output."""
    import onnx

    kind = value.type.tensor_type
    shape = [d.dim_value if d.HasField("dim_value") else None for d in kind.shape.dim]
    return {"name": value.name, "tensor": value.name,
            "dtype": np.dtype(onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type)).name,
            "shape": shape, "quantization": None}


# ---------------------------------------------------------------------------------------------
# Either format, by suffix


def write_metadata(path: str | os.PathLike, info: ModelInfo) -> None:
    """Add the metadata of ``info`` to an exported ``.tflite`` or ``.onnx`` file, in place."""
    path = Path(path)
    kind = kind_of_file(path)
    if kind.runtime == "litert":
        _replace(path, write_tflite_metadata(path, info))
    elif kind.runtime == "onnxruntime":
        write_onnx_metadata(path, info)
    else:
        raise ValueError(f"no metadata for {path.name}: .tflite and .onnx files carry it")


def read_metadata(path: str | os.PathLike) -> dict:
    """``read_tflite_metadata`` or ``read_onnx_metadata``, by the file's suffix."""
    path = Path(path)
    readers = {"litert": read_tflite_metadata, "onnxruntime": read_onnx_metadata}
    try:
        runtime = kind_of_file(path).runtime
    except ValueError:
        runtime = None
    if runtime not in readers:
        raise ValueError(f"no metadata in {path.name}: .tflite and .onnx files carry it")
    return readers[runtime](path)


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a reader never sees half a file."""
    from core.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
