"""Exported files describe themselves: standard TFLite Metadata and ONNX metadata_props, read back independently."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core import contract, layers
from exporters import convert
from exporters import inspect, metadata
from exporters.runtimes import open_session
from pipeline import models
from pipeline.config import ModelConfig
from tests.conftest import SharedFolder


SIZE = 32  # the shared tiny build's digits classifier
LABELS = tuple("zero one two three four five six seven eight nine".split())
# name -> (exporter, int8_input, int8_output, normalization); the BGR model's caffe
# preprocessing does not fold into the input quantization, MobileNetV2's does.
FILES = {
    "fp32": ("tflite-fp32", "uint8", "float", "mobilenet"),
    "uint8": ("tflite-int8", "uint8", "float", "mobilenet"),
    "int8-io": ("tflite-int8", "int8", "int8", "mobilenet"),
    "uint8-unfolded": ("tflite-int8", "uint8", "float", "bgr"),
    "onnx": ("onnx-fp32", "uint8", "float", "mobilenet"),
}
TFLITE_FILES = [name for name, spec in FILES.items() if spec[0].startswith("tflite")]
# What each file's metadata must say a caller does: (x - mean) / std, then quantize with the
# input's scale and zero point; and the range of the input tensor's values.
EXPECTED_INPUT = {
    "fp32": {"mean": 0.0, "std": 1.0, "range": (0.0, 255.0)},
    "uint8": {"mean": 128.0, "std": 127.5, "range": (0.0, 255.0)},
    "int8-io": {"mean": 128.0, "std": 127.5, "range": (-128.0, 127.0)},
    "uint8-unfolded": {"mean": 0.0, "std": 1.0, "range": (0.0, 255.0)},
}


def _bgr_classifier():
    """Raw pixels -> caffe-style BGR preprocessing -> one convolution -> softmax: converts in a second or two."""
    from core.keras_compat import keras

    keras.utils.set_random_seed(3)
    mean, std, order = (103.939, 116.779, 123.68), (1.0,) * 3, "BGR"
    inputs = keras.Input((SIZE, SIZE, 3), name=contract.INPUT_NAME)
    x = layers.Preprocess(mean, std, order, name=contract.PREPROCESS_LAYER)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(LABELS), activation="softmax")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(scope="session")
def test_digits(tiny_build) -> np.ndarray:
    from core.splits import load_split

    cfg, _ = tiny_build
    return load_split(cfg.build_root / "data/test.npz")[0][:32].astype(np.float32)


@pytest.fixture(scope="session")
def exported(tmp_path_factory, worker_id, tiny_build) -> dict[str, Path]:
    """Each kind of file the exporters write, without metadata: from the tiny build's trained MobileNetV2
    (its normalization folds into the int8 input), and from a BGR model whose normalization does not.
    Made once per session, by whichever pytest-xdist worker needs them first."""
    from core.splits import load_split
    from core.loader import load_classifier as load_model

    cfg, _ = tiny_build
    with SharedFolder(tmp_path_factory, worker_id, "exported") as shared:
        root = shared.path
        files = {name: root / f"{name}{convert.get(spec[0]).suffix}" for name, spec in FILES.items()}
        if not shared.ready:
            calibration = load_split(cfg.build_root / "data/train.npz")[0][:64].astype(np.float32)
            built = {"mobilenet": load_model(cfg.build_root / "finetune/model.keras"), "bgr": _bgr_classifier()}
            for name, (fmt, int8_input, int8_output, kind) in FILES.items():
                ctx = convert.ExportContext(image_size=SIZE, onnx_opset=17, calibration_images=calibration,
                                              int8_input=int8_input, int8_output=int8_output)
                convert.get(fmt).export(built[kind], files[name], ctx)
            shared.done()
    return files


@pytest.fixture(scope="module")
def info() -> metadata.ModelInfo:
    return metadata.ModelInfo(
        name="tiny", description="Which digit the picture shows", version=7, labels=LABELS,
        preprocessing=models.preprocessing_contract(ModelConfig(weights="none"), SIZE), author="pipeline tests",
    )


def _with_metadata(path: Path, info: metadata.ModelInfo, tmp_path: Path) -> Path:
    out = tmp_path / f"meta_{path.name}"
    out.write_bytes(metadata.write_tflite_metadata(path, info))
    return out


def _standard_metadata(path: Path, schema):
    """The ModelMetadata of a TFLite file, as the generated reader's object tree."""
    from ai_edge_litert import schema_py_generated as tfl

    data = path.read_bytes()
    model = tfl.Model.GetRootAsModel(data, 0)
    names = [model.Metadata(i).Name().decode() for i in range(model.MetadataLength())]
    assert names.count("TFLITE_METADATA") == 1, names
    entry = model.Metadata(names.index("TFLITE_METADATA"))
    buf = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
    assert schema.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0)
    return schema.ModelMetadataT.InitFromObj(schema.ModelMetadata.GetRootAsModelMetadata(buf, 0))


@pytest.mark.parametrize("name", TFLITE_FILES)
def test_standard_reader_finds_the_labels_and_the_normalization(name, exported, info, standard_schema, tmp_path):
    path = _with_metadata(exported[name], info, tmp_path)
    meta = _standard_metadata(path, standard_schema)
    assert (meta.name, meta.description, meta.version) == (b"tiny", info.description.encode(), b"7")
    assert meta.author == b"pipeline tests" and meta.minParserVersion == b"1.0.0"
    (subgraph,) = meta.subgraphMetadata
    (image,), (probability,) = subgraph.inputTensorMetadata, subgraph.outputTensorMetadata

    types = standard_schema.ContentProperties
    assert image.name == b"image" and image.content.contentPropertiesType == types.ImageProperties
    assert image.content.contentProperties.colorSpace == standard_schema.ColorSpaceType.RGB
    (unit,) = image.processUnits
    assert unit.optionsType == standard_schema.ProcessUnitOptions.NormalizationOptions
    expected = EXPECTED_INPUT[name]
    np.testing.assert_allclose(unit.options.mean, [expected["mean"]] * 3, rtol=1e-6)
    np.testing.assert_allclose(unit.options.std, [expected["std"]] * 3, rtol=1e-6)
    assert (list(image.stats.min), list(image.stats.max)) == ([expected["range"][0]] * 3, [expected["range"][1]] * 3)

    assert probability.name == b"probability" and probability.content.contentPropertiesType == types.FeatureProperties
    (labels_file,) = probability.associatedFiles
    assert labels_file.name == b"labels.txt"
    assert labels_file.type == standard_schema.AssociatedFileType.TENSOR_AXIS_LABELS
    with zipfile.ZipFile(io.BytesIO(path.read_bytes())) as packed:
        assert packed.namelist() == ["labels.txt"]
        assert packed.read("labels.txt").decode("utf-8").splitlines() == list(LABELS)

    ours = metadata.read_tflite_metadata(path)  # our reader says the same
    assert (ours["name"], ours["version"], ours["labels"]) == ("tiny", 7, list(LABELS))
    assert ours["input"]["normalization"] == {"mean": list(unit.options.mean), "std": list(unit.options.std)}
    assert ours["input"]["value_range"] == list(expected["range"]) and ours["input"]["color_space"] == "RGB"
    assert ours["preprocessing"] == info.preprocessing


@pytest.mark.parametrize("name", TFLITE_FILES)
def test_normalizing_then_quantizing_as_the_metadata_says_feeds_exactly_what_the_file_takes(name, exported, info,
                                                                                            tmp_path):
    """The schema's convention (and Android Studio's generated code): (pixel - mean) / std, then quantize
    with the input's scale and zero point. MediaPipe feeds integer inputs the bytes as they are.
    Both must give what our own runtime feeds: the camera byte (int8: the byte - 128), or the float pixel."""
    path = _with_metadata(exported[name], info, tmp_path)
    read = metadata.read_tflite_metadata(path)
    session = open_session(path, "litert")
    pixels = np.tile(np.arange(256, dtype=np.float32), SIZE * SIZE // 256).reshape(1, SIZE, SIZE, 1).repeat(3, axis=3)
    mean, std = (np.asarray(read["input"]["normalization"][k], np.float32) for k in ("mean", "std"))
    x = (pixels - mean) / std
    if session.quantized_in:
        scale, zero_point = session.inp["quantization"]
        x = np.round(x / np.float32(scale) + zero_point)
        assert x.min() == read["input"]["value_range"][0] and x.max() == read["input"]["value_range"][1]
        if read["input"]["dtype"] == "uint8":
            assert np.array_equal(x, pixels)  # what MediaPipe and the Task Library feed a uint8 input
    np.testing.assert_array_equal(x, session.prepare(pixels).astype(np.float32))


@pytest.mark.parametrize("name", TFLITE_FILES)
def test_adding_metadata_leaves_litert_outputs_bit_identical(name, exported, info, test_digits, tmp_path):
    before, after = exported[name], _with_metadata(exported[name], info, tmp_path)
    images = test_digits
    outputs = []
    for path in before, after:
        session = open_session(path, "litert")
        outputs.append(session.invoke(session.prepare(images)))
    assert outputs[0].dtype == outputs[1].dtype and np.array_equal(outputs[0], outputs[1])
    assert inspect.raw_pixel_offset(after) == inspect.raw_pixel_offset(before)
    summary_before, summary_after = inspect.tflite_summary(before), inspect.tflite_summary(after)
    assert summary_after == summary_before


def test_rewriting_metadata_replaces_it_and_the_bytes_are_reproducible(exported, info, tmp_path):
    from dataclasses import replace

    path = exported["uint8"]
    once = metadata.write_tflite_metadata(path, info)
    assert metadata.write_tflite_metadata(path.read_bytes(), info) == once
    renamed = replace(info, name="other", labels=tuple(reversed(info.labels)))
    twice = tmp_path / "twice.tflite"
    twice.write_bytes(metadata.write_tflite_metadata(metadata.write_tflite_metadata(path, renamed), info))
    assert twice.read_bytes() == once  # the old entry, buffer and packed labels are replaced, not added to
    entries = metadata.read_tflite_metadata(twice)
    assert entries["name"] == "tiny" and entries["labels"] == list(info.labels)
    assert entries["packed_files"] == ["labels.txt"]


def test_onnx_metadata_round_trips_passes_the_checker_and_leaves_outputs_identical(exported, info, test_digits,
                                                                                   tmp_path):
    import onnx

    path = tmp_path / "model.onnx"
    path.write_bytes(exported["onnx"].read_bytes())
    metadata.write_onnx_metadata(path, info)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.doc_string == info.description and proto.model_version == 7

    read = metadata.read_metadata(path)
    assert (read["name"], read["version"], read["labels"]) == ("tiny", 7, list(LABELS))
    assert read["input"]["normalization"] == {"mean": [0.0] * 3, "std": [1.0] * 3}
    assert read["input"]["value_range"] == [0.0, 255.0] and read["input"]["dtype"] == "float32"
    assert read["preprocessing"] == info.preprocessing and read["author"] == "pipeline tests"
    assert read["props"]["Image.NominalPixelRange"] == "NominalRange_0_255"

    images = test_digits
    before, after = (open_session(p, "onnxruntime").predict(images) for p in (exported["onnx"], path))
    assert np.array_equal(before, after)


_PLAIN = tuple(f"class {i}" for i in range(3, 10))  # the model has ten outputs
ODD_LABELS = [
    ("roses/red", "dandelion\\yellow", "C:\\tulips") + _PLAIN,  # slashes
    ("Schwertlilie", "花", "ñandú 🦤") + _PLAIN,  # non-ASCII, an emoji outside the BMP
    ("x" * 5000, "label with inner  spaces", '"quoted", {json}') + _PLAIN,  # very long, JSON-looking
]


@pytest.mark.parametrize("labels", ODD_LABELS, ids=["slashes", "non-ascii", "long"])
def test_odd_labels_survive_the_round_trip(labels, exported, info, standard_schema, tmp_path):
    from dataclasses import replace

    odd = replace(info, labels=labels)
    path = tmp_path / "odd.tflite"
    path.write_bytes(metadata.write_tflite_metadata(exported["fp32"], odd))
    assert metadata.read_tflite_metadata(path)["labels"] == list(labels)
    _standard_metadata(path, standard_schema)  # still a valid standard buffer
    with zipfile.ZipFile(path) as packed:
        assert packed.read("labels.txt") == "".join(f"{label}\n" for label in labels).encode("utf-8")
    onnx_path = tmp_path / "odd.onnx"
    onnx_path.write_bytes(exported["onnx"].read_bytes())
    metadata.write_onnx_metadata(onnx_path, odd)
    assert metadata.read_onnx_metadata(onnx_path)["labels"] == list(labels)


@pytest.mark.parametrize("label, complaint", [
    ("two\nlines", "line break"), ("carriage\rreturn", "line break"), ("para\u2029graph", "line break"),
    ("", "blank"), ("   ", "blank"), (" padded", "whitespace"), ("bad \udc80 byte", "not valid Unicode"),
    (3, "not a string"),
])
def test_labels_that_would_not_survive_labels_txt_are_rejected_by_name(label, complaint, info):
    from dataclasses import replace

    with pytest.raises(ValueError, match=f"label 1 .*{complaint}"):
        replace(info, labels=("fine", label, "also fine"))


def test_files_and_infos_that_do_not_match_are_refused(exported, info, tmp_path):
    from dataclasses import replace

    classes = len(info.labels)
    with pytest.raises(metadata.MetadataError, match=f"{classes} outputs but {classes - 1} labels"):
        metadata.write_tflite_metadata(exported["fp32"], replace(info, labels=info.labels[1:]))
    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(exported["onnx"].read_bytes())
    with pytest.raises(metadata.MetadataError, match=f"{classes} outputs but {classes + 1} labels"):
        metadata.write_onnx_metadata(onnx_path, replace(info, labels=info.labels + ("extra",)))
    wrong_size = models.preprocessing_contract(ModelConfig(weights="none"), SIZE * 2)
    with pytest.raises(metadata.MetadataError, match="not the contract's image"):
        metadata.write_tflite_metadata(exported["fp32"], replace(info, preprocessing=wrong_size))
    with pytest.raises(metadata.MetadataError, match="no TFLITE_METADATA"):
        metadata.read_tflite_metadata(exported["fp32"])
    with pytest.raises(metadata.MetadataError, match="no metadata props"):
        metadata.read_onnx_metadata(exported["onnx"])
    with pytest.raises(ValueError, match="version must be a non-negative integer"):
        replace(info, version="1.0")
