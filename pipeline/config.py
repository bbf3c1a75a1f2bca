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
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import ConfigError

AUGMENTATIONS = ("horizontal_flip", "brightness", "contrast", "crop")
MOBILENET_V2_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    source: Literal["folder", "digits"] = "folder"
    # Relative paths are resolved against the directory `make` runs in (the repo root).
    path: Optional[str] = None
    image_size: int = Field(default=224, ge=32, le=1024)
    val_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    test_fraction: float = Field(default=0.15, gt=0, lt=0.5)
    seed: int = 1234
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
    budgets: dict[str, float] = Field(default_factory=dict)
    # fail: a file over budget fails the run; warn: it is published and marked in results.json.
    on_budget_fail: Literal["fail", "warn"] = "fail"
    # Single-image runs for the quick latency figure (median, 1 thread); 0 skips it.
    latency_runs: int = Field(default=30, ge=0)
    # What every .tflite and .onnx file says about itself in its metadata (and manifest.json):
    # a release number (ONNX model_version; TFLite stores it as text), a one-line description
    # (default: backbone, classes and dataset), and optionally who made it and under which licence.
    model_version: int = Field(default=1, ge=0)
    description: Optional[str] = Field(default=None, min_length=1, max_length=2000)
    author: Optional[str] = Field(default=None, min_length=1, max_length=200)
    license: Optional[str] = Field(default=None, min_length=1, max_length=200)

    @field_validator("formats")
    @classmethod
    def _registered(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from exporters import registry  # cheap: heavy imports happen inside exporters

        names = registry.names()
        for fmt in v:
            if fmt not in names:
                hint = difflib.get_close_matches(fmt, names, n=1)
                did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise ValueError(f"unknown format '{fmt}'{did_you_mean}; valid formats: {', '.join(names)}")
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
                raise ValueError(f"unknown format '{fmt}' in export.budgets; valid formats: {', '.join(registry.names())}")
            if not 0 <= drop <= 100:
                raise ValueError(f"export.budgets.{fmt} must be between 0 and 100 percentage points")
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
        # The name becomes a folder under build_dir: keep it from escaping it.
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v):
            raise ValueError("name must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return v

    @property
    def build_root(self) -> Path:
        return Path(self.build_dir) / self.name

    def section_hash(self, *sections: str) -> str:
        payload = {s: getattr(self, s).model_dump(mode="json") for s in sections}
        return _sha256_json(payload)

    def config_hash(self) -> str:
        return _sha256_json(self.model_dump(mode="json"))


def _sha256_json(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.head_epochs=3`` -> (["train", "head_epochs"], 3); values are YAML scalars or lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r} is not of the form section.key=value, e.g. --set train.head_epochs=3.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _apply_override(raw: dict, keys: list[str], value: Any, source: str) -> None:
    node = raw
    for depth, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            dotted = ".".join(keys[: depth + 1])
            raise ConfigError(f"--set {'.'.join(keys)}: {dotted} in {source} is not a section.")
        node = child
    node[keys[-1]] = value


def _describe(error: dict, source: str) -> str:
    key = ".".join(str(p) for p in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        section_model = _section_for(error["loc"][:-1])
        valid = ", ".join(section_model.model_fields) if section_model else ""
        hint = difflib.get_close_matches(str(error["loc"][-1]), list(section_model.model_fields) if section_model else [], n=1)
        did_you_mean = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"{source}: unknown key '{key}'{did_you_mean}; valid keys here: {valid}."
    if error["type"] == "missing":
        return f"{source}: required key '{key}' is missing."
    msg = error["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return f"{source}: {key}: {msg} (got {error.get('input')!r})."


def _section_for(loc: tuple) -> Optional[type[BaseModel]]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Config file {source} does not exist; pass --config with the path to a YAML file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"Config file {source} cannot be read ({exc.__class__.__name__}); pass a UTF-8 YAML file.") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ConfigError(f"{source} is not valid YAML{line}; fix the syntax and run again.") from None
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


def check_paths(cfg: Config, source: str) -> None:
    """Paths are checked at run time, not at parse time, so `status` works on any machine."""
    if cfg.data.source == "folder" and not Path(cfg.data.path).is_dir():
        raise ConfigError(
            f"{source}: data.path '{cfg.data.path}' is not a folder; point it at a folder with one sub-folder per class."
        )
    if cfg.model.weights not in ("imagenet", "none") and not Path(cfg.model.weights).is_file():
        raise ConfigError(
            f"{source}: model.weights '{cfg.model.weights}' is not a file; point it at a no-top .h5 weights file "
            "for this backbone, or use 'none' to train from scratch."
        )
