"""The exporter registry: one table behind the CLI help, the README's format table,
the export loop and (later) the benchmark loop.

What differs per format lives in class attributes; a subclass overrides only
what differs. Registering a name twice is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

_REGISTRY: dict[str, type["Exporter"]] = {}


@dataclass(frozen=True)
class ExportContext:
    """What an exporter may need beyond the model."""

    image_size: int
    onnx_opset: int
    # Real training images for calibration (used by quantizing exporters).
    calibration_images: np.ndarray | None = None
    # Input and output types of full-integer TFLite files (see ExportConfig.int8_input):
    # an integer input takes camera bytes as they are (int8: byte - 128); "float"
    # keeps the raw-pixel float32 contract / returns float32 probabilities.
    int8_input: str = "uint8"
    int8_output: str = "float"


class Exporter:
    name: ClassVar[str]
    suffix: ClassVar[str]  # appended to the build name: "<name><suffix>"
    runtime: ClassVar[str]  # "keras" | "litert" | "onnxruntime": where it is validated and benchmarked
    precision: ClassVar[str] = "fp32"
    description: ClassVar[str] = ""
    # Validation budget against the Keras reference on the test split. Lossless
    # formats must agree with it; lossy ones (quantized, pruned) are held to an
    # accuracy drop in percentage points instead (None: not checked).
    min_top1_agreement: ClassVar[float | None] = 0.995
    max_abs_diff: ClassVar[float | None] = 1e-4
    max_accuracy_drop_pp: ClassVar[float | None] = None
    needs_calibration: ClassVar[bool] = False
    # True when every op runs in integers (what int8-only NPUs need); checked by reading the file.
    fully_integer: ClassVar[bool] = False
    # Which trained model it converts: "finetune" (the fp32 model), or one the
    # optimize stage wrote: "qat" (quantization-aware) or "pruned-qat" (pruned,
    # then quantization-aware with the sparsity preserved).
    source: ClassVar[str] = "finetune"

    def export(self, model, path: Path, ctx: ExportContext) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class Lossy:
    """Mixin for quantized formats: held to a top-1 drop, not to matching Keras image by image."""

    min_top1_agreement = None
    max_abs_diff = None
    max_accuracy_drop_pp = 1.0


def register(name: str):
    def wrap(cls: type[Exporter]) -> type[Exporter]:
        if name in _REGISTRY:
            raise RuntimeError(f"exporter {name!r} registered twice ({_REGISTRY[name].__name__} and {cls.__name__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


SOURCES = ("finetune", "qat", "pruned-qat")


def sources(formats) -> set[str]:
    """The trained models a list of formats needs."""
    return {_REGISTRY[f].source for f in formats}


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> Exporter:
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise KeyError(f"unknown format {name!r}; valid formats: {', '.join(_REGISTRY)}") from None


def table() -> list[dict]:
    """Rows for --help and the README: name, runtime, precision, file suffix, budget."""
    return [
        {"format": n, "runtime": c.runtime, "precision": c.precision, "file": f"<name>{c.suffix}",
         "budget": budget_text(c), "description": c.description}
        for n, c in _REGISTRY.items()
    ]


def budget_text(cls: type[Exporter], drop_pp: float | None = None) -> str:
    drop = cls.max_accuracy_drop_pp if drop_pp is None else drop_pp
    parts = []
    if cls.min_top1_agreement is not None:
        parts.append(f"agreement ≥ {cls.min_top1_agreement}")
    if cls.max_abs_diff is not None:
        parts.append(f"max Δp ≤ {cls.max_abs_diff:g}")
    if drop is not None:
        parts.append(f"top-1 drop ≤ {drop:g} pp")
    return ", ".join(parts)
