"""The model contract: what every exported file takes and gives, and the names the layers below agree on.

The classifier takes raw RGB pixels in [0, 255] under one input name and
normalizes inside the graph (the ``preprocess`` layer), so every file has the
same input contract and a phone app feeds camera pixels as they are. The
contract is written into each file's metadata and into ``manifest.json``.
"""

from __future__ import annotations

INPUT_NAME = "image"  # the Keras input, the TFLite signature input and the ONNX graph input
PREPROCESS_LAYER = "preprocess"  # the in-graph normalization; exporters fold it into the input quantization
HEAD_PREFIX = "head_"  # the layers fine-tuning adds on the backbone
# How the data stage turns a photo into the model's square input; an app must do the same.
RESIZE_POLICY = "center-crop to square, then bilinear resize to image_size"
OUTPUT = "class probabilities (softmax), one per line of labels.txt"


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
