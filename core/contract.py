"""The model contract: what every exported file takes and gives, and the names the layers below agree on.

The classifier takes raw RGB pixels in [0, 255] under one input name and
normalizes inside the graph (the ``preprocess`` layer), so every file has the
same input contract and a phone app feeds camera pixels as they are. The
contract is written into each file's metadata and into ``manifest.json``.
"""

from __future__ import annotations

from pathlib import Path

from core import photos
from core.errors import ConfigError

INPUT_NAME = "image"  # the Keras input, the TFLite signature input and the ONNX graph input
PREPROCESS_LAYER = "preprocess"  # the in-graph normalization; exporters fold it into the input quantization
HEAD_PREFIX = "head_"  # the layers fine-tuning adds on the backbone
# How the data stage turns a photo into the model's square input; an app must do the same. The
# contract also names the resizer itself (library, version, call): another library's "bilinear" gives
# other pixels (benchmarks.resizers measures how far each file's answers move on them).
RESIZE_POLICY = "center-crop to square, then bilinear resize to image_size"
OUTPUT = "class probabilities (softmax), one per line of labels.txt"

# The normalizations a model brought to the pipeline (``model.path``) was trained with, by the name its
# tutorials give them: (mean, std, channel order), applied to RGB [0, 255] as y = (x[..., order] - mean) / std.
PREPROCESSING_PRESETS = {
    # keras.applications.mobilenet_v2.preprocess_input (also MobileNet, NASNet, Xception, InceptionV3): [-1, 1].
    "mobilenet_v2": ((127.5, 127.5, 127.5), (127.5, 127.5, 127.5), "RGB"),
    # keras.applications' "caffe" mode (VGG16/19, ResNet50): BGR, the ImageNet mean subtracted, no scaling.
    "caffe": ((103.939, 116.779, 123.68), (1.0, 1.0, 1.0), "BGR"),
    # "torch" mode (DenseNet, torchvision): x / 255, then the ImageNet mean (0.485, 0.456, 0.406) and std
    # (0.229, 0.224, 0.225), written here on the 0..255 scale (× 255).
    "torch": ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375), "RGB"),
    # The model takes RGB [0, 255] as it is (it normalizes inside, or was trained on raw pixels).
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "RGB"),
}


def preprocessing_contract(image_size: int, mean, std, channel_order: str) -> dict:
    """What a caller must feed every exported file of a model whose backbone normalizes with (mean, std, order)."""
    return {
        "input_shape": [1, image_size, image_size, 3],
        "dtype": "float32",
        "channel_order": "RGB",
        "value_range": [0.0, 255.0],
        "normalization": "inside the model",
        "in_graph_normalization": {"channel_order": channel_order, "mean": list(mean), "std": list(std)},
        "resize": RESIZE_POLICY,
        "resizer": {k: v for k, v in photos.describe(photos.CONTRACT_RESIZER).items() if k != "who"},
        "output": OUTPUT,
    }


def check_label(label: str, index: int = 0) -> None:
    """Refuse a label that would not come back unchanged from ``labels.txt`` in every reader.

    ``labels.txt`` holds one label per line: a line break inside a label shifts every later
    class, and MediaPipe and the Task Library skip blank lines and trim whitespace.
    """
    if not isinstance(label, str):
        raise ValueError(f"label {index} is {type(label).__name__} {label!r}, not a string")
    if not label.strip():
        raise ValueError(f"label {index} is blank ({label!r}); readers of labels.txt skip blank lines")
    if label.splitlines() != [label]:
        raise ValueError(f"label {index} {label!r} contains a line break; labels.txt holds one label per line")
    if label != label.strip():
        raise ValueError(f"label {index} {label!r} starts or ends with whitespace, which readers of labels.txt trim")
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"label {index} {label!r} is not valid Unicode text (labels are stored as UTF-8)") from None


def read_class_order(path: str | Path) -> tuple[str, ...]:
    """The class names of a labels file (``model.labels``), one a line, in the order of the model's outputs."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"model.labels {path!r} cannot be read ({exc.__class__.__name__}); point it at a UTF-8 "
                          "text file of class names, one a line.") from None
    # A trailing blank line is what most editors leave; a blank line inside would shift every later class.
    names = tuple(line.rstrip("\r") for line in text.rstrip("\n").split("\n"))
    for index, name in enumerate(names):
        try:
            check_label(name, index)
        except ValueError as exc:
            raise ConfigError(f"model.labels {path!r} has a line that cannot be a class name ({exc}); write one "
                              "class name a line.") from None
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"model.labels {path!r} names {twice[0]!r} twice; write each class once, in the order "
                          "of the model's outputs.")
    return names
