"""YAML at the edge, typed frozen objects inside.

``load_config`` is the only way a config enters the pipeline: it applies
``--set section.key=value`` overrides, validates every key and type, and turns
any problem into one :class:`ConfigError` sentence that names the key and the
file.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import types
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

from pydantic import (BaseModel, ConfigDict, Field, StrictFloat, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from core.errors import ConfigError, one_line, printable, show
from core.yaml_files import YAMLProblem, parse_yaml, read_yaml

AUGMENTATIONS = ("horizontal_flip", "brightness", "contrast", "crop")
MOBILENET_V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


class _Section(BaseModel):
    # allow_inf_nan: pydantic takes .inf and .nan as floats by default, and an infinite
    # learning rate passes `gt=0`.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1 for an int or float key, and YAML reads yes/no/on/off as true/false.
        if isinstance(value, bool) and _takes_number(cls.model_fields[info.field_name].annotation):
            raise ValueError("is true/false (YAML also reads yes, no, on and off so), which this key does not take; "
                             "write a number")
        return value


def _takes_number(annotation: Any) -> bool:
    options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return any(option in (int, float) for option in options)


class DataConfig(_Section):
    source: Literal["folder", "digits"] = "folder"
    # Relative paths are resolved against the directory `make` runs in (the repo root).
    path: Optional[str] = None
    image_size: int = Field(default=224, ge=32, le=1024)
    val_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    # numpy and TensorFlow take seeds in [0, 2**32).
    seed: int = Field(default=1234, ge=0, le=2**32 - 1)
    augment: tuple[Literal[AUGMENTATIONS], ...] = ("horizontal_flip", "brightness", "contrast")
    # Keep at most this many images per class (before splitting): quick trials on big folders.
    limit_per_class: Optional[int] = Field(default=None, ge=3)
    # A file that is not a usable image (corrupt, truncated, empty, not an image): "skip" leaves it
    # out and lists it in results.json under data.skipped; "fail" stops the run naming it.
    on_bad_image: Literal["skip", "fail"] = "skip"
    # Images larger than this many pixels are skipped rather than decoded (memory, decompression bombs).
    max_image_pixels: int = Field(default=100_000_000, ge=1)
    # A class with fewer usable images than this stops the run (3: one each for train, val and test).
    min_images_per_class: int = Field(default=3, ge=3)
    # Where training keeps the decoded splits between epochs: "memory", "disk" (build/<name>/cache/,
    # for splits larger than memory), "none", or "auto" (memory when a split fits half the memory
    # available, else disk). Augmentation comes after it, so each epoch is augmented anew.
    cache: Literal["auto", "memory", "disk", "none"] = "auto"

    @model_validator(mode="after")
    def _path_matches_source(self) -> "DataConfig":
        if self.source == "folder" and not self.path:
            raise ValueError("data.path is required when data.source is 'folder'")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("data.val_fraction + data.test_fraction must leave at least 10% for training")
        return self


class ModelConfig(_Section):
    backbone: Literal["mobilenet_v2", "resnet50"] = "mobilenet_v2"
    alpha: float = 1.0
    # "imagenet" (Keras cache or download), "none" (random init) or a path to an .h5 file.
    weights: str = "imagenet"
    dropout: float = Field(default=0.2, ge=0, lt=1)

    @field_validator("alpha")
    @classmethod
    def _known_alpha(cls, v: float) -> float:
        if v not in MOBILENET_V2_ALPHAS:
            raise ValueError(f"must be one of {', '.join(map(str, MOBILENET_V2_ALPHAS))}")
        return v


class TrainConfig(_Section):
    batch_size: int = Field(default=32, ge=1)
    head_epochs: int = Field(default=5, ge=0)
    head_lr: float = Field(default=1e-3, gt=0)
    fine_tune_epochs: int = Field(default=5, ge=0)
    fine_tune_lr: float = Field(default=1e-4, gt=0)
    # An int counts backbone layers from the top; a float in (0, 1] is a fraction of them.
    fine_tune_at: Union[int, float] = 30
    # "cosine" decays each phase's learning rate to zero over its epochs; "constant" keeps it.
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    # Epochs without a better validation accuracy before a phase stops early.
    patience: int = Field(default=3, ge=1)
    # BatchNorm is kept in inference mode so fine-tuning does not wreck the
    # pretrained statistics; with `weights: none` there are none to protect.
    freeze_batchnorm: bool = True
    # None keeps the backbone's own (0.999 for MobileNetV2, tuned for ImageNet-length
    # runs); a short run from scratch needs ~0.9 or the moving statistics never catch up.
    batchnorm_momentum: Optional[float] = Field(default=None, gt=0, lt=1)
    # "auto" is on when TensorFlow sees a GPU and off on a CPU, where float16 and XLA
    # make training slower, not faster (pipeline.precision).
    mixed_precision: Literal["auto", "on", "off"] = "auto"
    jit_compile: Literal["auto", "on", "off"] = "auto"
    # tf.distribute strategy of the training stages (pipeline.distribution): "auto" is
    # multi_worker when TF_CONFIG names several tasks, mirrored with several GPUs, else none.
    distribute: Literal["auto", "none", "mirrored", "multi_worker"] = "auto"
    # train.batch_size is per replica; with N replicas the learning rates are multiplied
    # by N (linear), sqrt(N) (sqrt) or left as they are (none).
    lr_scaling: Literal["linear", "sqrt", "none"] = "linear"

    @field_validator("mixed_precision", "jit_compile", mode="before")
    @classmethod
    def _on_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare on/off as true/false: take them as the words the user wrote.
        if isinstance(value, bool):
            return "on" if value else "off"
        return value

    @field_validator("fine_tune_at")
    @classmethod
    def _layers_or_fraction(cls, v: Union[int, float]) -> Union[int, float]:
        if isinstance(v, bool) or v < 0:
            raise ValueError("train.fine_tune_at must be a layer count >= 0 or a fraction in (0, 1]")
        if isinstance(v, float) and not 0 < v <= 1:
            raise ValueError("train.fine_tune_at as a fraction must be in (0, 1]")
        return v


class PruneConfig(_Section):
    # Fraction of each conv/dense kernel set to zero by magnitude (tfmot PolynomialDecay schedule).
    target_sparsity: float = Field(default=0.5, gt=0, lt=1)
    # Fine-tuning epochs while pruning: sparsity ramps up over the first
    # `ramp_fraction` of the steps, the rest recovers accuracy at the target.
    epochs: int = Field(default=2, ge=1)
    ramp_fraction: float = Field(default=0.6, gt=0, le=1)
    lr: float = Field(default=1e-4, gt=0)
    # Layer names left dense, e.g. [Conv1]: the first convolution sees only 3 input
    # channels, so each of its few weights matters (they still count as prunable).
    exclude: tuple[str, ...] = ()


class QATConfig(_Section):
    # Quantization-aware fine-tuning epochs (fake-quant int8 in the forward pass).
    epochs: int = Field(default=1, ge=1)
    lr: float = Field(default=1e-5, gt=0)


class OptimizeConfig(_Section):
    """Pruning and quantization-aware training; the stage runs only when a format in export.formats needs it."""

    prune: PruneConfig = PruneConfig()
    qat: QATConfig = QATConfig()
    # Knowledge distillation from the fine-tuned model while pruning and in QAT:
    # loss = (1 - w) x cross-entropy + w x KL(fine-tuned || optimized); 0 turns it off.
    distill_weight: float = Field(default=0.5, ge=0, le=1)


class ExportConfig(_Section):
    formats: tuple[str, ...] = ("keras", "tflite-fp32", "onnx-fp32")
    onnx_opset: int = Field(default=17, ge=13, le=21)
    # Threads the runtimes use while validating exported files.
    threads: int = Field(default=1, ge=1)
    # Real training images (seeded choice) that int8 exporters calibrate on.
    calibration_samples: int = Field(default=200, ge=1, le=100_000)
    # Boundary types of full-integer TFLite files (tflite-int8 and formats built on it).
    # int8_input "uint8": the app feeds the camera's RGB bytes 0..255 as they are, like
    # Google's int8 MobileNetV2; where the normalization is one mean/std for all
    # channels in RGB order (MobileNetV2) it becomes the input's quantization
    # (scale 1/std, zero point mean) and no normalization op runs; otherwise it
    # stays in the graph and the input's scale is 1. "int8": the same, fed byte - 128.
    # "float": the float32 raw-pixel contract of every other format.
    int8_input: Literal["float", "int8", "uint8"] = "uint8"
    # int8_output "float": float32 probabilities (dequantized in the file);
    # "uint8"/"int8": quantized probabilities, dequantized with the file's scale and zero point.
    int8_output: Literal["float", "int8", "uint8"] = "float"
    # Max test top-1 drop against the Keras model, in percentage points, per format;
    # formats not listed keep the registry's default budget.
    budgets: dict[str, StrictFloat] = Field(default_factory=dict)  # strict: true is not 1 point
    # fail: a file over budget fails the run; warn: it is published and marked in results.json.
    on_budget_fail: Literal["fail", "warn"] = "fail"
    # Single-image runs for the quick latency figure (median, 1 thread); 0 skips it.
    latency_runs: int = Field(default=30, ge=0)
    # What every .tflite and .onnx file says about itself in its metadata (and manifest.json):
    # a release number (ONNX model_version; TFLite stores it as text), a one-line description
    # (default: backbone, classes and dataset), and optionally who made it and under which licence.
    model_version: int = Field(default=1, ge=0, le=2**63 - 1)  # ONNX stores an int64
    description: Optional[str] = Field(default=None, min_length=1, max_length=2000)
    author: Optional[str] = Field(default=None, min_length=1, max_length=200)
    license: Optional[str] = Field(default=None, min_length=1, max_length=200)

    @field_validator("description", "author", "license")
    @classmethod
    def _one_line_text(cls, v: Optional[str]) -> Optional[str]:
        if v is not None and not v.isprintable():  # line breaks and control characters are not printable
            raise ValueError("must be one line of printable text (no line breaks or control characters)")
        return v

    @field_validator("formats")
    @classmethod
    def _registered(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from exporters import registry  # the table alone: no converter is imported

        names = registry.names()
        for fmt in v:
            if fmt not in names:
                hint = difflib.get_close_matches(fmt, names, n=1)
                did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise ValueError(f"unknown format {fmt!r}{did_you_mean}; valid formats: {', '.join(names)}")
        if len(set(v)) != len(v):
            raise ValueError("export.formats lists a format twice")
        if not v:
            raise ValueError("export.formats must list at least one format")
        return v

    @field_validator("budgets")
    @classmethod
    def _budget_formats(cls, v: dict[str, float]) -> dict[str, float]:
        from exporters import registry

        for fmt, drop in v.items():
            if fmt not in registry.names():
                raise ValueError(f"unknown format {fmt!r} in export.budgets; valid formats: {', '.join(registry.names())}")
            if not 0 <= drop <= 100:
                raise ValueError(f"export.budgets.{fmt} must be between 0 and 100 percentage points, not {drop!r}")
        return v


class BenchmarkConfig(_Section):
    """The bench stage: every published file on each target profile, against the Keras model."""

    # Profile names from targets_file; an empty list turns the bench stage off.
    targets: tuple[str, ...] = ("phone-big", "phone-little", "edge-box")
    targets_file: str = "configs/targets.yaml"
    # Published files benchmarked beside ours on the same profiles (latency, size,
    # memory; their accuracy is not measured: their labels are not ours).
    reference_models: tuple[str, ...] = ()
    # Timing stops when every median's 95% interval is within rel_ci of it (after
    # min_runs), or at max_runs, or after max_seconds per target.
    min_runs: int = Field(default=50, ge=5)
    max_runs: int = Field(default=3000, ge=5)
    max_seconds: float = Field(default=30.0, gt=0)
    rel_ci: float = Field(default=0.01, gt=0, lt=1)
    # Timed calls per worker per round (each round starts with one untimed call).
    burst: int = Field(default=3, ge=1, le=100)
    # Untimed calls per file before the first round (of each block).
    warmup: int = Field(default=10, ge=0)
    # Slices each target's timing is split into, spread over the whole benchmark
    # (targets take turns); 1 times each target in one stretch and may stop early
    # once every median is within rel_ci.
    blocks: int = Field(default=3, ge=1, le=100)
    # Test images for the per-target accuracy; None = the whole test split.
    accuracy_images: Optional[int] = Field(default=None, ge=1)
    # Seconds of GEMM per thread count for the host's measured peak.
    peak_seconds: float = Field(default=0.5, gt=0, le=30)

    @model_validator(mode="after")
    def _runs(self) -> "BenchmarkConfig":
        if self.min_runs > self.max_runs:
            raise ValueError("benchmark.min_runs must not exceed benchmark.max_runs")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError("benchmark.targets lists a target twice")
        return self


class Config(_Section):
    name: str
    build_dir: str = "build"
    data: DataConfig = DataConfig(source="digits")
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    optimize: OptimizeConfig = OptimizeConfig()
    export: ExportConfig = ExportConfig()
    benchmark: BenchmarkConfig = BenchmarkConfig()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        # The name becomes a folder under build_dir and the stem of every file name: one plain
        # path component, so no `..`, `/`, absolute path or hidden folder can take outputs elsewhere.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v):
            raise ValueError("must be 1-100 ASCII letters, digits, '.', '_' or '-', starting with a letter or digit, "
                             "e.g. my_model")
        return v

    @field_validator("build_dir")
    @classmethod
    def _plain_build_dir(cls, v: str) -> str:
        if not v.strip() or not v.isprintable():
            raise ValueError("must be a folder path: not empty, no line breaks or control characters (e.g. build)")
        return v

    @property
    def build_root(self) -> Path:
        return Path(self.build_dir) / self.name

    def section_hash(self, *sections: str, ignore: tuple[str, ...] = ()) -> str:
        """sha256 of the sections' values, leaving out the ``ignore``d "section.key"s."""
        payload = {s: {k: v for k, v in getattr(self, s).model_dump(mode="json").items() if f"{s}.{k}" not in ignore}
                   for s in sections}
        return sha256_json(payload)

    def config_hash(self) -> str:
        return sha256_json(self.model_dump(mode="json"))


def sha256_json(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.head_epochs=3`` -> (["train", "head_epochs"], 3); values are YAML scalars or lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r} is not of the form section.key=value, e.g. --set train.head_epochs=3.")
    try:
        value = parse_yaml(raw) if raw.strip() else None
    except YAMLProblem:
        value = raw  # not YAML (e.g. `a: b` in a description): the validators see it as the string it is
    return key.split("."), value


def _apply_override(raw: dict, keys: list[str], value: Any, source: str) -> None:
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            dotted = printable(".".join(keys[: depth + 1]))
            raise ConfigError(f"--set {printable('.'.join(keys))}: {dotted} in {source} is not a section; set a key "
                              "of a section, e.g. --set train.head_epochs=3.")
        node = child
    node[keys[-1]] = value


def _describe(error: dict, source: str) -> str:
    loc = error["loc"]
    key = ".".join(printable(str(part)) for part in loc) or "(top level)"
    if error["type"] == "extra_forbidden":
        section = _section_for(loc[:-1])
        fields = list(section.model_fields) if section else []
        hint = difflib.get_close_matches(str(loc[-1]), fields, n=1)
        did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"{source}: unknown key '{key}'{did_you_mean}; valid keys here: {', '.join(fields)}."
    if error["type"] == "missing":
        return f"{source}: required key '{key}' is missing; add it to the file or pass --set {key}=VALUE."
    msg = one_line(error["msg"].removeprefix("Value error, "))
    value = error.get("input")
    if error["type"] == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        msg += f" (did you mean '{hint[0]}'?)" if hint else ""
    if error["type"] == "string_type":
        msg += "; write the value in quotes"
    # A section-wide rule (data.path needed for folders) names its keys itself: the whole section is noise.
    got = "" if isinstance(value, dict) else f" (got {show(value)})"
    return f"{source}: {key}: {msg}{got}."


def _section_for(loc: tuple) -> Optional[type[BaseModel]]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    source = printable(str(path))
    raw = read_yaml(path, "Config file", "pass --config with the path to a YAML file")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a YAML mapping of sections (name, data, model, train, optimize, export, benchmark).")
    for text_override in overrides:
        keys, value = parse_override(text_override)
        _apply_override(raw, keys, value, source)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], source)) from None


def check_paths(cfg: Config, source: str, chief: bool = True) -> None:
    """Paths are checked at run time, not at parse time, so `status` works on any machine.

    Only what is cheap is checked here, before any stage runs: that a weights file is a
    readable Keras weights file, not yet whether it fits the backbone (that needs TensorFlow).
    A multi-worker run's other workers (not ``chief``) get the data from the chief and
    write nothing to the build folder; they only build the model, so only the weights count.
    """
    source = printable(source)
    if chief and cfg.data.source == "folder" and not _is(cfg.data.path, Path.is_dir):
        raise ConfigError(
            f"{source}: data.path {show(cfg.data.path)} is not a folder; point it at a folder with one sub-folder "
            "per class."
        )
    if cfg.model.weights not in ("imagenet", "none"):
        if not _is(cfg.model.weights, Path.is_file):
            raise ConfigError(
                f"{source}: model.weights {show(cfg.model.weights)} is not a file; point it at a no-top .h5 weights "
                "file for this backbone, or use 'none' to train from scratch."
            )
        from pipeline import weights  # h5py, not TensorFlow

        weights.read_layers(cfg.model.weights, source)
    if not chief:
        return
    root = cfg.build_root
    nearest = _nearest_existing(root, source)
    if not nearest.is_dir():
        raise ConfigError(f"{source}: build_dir: {show(str(nearest))} is a file, so {show(str(root))} cannot be "
                          "made; set build_dir to a folder, or move that file.")
    if not os.access(nearest, os.W_OK | os.X_OK):
        raise ConfigError(f"{source}: build_dir: {show(str(nearest))} is not writable, so {show(str(root))} cannot "
                          "be made; set build_dir to a folder you can write to.")


def _is(path: str, test) -> bool:
    try:
        return test(Path(path))
    except OSError:  # e.g. a name too long for the file system: not usable either way
        return False


def _nearest_existing(root: Path, source: str) -> Path:
    """``root`` or the closest folder above it that exists: where the build folder will be made."""
    for path in (root, *root.parents):
        try:
            path.stat()
            return path
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise ConfigError(f"{source}: build_dir: {show(str(root))} cannot be used ({exc.strerror}); set "
                              "build_dir to a folder you can write to.") from None
    return Path(".")
