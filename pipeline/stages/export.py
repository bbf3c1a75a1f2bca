"""export stage: every format in ``export.formats`` is exported, validated, then published.

Each file is written to ``export/staging/``, given its metadata (labels, the
preprocessing contract; ``exporters.metadata``), loaded in its real runtime, run
on the real test split and compared with the Keras model and with itself before
the metadata was added. A lossy file gets a verdict from the paired statistics
(``core.stats``): ``within`` or ``over`` its budget, or ``unproven`` when the test
split cannot tell. Post-training int8 files are first repaired on the validation
split where they need it (``pipeline.repair``), and every file's agreement with
Keras is also measured on the validation split and on training images no
calibration used. A file within its budget is moved into the bundle being
assembled (``export/bundle.next/``); one that fails stays in staging for
inspection. When every format passed, the whole bundle with its
``manifest.json`` takes ``artifacts/``'s place in one rename, so a reader of
``artifacts/`` always finds one complete, verified release. When one failed,
nothing is published: ``artifacts/`` keeps the previous bundle, every result is
still written to ``export/results.json``, and the run fails naming each file.

``run`` is the steps in order: the Keras reference on the test split, fresh
folders, calibration images, one ``_export_format`` per format, then
results, labels, manifest and the verdict.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

import numpy as np

from core import layout, stats
from core.errors import BudgetError, DataError, ExportError, disk_full, one_line
from core.host import available_cpus
from core.io import atomic_path, gzip_size, sha256_file, swap_in_folder, write_json
from core.layout import read_labels
from core.sensitivity import figure as sensitivity_figure
from core.splits import load_split
from exporters import convert, delegates, inspect, registry
from exporters import metadata as file_metadata
from exporters.runtimes import KerasSession, load_predictor, median_latency_ms, open_session
from exporters.validate import compare
from pipeline import adopt, manifest, models, repair, timings
from pipeline.config import Config
from pipeline.stages import Stage
from pipeline.trained import load_trained, needed_models, outputs_for

log = logging.getLogger("pipeline")


def _artifacts(cfg: Config) -> tuple[str, ...]:
    """One published file per format (a rejected or unconverted one is not written)."""
    return tuple(layout.artifact(cfg.name, registry.get(fmt).suffix) for fmt in cfg.export.formats)


STAGE = Stage(
    name="export",
    module=__name__,
    deps=(layout.MODEL, layout.split("train"), layout.split("val"), layout.split("test"), layout.LABELS, layout.SCAN),
    outs=(layout.ARTIFACT_LABELS, layout.MANIFEST, layout.EXPORT_RESULTS, layout.REPAIR_RECIPES),
    extra_deps=outputs_for,
    extra_outs=_artifacts,
    params=("export",),
)


RESULTS_SCHEMA_VERSION = 2
SENSITIVITY_IMAGES = 64  # training images the per-layer int8 errors are measured on
TOOLS = ("tensorflow", "tf_keras", "tensorflow-model-optimization", "tf2onnx", "onnx", "onnxruntime", "ai-edge-litert")


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in TOOLS:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def calibration_indices(train_size: int, count: int, seed: int) -> np.ndarray:
    """A seeded choice of real training images: the same build always calibrates on the same ones."""
    return np.sort(np.random.default_rng(seed).permutation(train_size)[:count])


def calibration_images(train: np.ndarray, count: int, seed: int) -> np.ndarray:
    return train[calibration_indices(len(train), count, seed)].astype(np.float32)


def model_info(cfg: Config, class_names: list[str], contract: dict) -> file_metadata.ModelInfo:
    """What the metadata of every file says; a class name no labels file can carry stops the run here."""
    made = (f"{cfg.model.backbone} alpha {cfg.model.alpha:g} at {cfg.data.image_size} px, fine-tuned on "
            if cfg.model.path is None else f"{Path(cfg.model.path).name} at {cfg.data.image_size} px, validated on ")
    description = cfg.export.description or (
        f"Image classifier ({len(class_names)} classes), {made}"
        f"{'scikit-learn digits' if cfg.data.source == 'digits' else Path(cfg.data.path).name}; "
        "input: RGB pixels 0..255, output: class probabilities")
    try:
        return file_metadata.ModelInfo(name=cfg.name, description=description, version=cfg.export.model_version,
                                       labels=tuple(class_names), preprocessing=contract, author=cfg.export.author,
                                       license=cfg.export.license)
    except ValueError as exc:
        raise DataError(f"The class names cannot go into the files' metadata: {exc}; rename that class "
                        "folder.") from None


def inspect_file(path: Path, spec, model) -> dict:
    """Facts read back from the exported bytes (sparsity, integer-only ops)."""
    if spec.runtime == "litert":
        summary = inspect.tflite_summary(path)
        return {"sparsity": summary["sparsity"], "fully_integer": summary["fully_integer"],
                "float_ops": summary["float_ops"], "input": summary["input"]}
    if spec.runtime == "onnxruntime":
        return {"sparsity": inspect.onnx_sparsity(path)}
    return {"sparsity": inspect.keras_sparsity(model)}


@dataclass
class Reference:
    """The Keras model on the test split: what every exported file is compared with."""

    model: object
    images: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray
    top1: float
    majority_class_rate: float
    latency_ms: float | None
    val: repair.Validation | None = None
    # Training images no calibration recipe uses (a seeded choice), with the Keras outputs on them.
    train_images: np.ndarray | None = None
    train_probabilities: np.ndarray | None = None

    @property
    def untrained(self) -> bool:
        # Exported files can agree perfectly with a model that learned nothing: say so.
        return self.top1 <= self.majority_class_rate + 0.02


def reference(cfg: Config, root: Path) -> Reference:
    x_test, y_test = load_split(root / layout.split("test"))
    x_test = x_test.astype(np.float32)
    model = load_trained(root, "finetune")
    session = KerasSession(model)
    probs = session.predict(x_test)
    x_val, y_val = load_split(root / layout.split("val"))
    x_val = x_val.astype(np.float32)
    ref = Reference(model, x_test, y_test, probs, top1=float(np.mean(probs.argmax(1) == y_test)),
                    majority_class_rate=float(np.bincount(y_test).max() / len(y_test)),
                    latency_ms=median_latency_ms(session, x_test[:1], cfg.export.latency_runs)
                    if cfg.export.latency_runs else None,
                    val=repair.Validation(x_val, y_val, session.predict(x_val)) if len(y_val) else None)
    log.info("[export] Keras reference: test top-1 %.4f on %d images", ref.top1, len(y_test))
    if ref.untrained:
        log.warning("[export] the Keras model's test top-1 %.4f is no better than always guessing the largest "
                    "class (%.4f): training did not learn; check the data, model.weights and the train section",
                    ref.top1, ref.majority_class_rate)
    return ref


def _fresh_folders(ctx) -> tuple[Path, Path]:
    """Empty staging and next-bundle folders. ``artifacts/`` is not touched: it keeps the last good bundle
    until the new one is complete (``_publish_bundle``)."""
    staging, bundle = ctx.path(layout.STAGING), ctx.path(layout.NEXT_BUNDLE)
    artifacts = ctx.path(layout.ARTIFACTS)
    aside = artifacts.with_name(artifacts.name + ".previous")
    if aside.is_dir() and not artifacts.exists():  # a run stopped between the two renames of a non-Linux swap
        os.rename(aside, artifacts)
        log.warning("[export] %s restored from %s (the last run stopped while publishing)", artifacts, aside.name)
    for folder in (staging, bundle):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    return staging, bundle


def _publish_bundle(ctx, bundle: Path) -> None:
    """The assembled bundle takes ``artifacts/``'s place in one step; the previous one is removed after."""
    artifacts = ctx.path(layout.ARTIFACTS)
    previous = swap_in_folder(bundle, artifacts)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)


def fidelity_train_indices(train_size: int, cfg: Config) -> np.ndarray:
    """A seeded choice of training images that no calibration recipe the repair may try uses."""
    largest = min(train_size, cfg.export.calibration_samples * max(repair.CALIBRATION_GROWTH))
    unused = np.setdiff1d(np.arange(train_size), calibration_indices(train_size, largest, cfg.data.seed))
    rng = np.random.default_rng(cfg.data.seed + 1)
    return np.sort(rng.permutation(unused)[:cfg.export.fidelity_train_images])


@dataclass
class Publishing:
    """What the per-format steps share, and what they found."""

    cfg: Config
    ctx: object
    ref: Reference
    info: file_metadata.ModelInfo
    export_ctx: convert.ExportContext
    staging: Path
    artifacts: Path  # the bundle being assembled (export/bundle.next), published whole at the end
    entries: list
    rejected: list
    unconverted: list
    train: np.ndarray | None = None  # the training split (calibration images come from it)
    sensitivity: list | None = None  # per-layer int8 errors of the fine-tuned model (computed once)
    warnings: list = None
    chosen: dict = None  # format -> the recipe it was converted with in this run

    def context(self, recipe: "repair.Recipe | None") -> convert.ExportContext:
        """The converters' context for ``recipe`` (None: the config's own calibration)."""
        if recipe is None:
            return self.export_ctx
        chosen = calibration_indices(len(self.train), recipe.calibration_images, self.cfg.data.seed)
        return replace(self.export_ctx, calibration_images=self.train[chosen].astype(np.float32),
                       calibration_method=recipe.calibration_method, float_layers=recipe.float_layers,
                       int8_types=recipe.int8_types, weight_rounding=recipe.weight_rounding)

    def layer_sensitivity(self) -> list:
        """The fine-tuned model's layers, most sensitive to int8 first (TFLite's debugger)."""
        if self.sensitivity is None:
            from exporters.sensitivity import layer_sensitivity

            started = time.time()
            images = self.export_ctx.calibration_images[:SENSITIVITY_IMAGES]
            self.sensitivity = layer_sensitivity(self.ref.model, self.export_ctx, images)
            log.info("[export] per-layer int8 sensitivity of the fine-tuned model on %d training images (%.0f s): "
                     "%s", len(images), time.time() - started,
                     ", ".join(f"{r['layer']} {sensitivity_figure(r)}" for r in self.sensitivity[:5]))
        return self.sensitivity


def run(cfg: Config, ctx) -> None:
    root = ctx.root
    class_names = read_labels(root)
    ref = reference(cfg, root)
    staging, bundle = _fresh_folders(ctx)
    contract = (models.preprocessing_contract(cfg.model, cfg.data.image_size) if cfg.model.path is None
                else adopt.preprocessing_contract(ref.model, cfg.data.image_size))
    x_train, _ = load_split(ctx.path(layout.split("train")))
    chosen = calibration_indices(len(x_train), cfg.export.calibration_samples, cfg.data.seed)
    fidelity_train = fidelity_train_indices(len(x_train), cfg)
    if len(fidelity_train):
        ref.train_images = x_train[fidelity_train].astype(np.float32)
        ref.train_probabilities = KerasSession(ref.model).predict(ref.train_images)
    export_ctx = convert.ExportContext(image_size=cfg.data.image_size, onnx_opset=cfg.export.onnx_opset,
                                       calibration_images=x_train[chosen].astype(np.float32),
                                       int8_input=cfg.export.int8_input, int8_output=cfg.export.int8_output)
    job = Publishing(cfg, ctx, ref, model_info(cfg, class_names, contract), export_ctx, staging, bundle,
                     entries=[], rejected=[], unconverted=[], train=x_train, warnings=[], chosen={})
    # A rebuild does not measure the ranking again.
    job.sensitivity = repair.recorded_sensitivity(ctx.path(layout.REPAIR_RECIPES), sha256_file(ctx.path(layout.MODEL)))
    trained = {"finetune": ref.model}  # pruned / QAT models are rebuilt on first use
    for fmt in cfg.export.formats:
        source = registry.get(fmt).source
        if source not in trained:
            trained[source] = load_trained(root, source)
        _export_format(job, fmt, trained[source])

    labels_out = bundle / Path(layout.ARTIFACT_LABELS).name
    with atomic_path(labels_out) as tmp:
        shutil.copyfile(ctx.path(layout.LABELS), tmp)
    ctx.record_output(ctx.path(layout.ARTIFACT_LABELS))  # where it will be once the bundle is published
    if job.sensitivity is None and any(_post_training(f) for f in cfg.export.formats):
        job.layer_sensitivity()  # the report shows it for every int8 file
    if job.sensitivity is not None:
        repair.record_sensitivity(ctx.path(layout.REPAIR_RECIPES), sha256_file(ctx.path(layout.MODEL)),
                                  job.sensitivity)
    results = _results(cfg, ctx, class_names, contract, job)
    results_path = ctx.path(layout.EXPORT_RESULTS)
    write_json(results_path, results)
    published = [e for e in job.entries if e["status"] != "failed"]
    if published:
        _write_manifest(cfg, ctx, job, results, contract, published, x_train[chosen], chosen, labels_out)
    for warning in job.warnings:
        log.warning("[export] %s", warning)
    # results.json is written, but no stamp: the next run tries the export again, and artifacts/
    # keeps the previous bundle (the new one stays in export/bundle.next for inspection).
    _raise_failures(job)
    _publish_bundle(ctx, bundle)
    ctx.record_output(results_path)
    if ctx.path(layout.REPAIR_RECIPES).exists():
        ctx.record_output(ctx.path(layout.REPAIR_RECIPES))


def _post_training(fmt: str) -> bool:
    """Calibrated from the fine-tuned model (not QAT, whose ranges were learned): what repair can change."""
    spec = registry.get(fmt)
    return spec.needs_calibration and spec.source == "finetune"



class _StepClock:
    """Seconds per step of one format's export (``repair``, ``convert``, ``validate``, ``inspect``, ``latency``)."""

    def __init__(self):
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.laps[step] = round(now - self._last, 2)
        self._last = now


class _NotConverted(Exception):
    """A converter raised: carries its exception (``__cause__``) out of the staging block."""


def validation_threads(cfg: Config) -> int:
    """``export.threads``, or every core this process may use: validation runs alone (never timing)."""
    return cfg.export.threads or available_cpus()


def _convert(job: Publishing, fmt: str, model, staged: Path, export_ctx: convert.ExportContext,
             prebuilt: Path | None = None):
    """Convert into ``staged``, with metadata; return the outputs before the metadata went in (None: no metadata).

    ``prebuilt``: the file the repair search already converted with this recipe (copied, not converted again).
    """
    spec = registry.get(fmt)
    plain = None
    with atomic_path(staged) as tmp:
        try:
            if prebuilt is not None:
                shutil.copyfile(prebuilt, tmp)
            else:
                convert.get(fmt).export(model, tmp, export_ctx)
        except Exception as exc:  # the converter's own error (TFLite, tf2onnx, the ORT quantizer)
            raise _NotConverted(exc) from exc  # out of atomic_path: no file is left
        if spec.kind().metadata is not None:
            # Outputs before the metadata goes in: adding it must not change one bit of them.
            plain = load_predictor(tmp, spec.runtime, validation_threads(job.cfg))(job.ref.images)
            file_metadata.write_metadata(tmp, job.info)
    return plain


def _export_format(job: Publishing, fmt: str, model) -> None:
    """One format: converted, validated against the reference, inspected, then published or rejected."""
    cfg, ref, spec = job.cfg, job.ref, registry.get(fmt)
    filename = Path(layout.artifact(cfg.name, spec.suffix)).name
    staged = job.staging / filename
    clock = _StepClock()
    try:
        recipe, prebuilt, repaired = _choose_recipe(job, fmt, model)
        if recipe is not None:
            job.chosen[fmt] = recipe
        clock.lap("repair")
        plain = _convert(job, fmt, model, staged, job.context(recipe), prebuilt)
        shutil.rmtree(job.staging / "repair", ignore_errors=True)  # the other candidates
    except _NotConverted as failed:
        # A converter can refuse a model the user's config made (an untrained QAT model's
        # degenerate quantization ranges, say): that format fails, the others are still made.
        exc = failed.__cause__
        if disk_full(exc):  # not this format's fault: every later file would fail the same way
            raise exc
        log.debug("[export] %s conversion traceback", fmt, exc_info=exc)
        why = f"conversion failed ({one_line(f'{type(exc).__name__}: {exc}', 240)})"
        log.error("[export] %-14s %s NOT MADE: %s", fmt, filename, why)
        job.entries.append({"name": f"{cfg.name}-{fmt}", "format": fmt, "runtime": spec.runtime,
                            "precision": spec.precision, "source_model": spec.source, "file": None,
                            "status": "failed", "error": why})
        job.unconverted.append(f"{fmt} ({why})")
        return
    clock.lap("convert")
    probs = load_predictor(staged, spec.runtime, validation_threads(cfg))(ref.images)
    check = compare(probs, ref.probabilities, ref.labels, spec, cfg.export.budgets.get(fmt))
    fidelity = {"test": stats.fidelity(ref.probabilities, probs)}
    session = open_session(staged, spec.runtime, validation_threads(cfg))
    if ref.val is not None:
        fidelity["val"] = stats.fidelity(ref.val.reference, session.predict(ref.val.images))
    if ref.train_images is not None:
        # The model was trained on these images: reported apart from the held-out splits.
        fidelity["train_not_calibration"] = stats.fidelity(ref.train_probabilities, session.predict(ref.train_images))
    clock.lap("validate")
    entry = {
        "name": f"{cfg.name}-{fmt}", "format": fmt, "runtime": spec.runtime, "precision": spec.precision,
        "source_model": spec.source, "file": filename, "bytes": staged.stat().st_size,
        "gzip_bytes": gzip_size(staged), "sha256": sha256_file(staged),
        "accuracy": {"top1": check.top1, "delta_pp": round(-check.accuracy_drop_pp, 4) + 0.0},
        "validation": check.as_dict(), "verdict": check.verdict, "fidelity": fidelity,
        "recipe": recipe.as_dict() if recipe is not None else None, "repair": repaired,
        **inspect_file(staged, spec, model),
    }
    failures = check.failures
    if spec.fully_integer and not entry.get("fully_integer", True):
        failures = failures + [f"claims full integer but runs float ops {entry['float_ops']}"]
    if plain is not None:
        identical = plain.dtype == probs.dtype and np.array_equal(plain, probs)
        entry["metadata"] = {"written": True, "outputs_bit_identical": bool(identical), "images": int(len(ref.labels))}
        if not identical:
            failures = failures + ["adding its metadata changed its outputs on the test images"]
    if spec.runtime == "litert":
        entry["delegates"] = delegates.tflite_delegates(staged)
    clock.lap("inspect")
    unproven = check.unproven
    if unproven is not None:
        unproven = f"{fmt}: {unproven}{_advice(job, spec)}"
        if cfg.export.on_unproven == "fail":
            failures = failures + [f"{unproven} (export.on_unproven: fail)"]
        else:
            entry["warning"] = unproven
            job.warnings.append(f"{unproven} (export.on_unproven: warn; published)")
    elif failures and spec.max_accuracy_drop_pp is not None:
        failures = [failures[0] + _advice(job, spec)] + failures[1:]
    entry["status"] = "passed" if not failures else ("warned" if cfg.export.on_budget_fail == "warn" else "failed")
    if cfg.export.latency_runs:
        entry["latency_ms"] = median_latency_ms(open_session(staged, spec.runtime, threads=1), ref.images[:1],
                                                cfg.export.latency_runs)
        entry["latency_ratio_to_keras"] = round(entry["latency_ms"] / ref.latency_ms, 4)
        sibling = next((e for e in job.entries if e["format"] == spec.all_int8 and e.get("latency_ms")), None)
        if sibling is not None:  # what the float layers cost, timed the same way in the same run
            entry["latency_ratio_to_all_int8"] = round(entry["latency_ms"] / sibling["latency_ms"], 4)
        clock.lap("latency")
    entry["seconds"] = clock.laps
    if failures:
        entry["error"] = "; ".join(failures)
    _publish_or_reject(job, entry, staged, check, failures)


def _publish_or_reject(job: Publishing, entry: dict, staged: Path, check, failures: list[str]) -> None:
    fmt, filename = entry["format"], entry["file"]
    if entry["status"] != "failed":
        os.replace(staged, job.artifacts / filename)  # into the bundle being assembled
        job.ctx.record_output(job.ctx.path(layout.ARTIFACTS) / filename)  # where it is once published
        low, high = check.paired["delta_interval_pp"]
        log.info("[export] %-14s %-28s %9.1f KB  top-1 %.4f (%+.2f pp, 95%% %+.2f..%+.2f, McNemar p=%.2g)  "
                 "agreement %.4f  max|dp| %.2e  %s%s",
                 fmt, filename, entry["bytes"] / 1024, check.top1, entry["accuracy"]["delta_pp"], low, high,
                 check.paired["mcnemar_p"], check.top1_agreement, check.max_abs_diff, check.verdict,
                 f"  OVER BUDGET (warn): {entry['error']}" if failures else "")
    else:
        entry["file"] = str(Path(layout.STAGING) / filename)
        job.rejected.append(f"{staged} ({entry['error']})")
        log.error("[export] %-14s %s REJECTED: %s", fmt, filename, entry["error"])
    job.entries.append(entry)


def _choose_recipe(job: Publishing, fmt: str, model):
    """(recipe, prebuilt file or None, repair record or None) for ``fmt``; None recipe: not a post-training format.

    Converter errors leave as ``_NotConverted`` (the format is then not made).
    """
    cfg, spec = job.cfg, registry.get(fmt)
    if not _post_training(fmt):
        return None, None, None
    base = repair.Recipe(cfg.export.calibration_samples, weight_rounding=(spec.weight_roundings or ("nearest",))[0])
    if spec.all_int8 in job.chosen:
        # A mixed file starts from what its all-int8 counterpart chose (calibration, integer
        # types): float layers are the costlier fix, tried on top of the cheaper ones.
        base = job.chosen[spec.all_int8]
    budget = cfg.export.budgets.get(fmt, spec.max_accuracy_drop_pp)
    searching = spec.float_fallback or cfg.export.repair
    key = repair.recipe_key(
        search=4,  # the rules of pipeline.repair.score and better: a new rule searches again
        format=fmt, model=sha256_file(job.ctx.path(layout.MODEL)), base=base.as_dict(), seed=cfg.data.seed,
        budget=budget, min_agreement=cfg.export.repair_min_agreement, searching=searching,
        max_float_layers=cfg.export.repair_max_float_layers, int8=[cfg.export.int8_input, cfg.export.int8_output],
        val=sha256_file(job.ctx.path(layout.split("val"))))
    recipes = job.ctx.path(layout.REPAIR_RECIPES)
    found = repair.recorded(recipes, fmt, key)
    if found is not None:
        recipe = repair.Recipe.from_dict(found["recipe"])
        log.info("[export] %-14s reusing the recipe chosen earlier (%s), no search", fmt, recipe.describe())
        return recipe, None, {**found, "reused": True}
    if not searching or job.ref.val is None:
        return base, None, None
    workdir = job.staging / "repair" / fmt
    workdir.mkdir(parents=True, exist_ok=True)
    runtime, suffix = spec.runtime, spec.kind().extension

    def build(recipe: repair.Recipe):
        path = workdir / f"candidate_{len(list(workdir.iterdir()))}{suffix}"
        convert.get(fmt).export(model, path, job.context(recipe))
        return path, load_predictor(path, runtime, validation_threads(cfg))(job.ref.val.images)

    ranking = None
    try:
        if spec.float_fallback:
            ranking = job.layer_sensitivity()
            ranked = [r["layer"] for r in ranking]
            keepable = convert.get(fmt).keepable_float_layers(model, ranked, job.context(base))
            if len(keepable) < len(ranked):
                log.info("[export] %-14s %d ranked layer(s) have no ops of their own in this format, not tried "
                         "in float: %s", fmt, len(ranked) - len(keepable),
                         ", ".join(name for name in ranked if name not in keepable)[:200])
            candidates = repair.float_candidates(base, keepable, cfg.export.repair_max_float_layers)
            best, attempts = repair.search(candidates, build, job.ref.val, budget, cfg.export.repair_min_agreement)
        else:
            started = time.time()
            path, probs = build(base)
            figures, settled = repair.score(probs, job.ref.val, budget, cfg.export.repair_min_agreement)
            first = repair.Attempt(base, figures, settled, time.time() - started, path)
            log.info("[export] %-14s val agreement %.4f, Δ top-1 %+.2f pp (%s)%s", fmt, figures["agreement"],
                     figures["delta_pp"], figures["verdict"], "" if settled else ": repairing on the validation split")
            candidates = repair.calibration_candidates(base, spec.calibration_methods, len(job.train),
                                                       spec.int8_types, spec.weight_roundings,
                                                       unsupported=convert.get(fmt).unsupported)
            best, attempts = repair.search(candidates, build, job.ref.val, budget, cfg.export.repair_min_agreement,
                                           first)
    except Exception as exc:
        raise _NotConverted(exc) from exc
    record = repair.record(recipes, fmt, key, best.recipe, attempts)
    if len(attempts) > 1:
        log.info("[export] %-14s chose %s on the validation split (agreement %.4f) of %d attempts", fmt,
                 best.recipe.describe(), best.val["agreement"], len(attempts))
    return best.recipe, best.file, {**record, "reused": False}


def _advice(job: Publishing, spec) -> str:
    """What to try for a lossy file that is not within budget, with the measured figures behind it."""
    top = ", ".join(f"{r['layer']} ({sensitivity_figure(r)})" for r in (job.sensitivity or [])[:3])
    layers = f"; most int8-sensitive layers (rmse/scale): {top}" if top else ""
    if spec.source == "pruned-qat":
        return (f". Try more optimize.prune.epochs, a lower optimize.prune.target_sparsity, or keeping the "
                f"sensitive layers dense{layers}")
    if spec.source == "qat":
        return f". Try more optimize.qat.epochs or a lower optimize.qat.lr{layers}"
    if spec.needs_calibration and not spec.float_fallback:
        mixed = next((n for n in registry.names() if registry.get(n).all_int8 == spec.name), None)
        return (f". Where an int8-only accelerator is not the target, add {mixed} to export.formats (it keeps "
                f"the most sensitive layers in float){layers}" if mixed else layers)
    return layers


def _results(cfg: Config, ctx, class_names: list[str], contract: dict, job: Publishing) -> dict:
    ref = job.ref
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "name": cfg.name,
        "config_hash": cfg.config_hash(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"machine": platform.machine(), "system": platform.system(), "cpus": os.cpu_count(),
                 "validation_threads": validation_threads(cfg)},
        "versions": _versions(),
        "dataset": {
            "source": cfg.data.source, "path": cfg.data.path, "classes": class_names,
            "test_images": int(len(ref.labels)),
        },
        # What the data stage left out (file and reason), converted, and found twice (data/scan.json).
        "data": json.loads(ctx.path(layout.SCAN).read_text(encoding="utf-8")),
        "model": _model_facts(cfg),
        "preprocessing": contract,
        "reference": {"format": "keras", "accuracy": {"top1": ref.top1, "majority_class_rate": ref.majority_class_rate},
                      "at_chance": ref.untrained, "latency_ms": ref.latency_ms},
        "artifacts": job.entries,
        "statistics": {"interval": "95%, Newcombe's method 10 for paired proportions (Wilson score)",
                       "test": "exact McNemar on the discordant pairs",
                       "verdict": "within: the interval's largest drop ≤ budget; over: its smallest drop > budget; "
                                  "unproven: neither",
                       "choices_made_on": "validation split (the test split only gives verdicts)"},
        "fidelity_images": {"val": 0 if ref.val is None else int(len(ref.val.labels)),
                            "train_not_calibration": 0 if ref.train_images is None else int(len(ref.train_images))},
    }
    if job.sensitivity is not None:
        results["sensitivity"] = {"model": "finetune", "images": SENSITIVITY_IMAGES, "metric": "rmse/scale",
                                  "layers": job.sensitivity}
    report = ctx.path(layout.OPTIMIZE_REPORT)
    if needed_models(cfg) and report.exists():
        results["optimize"] = json.loads(report.read_text())
    # The stages before this one; the bench stage adds this one's and its own.
    results["timings"] = timings.of_build(ctx.root, job.entries, stages=("data", "finetune", "optimize"))
    return results


def _model_facts(cfg: Config) -> dict:
    """What the model was made from: a fine-tuned backbone, or the model given with model.path (no backbone)."""
    if cfg.model.path is None:
        return {"backbone": cfg.model.backbone, "alpha": cfg.model.alpha, "weights": cfg.model.weights,
                "image_size": cfg.data.image_size}
    return {"backbone": None, "alpha": None, "weights": None, "image_size": cfg.data.image_size,
            "path": cfg.model.path}


def _write_manifest(cfg: Config, ctx, job: Publishing, results: dict, contract: dict, published: list[dict],
                    calibration: np.ndarray, chosen: np.ndarray, labels_out: Path) -> None:
    info = job.info
    split = json.loads(ctx.path(layout.SPLIT_INDEX).read_text(encoding="utf-8"))
    calibration_files = [split["files"]["train"][i] for i in chosen]
    bundle = {
        "schema_version": manifest.MANIFEST_VERSION,
        "model": {"name": info.name, "version": info.version, "description": info.description,
                  "author": info.author, "license": info.license, **_model_facts(cfg)},
        "pipeline": manifest.git_state(Path(__file__).resolve().parent),
        "tools": results["versions"],
        **manifest.config_facts(cfg),
        "dataset": manifest.dataset_fingerprint(
            cfg, split, {name: ctx.path(layout.split(name)) for name in layout.SPLITS}),
        "calibration": manifest.calibration_fingerprint(calibration, calibration_files, cfg.data.seed),
        "labels": list(info.labels),
        "labels_file": {"file": labels_out.name, "sha256": sha256_file(labels_out)},
        "preprocessing": contract,
        "artifacts": [manifest.artifact_entry(job.artifacts / e["file"], e, contract, e.get("delegates"),
                                              len(info.labels)) for e in published],
    }
    manifest.check_schema(bundle)
    write_json(job.artifacts / manifest.MANIFEST, bundle)
    ctx.record_output(ctx.path(layout.MANIFEST))
    log.info("[export] %s: %d files with sha256, metadata, validation and accelerator support",
             ctx.path(layout.MANIFEST), len(published))


KEPT = (f"{layout.ARTIFACTS}/ still holds the previous bundle, if there was one; the new files that passed are "
        f"in {layout.NEXT_BUNDLE}/")


def _raise_failures(job: Publishing) -> None:
    unconverted, rejected = job.unconverted, job.rejected
    if unconverted:
        raise ExportError(
            f"{len(unconverted)} format(s) could not be converted and no file was made: {'; '.join(unconverted)}"
            + (f"; {len(rejected)} exported file(s) also failed validation: {'; '.join(rejected)}" if rejected else "")
            + f"; nothing was published ({KEPT}). Check that the model trained (its test top-1 is in the log), "
              "or drop those formats from export.formats."
        )
    if rejected:
        raise BudgetError(
            f"{len(rejected)} exported file(s) failed validation: {'; '.join(rejected)}; nothing was published "
            f"({KEPT}); raise the budget in export.budgets, or set export.on_budget_fail: warn to publish it marked."
        )
