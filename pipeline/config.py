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

from core.contract import PREPROCESSING_PRESETS, read_class_order
from core.photos import CONTRACT_RESIZER, DEFAULT_RESIZERS, RESIZER_NAMES
from core.errors import ConfigError, one_line, printable, show
from core.yaml_files import YAMLProblem, parse_yaml, read_yaml
from pipeline.backbones import BACKBONES, check_backbone

AUGMENTATIONS = ("horizontal_flip", "brightness", "contrast", "crop", "resize_jitter")
BACKBONE_NAMES = tuple(BACKBONES)


# The configs that ship with the package (configs/ at the repository root links here), so that an
# installed `mobile-export` finds them from any folder: `--config quickstart`.
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULT_TARGETS_FILE = "configs/targets.yaml"


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
    """The photos, how they are split, and how training reads them (the data stage)."""

    source: Literal["folder", "digits"] = Field(
        default="folder",
        description="`folder`: one sub-folder of images per class under `data.path`; `digits`: scikit-learn's real "
                    "8×8 handwritten digits, upscaled (offline, no download)")
    path: Optional[str] = Field(
        default=None,
        description="the image folder, required for `folder`; a relative path is read from the directory `make` "
                    "runs in (the repository root)")
    image_size: int = Field(
        default=224, ge=32, le=1024,
        description="model input side in pixels; each image is centre-cropped to a square and resized bilinearly")
    val_fraction: float = Field(default=0.15, gt=0, lt=0.5,
                                description="share of each class held out for validation (stratified split)")
    test_fraction: float = Field(
        default=0.15, gt=0, lt=0.5,
        description="share of each class held out for the test verdict; `val_fraction + test_fraction` must leave "
                    "at least 10% for training")
    # numpy and TensorFlow take seeds in [0, 2**32).
    seed: int = Field(default=1234, ge=0, le=2**32 - 1,
                      description="seed of the split, the shuffle, the augmentation and the weight initialization")
    augment: tuple[Literal[AUGMENTATIONS], ...] = Field(
        default=("horizontal_flip", "brightness", "contrast"),
        description="augmentations of the training split, drawn anew each epoch; `resize_jitter` shows the model "
                    "each image as another app's resizer would give it (enlarged, then reduced bilinear without "
                    "antialiasing, by area, antialiased, or nearest pixel, or left as it is; see "
                    "`benchmark.resizers`)")
    limit_per_class: Optional[int] = Field(
        default=None, ge=3,
        description="keep at most this many images per class, before splitting (quick trials on big folders); "
                    "null keeps all")
    on_bad_image: Literal["skip", "fail"] = Field(
        default="skip",
        description="a file that is not a usable image (corrupt, truncated, empty, not an image): `skip` leaves it "
                    "out and lists it in results.json under `data.skipped`; `fail` stops the run naming it")
    max_image_pixels: int = Field(
        default=100_000_000, ge=1,
        description="images with more pixels are skipped rather than decoded (memory, decompression bombs)")
    min_images_per_class: int = Field(
        default=3, ge=3,
        description="a class with fewer usable images stops the run (at least 3: one each for train, val and test)")
    cache: Literal["auto", "memory", "disk", "none"] = Field(
        default="auto",
        description="where training keeps the decoded splits between epochs: `memory`; `disk` (under "
                    "`<build_dir>/<name>/cache/`, for splits larger than memory); `none` (read from `data/*.npz` "
                    "every epoch); `auto`: memory when a split takes at most half the memory available, else disk. "
                    "Augmentation comes after it, so each epoch is augmented anew")

    @model_validator(mode="after")
    def _path_matches_source(self) -> "DataConfig":
        if self.source == "folder" and not self.path:
            raise ValueError("data.path is required when data.source is 'folder'")
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("data.val_fraction + data.test_fraction must leave at least 10% for training")
        return self


class Normalization(_Section):
    """``model.preprocessing`` written out: y = (x[..., channel_order] - mean) / std on RGB [0, 255] pixels."""

    mean: Union[float, tuple[float, float, float]]
    std: Union[float, tuple[float, float, float]]
    channel_order: Literal["RGB", "BGR"] = "RGB"

    @field_validator("std")
    @classmethod
    def _positive(cls, v):
        if any(s <= 0 for s in (v if isinstance(v, tuple) else (v,))):
            raise ValueError("must be > 0")
        return v

    def values(self) -> tuple[tuple[float, ...], tuple[float, ...], str]:
        def triple(v):
            return tuple(float(x) for x in v) if isinstance(v, tuple) else (float(v),) * 3

        return triple(self.mean), triple(self.std), self.channel_order


class ModelConfig(_Section):
    """The backbone and its starting weights; a new head (pooling, dropout, dense softmax) goes on top."""

    backbone: Literal[BACKBONE_NAMES] = Field(  # type: ignore[valid-type]
        default="mobilenet_v2",
        description="the ImageNet backbone to fine-tune (keras.applications; docs/backbones.md lists what each takes)")
    alpha: float = Field(default=1.0,
                         description="width multiplier of the MobileNets: " + "; ".join(
                             f"{b.name} {', '.join(f'{a:g}' for a in b.alphas)}"
                             for b in BACKBONES.values() if b.alphas) + "; 1.0 for the others")
    weights: str = Field(
        default="imagenet",
        description="`imagenet` (the Keras cache `~/.keras/models/`, or a download), `none` (random "
                    "initialization), or a path to a no-top `.h5` file saved by tf_keras for this backbone and alpha")
    dropout: float = Field(default=0.2, ge=0, lt=1, description="dropout rate before the classifier")
    # Bring your own model (pipeline.adopt): these three replace backbone, alpha, weights and dropout.
    path: Optional[str] = Field(
        default=None,
        description="an existing Keras classifier (`.keras`, `.h5` or a SavedModel folder) adopted instead of "
                    "fine-tuning a backbone ([docs/bring_your_own.md](bring_your_own.md)); null fine-tunes "
                    "`model.backbone`")
    preprocessing: Optional[Union[Literal[tuple(PREPROCESSING_PRESETS)], Normalization]] = Field(
        default=None,
        description="required with `model.path`: what the model expects of RGB [0, 255] pixels, "
                    "`mobilenet_v2` ((x − 127.5) / 127.5), `caffe` (BGR minus the ImageNet mean), `torch` (x / 255, "
                    "then the ImageNet mean and std), `none` (the pixels as they are; also a model built by this "
                    "pipeline), or `{mean, std, channel_order}` on the 0..255 scale")
    labels: Optional[str] = Field(
        default=None,
        description="with `model.path`: a text file of class names, one a line, in the order of the model's "
                    "outputs; null takes the class folders' names, sorted")

    @field_validator("preprocessing", mode="before")
    @classmethod
    def _preset_or_mapping(cls, value: Any) -> Any:
        # One sentence whatever is wrong: pydantic would report the union's every branch.
        if value is None or isinstance(value, Normalization):
            return value
        if isinstance(value, dict):
            try:
                return Normalization.model_validate(value)
            except ValidationError as exc:
                error = exc.errors()[0]
                key = str(error["loc"][0]) if error["loc"] else "mapping"
                msg = error["msg"].removeprefix("Value error, ")
                if key in ("mean", "std") and len(error["loc"]) > 1:  # pydantic's message is one branch's
                    msg = "must be one number, or a list of three (one per channel)"
                raise ValueError(f"{key}: {msg} (a mapping takes mean, std and channel_order, e.g. {{mean: 127.5, "
                                 "std: 127.5, channel_order: RGB})") from None
        if isinstance(value, str) and value in PREPROCESSING_PRESETS:
            return value
        raise ValueError(f"must be one of {', '.join(PREPROCESSING_PRESETS)}, or a mapping {{mean, std, "
                         "channel_order}")

    @model_validator(mode="after")
    def _own_model_keys(self) -> "ModelConfig":
        if self.path is not None and self.preprocessing is None:
            raise ValueError("model.preprocessing is required with model.path; set it to what the model was trained "
                             f"on ({', '.join(PREPROCESSING_PRESETS)}, or {{mean, std, channel_order}})")
        for key in ("preprocessing", "labels"):
            if self.path is None and getattr(self, key) is not None:
                raise ValueError(f"model.{key} is read only with model.path; set model.path to your model, or "
                                 f"remove model.{key}")
        return self

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...], str]:
        """(mean, std, channel order) of ``preprocessing``, a preset's or the mapping's."""
        if isinstance(self.preprocessing, Normalization):
            return self.preprocessing.values()
        return PREPROCESSING_PRESETS[self.preprocessing]

    @model_validator(mode="after")
    def _buildable(self) -> "ModelConfig":
        problem = check_backbone(self.backbone, self.alpha, None)
        if problem:
            raise ValueError(problem)
        return self


class TrainConfig(_Section):
    """Fine-tuning in two phases: the head on a frozen backbone, then the top of the backbone at a lower rate."""

    batch_size: int = Field(
        default=32, ge=1,
        description="images per step on each replica: with `train.distribute` over N devices a step takes N × this "
                    "many")
    head_epochs: int = Field(default=5, ge=0,
                             description="phase 1: epochs of the new head on the frozen backbone")
    head_lr: float = Field(default=1e-3, gt=0, description="phase 1 learning rate")
    fine_tune_epochs: int = Field(default=5, ge=0,
                                  description="phase 2: epochs with the top backbone layers unfrozen")
    fine_tune_lr: float = Field(default=1e-4, gt=0, description="phase 2 learning rate")
    fine_tune_at: Union[int, float] = Field(
        default=30,
        description="backbone layers unfrozen in phase 2: an int counts layers from the top, a float in (0, 1] is a "
                    "fraction of them")
    lr_schedule: Literal["constant", "cosine"] = Field(
        default="cosine",
        description="`cosine` decays each phase's learning rate to zero over its epochs; `constant` keeps it")
    label_smoothing: float = Field(default=0.0, ge=0, lt=1,
                                   description="label smoothing of the cross-entropy loss")
    patience: int = Field(
        default=3, ge=1,
        description="epochs without a better validation accuracy before a phase stops early; the best weights over "
                    "both phases are kept")
    freeze_batchnorm: bool = Field(
        default=True,
        description="keep BatchNorm in inference mode while fine-tuning, so the pretrained statistics survive; with "
                    "`model.weights: none` there are none to protect")
    batchnorm_momentum: Optional[float] = Field(
        default=None, gt=0, lt=1,
        description="BatchNorm moving-average momentum while it trains; null keeps the backbone's own (0.999 for "
                    "MobileNetV2, tuned for ImageNet-length runs); a short run from scratch needs about 0.9")
    # pipeline.precision decides "auto".
    mixed_precision: Literal["auto", "on", "off", "bfloat16"] = Field(
        default="auto",
        description="fine-tune in `mixed_float16` (`on`: float16 compute, float32 weights, loss scaling; the last "
                    "Dense layer and its softmax stay float32): `auto` is on when TensorFlow sees a GPU, off on a CPU, "
                    "where it is slower. `bfloat16`: `mixed_bfloat16` (no loss scaling), for CPUs with bfloat16 "
                    "kernels; measure it with `make bench-train` first. The saved model and every exported file are "
                    "float32 either way; pruning and QAT always train in float32")
    jit_compile: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="XLA-compile the fine-tuning steps: `auto` is on with a GPU, off on a CPU (compiling costs more "
                    "there than it saves)")
    # pipeline.distribution builds the strategy.
    distribute: Literal["auto", "none", "mirrored", "multi_worker"] = Field(
        default="auto",
        description="tf.distribute strategy of fine-tuning, pruning and QAT: `none` (one device), `mirrored` (this "
                    "machine's GPUs), `multi_worker` (the machines in `TF_CONFIG`); `auto` is `multi_worker` when "
                    "`TF_CONFIG` names several tasks, else `mirrored` with two or more GPUs, else `none`")
    lr_scaling: Literal["linear", "sqrt", "none"] = Field(
        default="linear",
        description="learning rates (`train.*_lr`, `optimize.*.lr`) with N replicas: × N (`linear`), × √N (`sqrt`) "
                    "or as written (`none`)")

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
    """Magnitude pruning while training (tfmot), for `tflite-pruned-int8`."""

    target_sparsity: float = Field(
        default=0.5, gt=0, lt=1,
        description="fraction of each conv and dense kernel set to zero by magnitude (tfmot PolynomialDecay "
                    "schedule; depthwise kernels stay dense, as in tfmot)")
    epochs: int = Field(default=2, ge=1, description="fine-tuning epochs while pruning")
    ramp_fraction: float = Field(
        default=0.6, gt=0, le=1,
        description="sparsity ramps up from 0 over this fraction of the pruning steps; the rest recovers accuracy "
                    "at the target")
    lr: float = Field(default=1e-4, gt=0, description="learning rate while pruning")
    exclude: tuple[str, ...] = Field(
        default=(),
        description="layer names left dense, e.g. `[Conv1]`: the first convolution sees only 3 input channels, so "
                    "each of its few weights matters (they still count in the sparsity figures)")


class QATConfig(_Section):
    """Quantization-aware fine-tuning (fake-quant int8 in the forward pass).

    For `tflite-qat-int8` and, sparsity-preserving, `tflite-pruned-int8`.
    """

    epochs: int = Field(default=1, ge=1, description="quantization-aware fine-tuning epochs")
    lr: float = Field(default=1e-5, gt=0, description="learning rate of quantization-aware fine-tuning")


class OptimizeConfig(_Section):
    """Pruning and quantization-aware training; the stage runs only when a format in export.formats needs it."""

    prune: PruneConfig = Field(default=PruneConfig(), description="magnitude pruning")
    qat: QATConfig = Field(default=QATConfig(), description="quantization-aware training")
    distill_weight: float = Field(
        default=0.5, ge=0, le=1,
        description="knowledge distillation from the fine-tuned model while pruning and in QAT: loss = (1 − w) × "
                    "cross-entropy + w × KL(fine-tuned ‖ optimized); 0 turns it off")


class ExportConfig(_Section):
    """Which files are exported, what they are validated against, and what their metadata says."""

    formats: tuple[str, ...] = Field(
        default=("keras", "tflite-fp32", "onnx-fp32"),
        description="registry names of the files to export (the format table in README.md; "
                    "`python -m pipeline --help` lists them)")
    onnx_opset: int = Field(default=17, ge=13, le=21, description="ONNX opset for tf2onnx")
    threads: Optional[int] = Field(
        default=None, ge=1,
        description="threads the runtimes use while validating and repairing exported files; null: every core this "
                    "process may use (nothing else runs then; flowers on 2 cores: validation 41 s instead of 58 s at "
                    "1 thread, the same bytes and figures). The export stage's quick latency figure is always 1 thread")
    calibration_samples: int = Field(
        default=200, ge=1, le=100_000,
        description="real training images (a seeded choice) that the int8 exporters calibrate on")
    int8_input: Literal["float", "int8", "uint8"] = Field(
        default="uint8",
        description="input type of the full-integer TFLite files (`tflite-int8` and the formats built on it). "
                    "`uint8`: the app feeds the camera's RGB bytes 0..255 as they are, like Google's int8 "
                    "MobileNetV2; where the normalization is one mean/std for all channels in RGB order "
                    "(MobileNetV2) it becomes the input's quantization (scale 1/std, zero point mean) and no "
                    "normalization op runs, otherwise (ResNet50) it stays in the graph and the input's scale is 1. "
                    "`int8`: the same, fed byte − 128. `float`: the float32 raw-pixel contract of every other format")
    int8_output: Literal["float", "int8", "uint8"] = Field(
        default="float",
        description="output type of the full-integer TFLite files: `float` probabilities (dequantized in the file), "
                    "or `uint8`/`int8` quantized probabilities, dequantized with the file's scale and zero point")
    budgets: dict[str, StrictFloat] = Field(  # strict: true is not 1 point
        default_factory=dict,
        description="max test top-1 drop against the Keras model, in percentage points, per format, e.g. "
                    "`{tflite-int8: 0.5}`; formats not listed keep the registry's budget")
    on_budget_fail: Literal["fail", "warn"] = Field(
        default="fail",
        description="`fail`: a file over budget fails the run (exit 1) and nothing is published: `artifacts/` "
                    "keeps the previous bundle whole, and the new files that passed wait in `export/bundle.next/`; "
                    "`warn`: the file is published with the others, marked `warned` in results.json, the manifest "
                    "and `verify`")
    on_unproven: Literal["warn", "fail"] = Field(
        default="warn",
        description="a lossy file whose 95% interval of the top-1 change straddles its budget (the test split "
                    "cannot tell whether it meets it): `warn` publishes it and says how many test images would "
                    "settle it; `fail` treats it as over budget")
    repair: bool = Field(
        default=True,
        description="when a post-training int8 file is over its budget on the validation split, or agrees with "
                    "Keras there less than `repair_min_agreement`, try the quantizer's other calibration methods and "
                    "integer types and more calibration images, and keep the best variant on the validation split "
                    "(the test split only gives the verdict). The mixed formats (`*-int8-mixed`) always choose "
                    "their float layers this way")
    repair_min_agreement: float = Field(
        default=0.975, ge=0.0, le=1.0,
        description="top-1 agreement with Keras on the validation split that a repaired file must reach (and not "
                    "be over budget there) for the repair search to stop")
    repair_max_float_layers: int = Field(
        default=8, ge=1, le=64,
        description="most layers a mixed format (`tflite-int8-mixed`, `onnx-int8-mixed`) may keep in float32")
    fidelity_train_images: int = Field(
        default=1000, ge=0,
        description="training images (a seeded choice among those no calibration used) on which agreement and KL "
                    "with Keras are also reported, apart from the held-out splits; 0 skips them")
    latency_runs: int = Field(
        default=30, ge=0,
        description="single-image runs for the export stage's quick latency figure (median, 1 thread); 0 skips it")
    model_version: int = Field(  # ONNX stores an int64
        default=1, ge=0, le=2**63 - 1,
        description="release number written into every file's metadata (ONNX `model_version`; TFLite stores it as "
                    "text) and manifest.json")
    description: Optional[str] = Field(
        default=None, min_length=1, max_length=2000,
        description="one-line description in every file's metadata; null writes the backbone, classes and dataset")
    author: Optional[str] = Field(default=None, min_length=1, max_length=200,
                                  description="author in the metadata (optional, one line)")
    license: Optional[str] = Field(default=None, min_length=1, max_length=200,
                                   description="licence in the metadata (optional, one line)")

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

    targets: tuple[str, ...] = Field(
        default=("phone-big", "phone-little", "edge-box"),
        description="target profiles from `benchmark.targets_file` to benchmark on; `[]` turns the bench stage off")
    targets_file: str = Field(
        default=DEFAULT_TARGETS_FILE,
        description="the target profiles: runtime, threads, allowed formats, budgets and the gate's regression limits")
    reference_models: tuple[str, ...] = Field(
        default=(),
        description="published `.tflite`/`.onnx` files (globs allowed) benchmarked beside ours on the same profiles, "
                    "e.g. `[../shared/reference/*.tflite]`: latency, size and memory; not accuracy (their labels "
                    "are not ours)")
    min_runs: int = Field(
        default=50, ge=5,
        description="with `blocks: 1`, timing may stop once every file has this many runs and every median's 95% "
                    "interval is within `rel_ci` of it")
    max_runs: int = Field(default=3000, ge=5,
                          description="timed runs per file and target at most (shared out over the blocks)")
    max_seconds: float = Field(default=30.0, gt=0,
                               description="seconds of timing per target at most (shared out over the blocks)")
    rel_ci: float = Field(
        default=0.01, gt=0, lt=1,
        description="with `blocks: 1`, the relative half-width of each median's 95% interval at which timing stops")
    burst: int = Field(
        default=20, ge=1, le=1000,
        description="timed calls per file per round, after `burst_warmup` untimed ones")
    burst_warmup: int = Field(
        default=5, ge=1, le=100,
        description="untimed calls at the start of each round of a file: they wake its thread pool and refill "
                    "the caches the previous file used (with 1 call and bursts of 3, a 2-thread file's p90 measured "
                    "1.2× and its p99 1.8× the same file timed alone; with 5 and 20, within 3%)")
    burst_warm_seconds: float = Field(
        default=0.05, ge=0, le=5,
        description="untimed calls continue until this many seconds have passed at the start of each round of a "
                    "file (after `burst_warmup` calls): on a 2-core VM a multi-threaded file ran its first tens of ms "
                    "after a pause slower or faster than when busy for longer (quickstart, 2 threads, after 0.1 s "
                    "idle: LiteRT 0.086 ms, ONNX 0.150 ms; after 50 ms of calls 0.074 and 0.193 ms, as alone); 0 "
                    "times right after `burst_warmup`")
    self_check_seconds: float = Field(
        default=3.0, ge=0, le=60,
        description="after the timing, each target's fastest file is timed again alone in a fresh process for "
                    "this long and compared with its interleaved figures (`benchmark.self_check` in results.json, "
                    "the report's self-check); 0 skips it")
    warmup: int = Field(default=10, ge=0,
                        description="untimed calls per file before the first round of each block")
    blocks: int = Field(
        default=3, ge=1, le=100,
        description="slices each target's timing is split into, spread over the whole benchmark (the targets take "
                    "turns); from 3, each median's noise also covers the spread of its slices' medians, for a "
                    "runtime whose speed wanders for seconds; 1 times each target in one stretch and may stop early "
                    "once every median is within `rel_ci`")
    accuracy_images: Optional[int] = Field(
        default=None, ge=1, description="test images for the per-target accuracy; null uses the whole test split")
    peak_seconds: float = Field(
        default=0.5, gt=0, le=30,
        description="seconds of GEMM (fp32 and int8) per thread count for the host's measured peak")
    resizers: tuple[Literal[RESIZER_NAMES], ...] = Field(  # type: ignore[valid-type]
        default=DEFAULT_RESIZERS,
        description="after the timing, every published file and the Keras model run on the original test photos "
                    "resized each of these ways, as apps resize (Pillow, OpenCV, TensorFlow; a `-squash` name "
                    "resizes the whole frame instead of the centred square): test top-1 and top-1 agreement with the "
                    f"Keras model on the contract's resize (`{CONTRACT_RESIZER}`), in results.json "
                    "`benchmark.resizers` and the report's resizer table; builds of `data.source: digits` have no "
                    "photo files and record why; `[]` skips it")

    @model_validator(mode="after")
    def _runs(self) -> "BenchmarkConfig":
        if self.min_runs > self.max_runs:
            raise ValueError("benchmark.min_runs must not exceed benchmark.max_runs")
        if len(set(self.targets)) != len(self.targets):
            raise ValueError("benchmark.targets lists a target twice")
        if len(set(self.resizers)) != len(self.resizers):
            raise ValueError("benchmark.resizers lists a resizer twice")
        return self


class Config(_Section):
    """The whole file: a name, where builds go, and one section per stage."""

    name: str = Field(
        description="build folder name: outputs go to `<build_dir>/<name>/` and every file name starts with it; "
                    "1–100 ASCII letters, digits, `.`, `_` or `-`, starting with a letter or digit")
    build_dir: str = Field(default="build",
                           description="where builds go; a folder path without line breaks or control characters")
    data: DataConfig = Field(default=DataConfig(source="digits"), description="the data stage")
    model: ModelConfig = Field(default=ModelConfig(), description="the model")
    train: TrainConfig = Field(default=TrainConfig(), description="fine-tuning")
    optimize: OptimizeConfig = Field(default=OptimizeConfig(), description="pruning and QAT")
    export: ExportConfig = Field(default=ExportConfig(), description="the export stage")
    benchmark: BenchmarkConfig = Field(default=BenchmarkConfig(), description="the bench stage")

    @model_validator(mode="after")
    def _backbone_takes_the_input(self) -> "Config":
        problem = None if self.model.path else check_backbone(self.model.backbone, self.model.alpha,
                                                              self.data.image_size)
        if problem:
            raise ValueError(problem)
        return self

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
    msg = one_line(error["msg"].removeprefix("Value error, "), 600)  # room for every valid format
    value = error.get("input")
    if error["type"] == "literal_error":
        allowed = re.findall(r"'([^']*)'", str(error.get("ctx", {}).get("expected", "")))
        hint = difflib.get_close_matches(str(value), allowed, n=1)
        msg += f" (did you mean '{hint[0]}'?)" if hint else ""
    if error["type"] == "string_type":
        msg += "; write the value in quotes"
    # A section-wide rule (data.path needed for folders) names its keys itself: the whole section is noise.
    got = "" if isinstance(value, dict) else f" (got {show(value)})"
    if not loc:  # a rule across sections names its keys itself
        return f"{source}: {msg}{got}."
    return f"{source}: {key}: {msg}{got}."


def _section_for(loc: tuple) -> Optional[type[BaseModel]]:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return None
        model = field.annotation
    return model


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml") if p.stem != "targets")


def resolve_config(path: str | Path) -> Path:
    """``path`` as given when it exists; a bare name (``quickstart``) is a shipped config."""
    given = Path(path)
    if given.exists() or given.parent != Path("."):
        return given
    shipped = SHIPPED_CONFIGS / (given.name if given.suffix in (".yaml", ".yml") else f"{given.name}.yaml")
    return shipped if shipped.is_file() and shipped.stem != "targets" else given


def targets_file(cfg: "Config") -> Path:
    """``benchmark.targets_file``; its default, when not in the current folder, is the shipped one."""
    given = Path(cfg.benchmark.targets_file)
    if not given.exists() and cfg.benchmark.targets_file == DEFAULT_TARGETS_FILE:
        return SHIPPED_CONFIGS / given.name
    return given


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    path = resolve_config(path)
    source = printable(str(path))
    raw = read_yaml(path, "Config file", "pass --config with the path to a YAML file, or the name of a shipped "
                    f"one ({', '.join(shipped_configs())})")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a YAML mapping of sections (name, data, model, train, optimize, export, benchmark).")
    given: dict[tuple[str, ...], str] = {}
    for text_override in overrides:
        keys, value = parse_override(text_override)
        _apply_override(raw, keys, value, source)
        given[tuple(keys)] = text_override
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(str(part) for part in error["loc"])
        # A key that came from --set is blamed on --set, not on a file that does not contain it.
        blamed = next((f"--set {printable(text)}" for keys, text in given.items()
                       if loc[:len(keys)] == keys or (loc and keys[:len(loc)] == loc)), source)
        raise ConfigError(_describe(error, blamed)) from None


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
    if cfg.model.path is not None:
        _check_own_model(cfg, source)
    elif cfg.model.weights not in ("imagenet", "none"):
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


def _check_own_model(cfg: Config, source: str) -> None:
    """model.path and model.labels exist; what the model holds is checked before it is loaded (pipeline.adopt)."""
    path = cfg.model.path
    if not (_is(path, Path.is_file) or _is(path, Path.is_dir)):
        raise ConfigError(f"{source}: model.path {show(path)} does not exist; point it at a .keras or .h5 file, or a "
                          "SavedModel folder, saved by tf_keras.")
    if cfg.model.labels is not None:
        if not _is(cfg.model.labels, Path.is_file):
            raise ConfigError(f"{source}: model.labels {show(cfg.model.labels)} is not a file; point it at a text "
                              "file of class names, one a line, or remove the key to use the class folders' names.")
        read_class_order(cfg.model.labels)


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
