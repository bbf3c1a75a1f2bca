"""The format registry: one row per format, the single table behind ``--help``, the README's format
table, config validation, the export loop, validation, inspection and the benchmark loop.

A row says what a format is (file suffix, runtime, precision, which trained model it
converts, its validation budget); what every file of one kind shares (extension,
runtime, metadata standard) is its :class:`FileKind`, reached from the row's
``runtime``. The conversion code lives in the converter modules
(``exporters.tflite``, ``exporters.onnx``, ``exporters.keras_format``), found through
``exporters.convert``; this module imports none of them, so reading the table (the
config does, and the optimize stage) does not depend on how files are converted.

What differs per format lives in class attributes; a subclass overrides only what
differs. Registering a name twice is an error.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

_REGISTRY: dict[str, type["Format"]] = {}


@dataclass(frozen=True)
class FileKind:
    """What every file of one kind shares, whichever format made it."""

    runtime: str  # where it is validated and benchmarked: the runtime that ships it
    extension: str
    metadata: Optional[str]  # the metadata standard written into the file; None: it carries none
    ships: bool  # it runs on a device (the Keras file is the reference the others are held to)


FILE_KINDS = (
    FileKind("litert", ".tflite", "TFLite Metadata (TFLITE_METADATA)", ships=True),
    FileKind("onnxruntime", ".onnx", "ONNX metadata_props", ships=True),
    FileKind("keras", ".keras", None, ships=False),
)
RUNTIMES = tuple(k.runtime for k in FILE_KINDS)


def kind_of_runtime(runtime: str) -> FileKind:
    for kind in FILE_KINDS:
        if kind.runtime == runtime:
            return kind
    raise ValueError(f"unknown runtime {runtime!r}; valid runtimes: {', '.join(RUNTIMES)}")


def kind_of_file(path) -> FileKind:
    """The kind of a model file, by its extension (reference files and ad-hoc benchmarks have no format)."""
    suffix = Path(path).suffix
    for kind in FILE_KINDS:
        if kind.extension == suffix:
            return kind
    raise ValueError(f"{Path(path).name} is not a model file this pipeline runs "
                     f"({', '.join(k.extension for k in FILE_KINDS)})")


def is_model_file(path) -> bool:
    return any(Path(path).suffix == k.extension for k in FILE_KINDS)


class Format:
    """One row: a deployable format."""

    name: ClassVar[str]
    suffix: ClassVar[str]  # appended to the build name: "<name><suffix>"
    runtime: ClassVar[str]  # a FileKind's runtime: "keras" | "litert" | "onnxruntime"
    precision: ClassVar[str] = "fp32"
    description: ClassVar[str] = ""
    # Validation budget against the Keras reference on the test split. Lossless
    # formats must agree with it; lossy ones (quantized, pruned) are held to an
    # accuracy drop in percentage points instead (None: not checked).
    min_top1_agreement: ClassVar[Optional[float]] = 0.995
    max_abs_diff: ClassVar[Optional[float]] = 1e-4
    max_accuracy_drop_pp: ClassVar[Optional[float]] = None
    needs_calibration: ClassVar[bool] = False
    # True when every op runs in integers (what int8-only NPUs need); checked by reading the file.
    fully_integer: ClassVar[bool] = False
    # How the repair search (pipeline.repair) may change the file when it is not within budget:
    # the calibration methods its quantizer offers (more calibration images apply to every
    # calibrated format), and whether it keeps its most sensitive layers in float. A format
    # never breaks its promise: a fully integer one gets no float layers.
    calibration_methods: ClassVar[tuple[str, ...]] = ()
    # Integer types of activations and weights the repair may choose from, the default first.
    int8_types: ClassVar[tuple[str, ...]] = ()
    # How its converter rounds the weights (exporters.rounding), the default first; the repair
    # tries the others. Empty: the quantizer's own rounding, nothing to choose.
    weight_roundings: ClassVar[tuple[str, ...]] = ()
    float_fallback: ClassVar[bool] = False
    # A mixed format's all-int8 counterpart: the benchmark reports the mixed file's latency against it.
    all_int8: ClassVar[Optional[str]] = None
    # Which trained model it converts: "finetune" (the fp32 model), or one the
    # optimize stage wrote: "qat" (quantization-aware) or "pruned-qat" (pruned,
    # then quantization-aware with the sparsity preserved).
    source: ClassVar[str] = "finetune"

    @classmethod
    def kind(cls) -> FileKind:
        return kind_of_runtime(cls.runtime)


class Lossy:
    """Mixin for quantized formats: held to a top-1 drop, not to matching Keras image by image."""

    min_top1_agreement = None
    max_abs_diff = None
    max_accuracy_drop_pp = 1.0


def register(name: str):
    def wrap(cls: type[Format]) -> type[Format]:
        if name in _REGISTRY:
            raise RuntimeError(f"format {name!r} registered twice ({_REGISTRY[name].__name__} and {cls.__name__})")
        cls.name = name
        kind_of_runtime(cls.runtime)  # an unknown runtime is our bug: fail at import
        if not cls.suffix.endswith(cls.kind().extension):
            raise RuntimeError(f"format {name!r}: suffix {cls.suffix!r} does not end in {cls.kind().extension}")
        _REGISTRY[name] = cls
        return cls

    return wrap


SOURCES = ("finetune", "qat", "pruned-qat")


def names() -> list[str]:
    return list(_REGISTRY)


def get(name: str) -> type[Format]:
    """The row of format ``name``; an unknown name is an error that lists the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise KeyError(f"unknown format {name!r}{hint}; valid formats: {', '.join(_REGISTRY)}") from None


def sources(formats) -> set[str]:
    """The trained models a list of formats needs."""
    return {get(f).source for f in formats}


def table() -> list[dict]:
    """Rows for --help and the README: name, runtime, precision, file suffix, budget."""
    return [
        {"format": n, "runtime": c.runtime, "precision": c.precision, "file": f"<name>{c.suffix}",
         "budget": budget_text(c), "description": c.description}
        for n, c in _REGISTRY.items()
    ]


def budget_text(cls: type[Format], drop_pp: float | None = None) -> str:
    drop = cls.max_accuracy_drop_pp if drop_pp is None else drop_pp
    parts = []
    if cls.min_top1_agreement is not None:
        parts.append(f"agreement ≥ {cls.min_top1_agreement}")
    if cls.max_abs_diff is not None:
        parts.append(f"max Δp ≤ {cls.max_abs_diff:g}")
    if drop is not None:
        parts.append(f"top-1 drop ≤ {drop:g} pp")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# The rows, in table order


@register("keras")
class Keras(Format):
    suffix = ".keras"
    runtime = "keras"
    description = "Keras reference model (tf_keras .keras file)"


@register("tflite-fp32")
class TFLiteFP32(Format):
    suffix = "_fp32.tflite"
    runtime = "litert"
    description = "TFLite, float32 weights and activations"


@register("tflite-fp16")
class TFLiteFP16(Lossy, Format):
    suffix = "_fp16.tflite"
    runtime = "litert"
    precision = "fp16"
    description = "TFLite, float16 weights (half the size; GPU delegates run it in fp16)"
    max_accuracy_drop_pp = 0.5


@register("tflite-dynamic")
class TFLiteDynamic(Lossy, Format):
    suffix = "_dynamic.tflite"
    runtime = "litert"
    precision = "dynamic-int8"
    description = "TFLite dynamic-range: int8 weights, activations quantized on the fly"


@register("tflite-int8")
class TFLiteInt8(Lossy, Format):
    suffix = "_int8.tflite"
    runtime = "litert"
    precision = "int8"
    description = "TFLite full-integer int8, calibrated on real training images; uint8 camera bytes in by default"
    needs_calibration = True
    fully_integer = True
    calibration_methods = ("minmax",)
    weight_roundings = ("adaptive", "nearest")


@register("tflite-int8-mixed")
class TFLiteInt8Mixed(TFLiteInt8):
    suffix = "_int8_mixed.tflite"
    precision = "int8-mixed"
    description = ("TFLite int8 with its most quantization-sensitive layers kept in float32 (chosen on the "
                   "validation split); not for int8-only accelerators")
    fully_integer = False
    float_fallback = True
    all_int8 = "tflite-int8"


@register("tflite-qat-int8")
class TFLiteQATInt8(TFLiteInt8):
    suffix = "_qat_int8.tflite"
    description = "TFLite full-integer int8 of the quantization-aware-trained model"
    source = "qat"
    calibration_methods = ()  # its ranges were learned
    weight_roundings = ()  # and its weights trained for the grid


@register("tflite-pruned-int8")
class TFLitePrunedInt8(TFLiteInt8):
    suffix = "_pruned_int8.tflite"
    precision = "int8-sparse"
    description = "TFLite full-integer int8 of the pruned model after sparsity-preserving QAT (smaller gzip)"
    source = "pruned-qat"
    max_accuracy_drop_pp = 2.0
    calibration_methods = ()
    weight_roundings = ()


@register("onnx-fp32")
class ONNXFP32(Format):
    suffix = "_fp32.onnx"
    runtime = "onnxruntime"
    description = "ONNX (tf2onnx), float32"


@register("onnx-int8")
class ONNXInt8(Lossy, Format):
    suffix = "_int8.onnx"
    runtime = "onnxruntime"
    precision = "int8"
    description = "ONNX static QDQ int8 (onnxruntime), per-channel weights, calibrated on real training images"
    needs_calibration = True
    calibration_methods = ("minmax", "percentile")
    # u8s8-7bit: uint8 activations, int8 weights in 7 bits (fastest on x86, and safe without VNNI);
    # s8s8 and u8u8 at full range (see exporters.onnx._TYPES for what each costs where).
    int8_types = ("u8s8-7bit", "s8s8", "u8u8")
    weight_roundings = ("adaptive", "nearest")  # adaptive needs symmetric int8 weights: not u8u8


@register("onnx-int8-mixed")
class ONNXInt8Mixed(ONNXInt8):
    suffix = "_int8_mixed.onnx"
    precision = "int8-mixed"
    description = ("ONNX QDQ int8 with its most quantization-sensitive layers kept in float32 (chosen on the "
                   "validation split)")
    float_fallback = True
    all_int8 = "onnx-int8"
