"""What a converter is: code that turns a trained Keras model into the file of one registered format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from exporters import registry


@dataclass(frozen=True)
class ExportContext:
    """What a converter may need beyond the model."""

    image_size: int
    onnx_opset: int
    # Real training images for calibration (used by quantizing converters).
    calibration_images: np.ndarray | None = None
    # Input and output types of full-integer TFLite files (see ExportConfig.int8_input):
    # an integer input takes camera bytes as they are (int8: byte - 128); "float"
    # keeps the raw-pixel float32 contract / returns float32 probabilities.
    int8_input: str = "uint8"
    int8_output: str = "float"
    # The recipe the repair search chose (``pipeline.repair``): how activation ranges are
    # calibrated ("minmax", or "percentile" where the format's quantizer offers it), and the
    # Keras layers kept in float by a mixed format (their names, as in ``model.layers``).
    calibration_method: str = "minmax"
    float_layers: tuple[str, ...] = ()
    # The integer types of activations and weights, where the quantizer offers a choice
    # (the format row's ``int8_types``; "" is its first, the default).
    int8_types: str = ""
    # "adaptive": the convolutions' weights rounded as the calibration images' layer inputs favour,
    # with bias correction (``exporters.rounding``); "nearest": the quantizer's own rounding.
    weight_rounding: str = "nearest"


class Converter:
    """Converts to the format whose registry row is named ``format``; a subclass overrides only what differs."""

    format: ClassVar[str]

    @property
    def spec(self) -> type[registry.Format]:
        return registry.get(self.format)

    def __getattr__(self, name: str):
        # A converter reads as its row (suffix, runtime, budgets...): one place holds them.
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.spec, name)

    def export(self, model, path: Path, ctx: ExportContext) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def unsupported(self, int8_types: str, weight_rounding: str) -> str | None:
        """Why this converter cannot make that combination of integer types and weight rounding; None if it can."""
        return None

    def keepable_float_layers(self, model, layers: list[str], ctx: ExportContext) -> list[str]:
        """Those of ``layers`` (Keras layer names, in order) this format can keep in float for ``model``.

        Every one, unless the converter merges some layers into others (see the ONNX one).
        """
        return list(layers)
