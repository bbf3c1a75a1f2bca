"""export stage: every format in ``export.formats`` is exported, validated, then published.

Each file is written to ``export/staging/``, given its metadata (labels, the
preprocessing contract; ``exporters.metadata``), loaded in its real runtime, run
on the real test split and compared with the Keras model and with itself before
the metadata was added. Only a file within its budget is moved into
``artifacts/``; one that fails stays in staging for inspection, every result is
still written to ``export/results.json``, and the run then fails naming each
rejected file. ``artifacts/manifest.json`` describes what was published.

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
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from core import layout
from core.errors import BudgetError, DataError, ExportError, one_line
from core.io import atomic_path, gzip_size, sha256_file, write_json
from core.layout import read_labels
from core.splits import load_split
from exporters import convert, delegates, inspect, registry
from exporters import metadata as file_metadata
from exporters.runtimes import KerasSession, load_predictor, median_latency_ms, open_session
from exporters.validate import compare
from pipeline import manifest, models
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
    deps=(layout.MODEL, layout.split("train"), layout.split("test"), layout.LABELS, layout.SCAN),
    outs=(layout.ARTIFACT_LABELS, layout.MANIFEST, layout.EXPORT_RESULTS),
    extra_deps=outputs_for,
    extra_outs=_artifacts,
    params=("export",),
)


RESULTS_SCHEMA_VERSION = 1
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
    description = cfg.export.description or (
        f"Image classifier ({len(class_names)} classes), {cfg.model.backbone} alpha {cfg.model.alpha:g} at "
        f"{cfg.data.image_size} px, fine-tuned on "
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
    ref = Reference(model, x_test, y_test, probs, top1=float(np.mean(probs.argmax(1) == y_test)),
                    majority_class_rate=float(np.bincount(y_test).max() / len(y_test)),
                    latency_ms=median_latency_ms(session, x_test[:1], cfg.export.latency_runs)
                    if cfg.export.latency_runs else None)
    log.info("[export] Keras reference: test top-1 %.4f on %d images", ref.top1, len(y_test))
    if ref.untrained:
        log.warning("[export] the Keras model's test top-1 %.4f is no better than always guessing the largest "
                    "class (%.4f): training did not learn; check the data, model.weights and the train section",
                    ref.top1, ref.majority_class_rate)
    return ref


def _fresh_folders(ctx) -> tuple[Path, Path]:
    """Empty staging and artifacts folders: nothing stale is published beside new files."""
    staging, artifacts = ctx.path(layout.STAGING), ctx.path(layout.ARTIFACTS)
    for folder in (staging, artifacts):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    return staging, artifacts


@dataclass
class Publishing:
    """What the per-format steps share, and what they found."""

    cfg: Config
    ctx: object
    ref: Reference
    info: file_metadata.ModelInfo
    export_ctx: convert.ExportContext
    staging: Path
    artifacts: Path
    entries: list
    rejected: list
    unconverted: list


def run(cfg: Config, ctx) -> None:
    root = ctx.root
    class_names = read_labels(root)
    ref = reference(cfg, root)
    staging, artifacts = _fresh_folders(ctx)
    contract = models.preprocessing_contract(cfg.model, cfg.data.image_size)
    x_train, _ = load_split(ctx.path(layout.split("train")))
    chosen = calibration_indices(len(x_train), cfg.export.calibration_samples, cfg.data.seed)
    export_ctx = convert.ExportContext(image_size=cfg.data.image_size, onnx_opset=cfg.export.onnx_opset,
                                       calibration_images=x_train[chosen].astype(np.float32),
                                       int8_input=cfg.export.int8_input, int8_output=cfg.export.int8_output)
    job = Publishing(cfg, ctx, ref, model_info(cfg, class_names, contract), export_ctx, staging, artifacts,
                     entries=[], rejected=[], unconverted=[])
    trained = {"finetune": ref.model}  # pruned / QAT models are rebuilt on first use
    for fmt in cfg.export.formats:
        source = registry.get(fmt).source
        if source not in trained:
            trained[source] = load_trained(root, source)
        _export_format(job, fmt, trained[source])

    labels_out = ctx.path(layout.ARTIFACT_LABELS)
    with atomic_path(labels_out) as tmp:
        shutil.copyfile(ctx.path(layout.LABELS), tmp)
    ctx.record_output(labels_out)
    results = _results(cfg, ctx, class_names, contract, job)
    results_path = ctx.path(layout.EXPORT_RESULTS)
    write_json(results_path, results)
    published = [e for e in job.entries if e["status"] != "failed"]
    if published:
        _write_manifest(cfg, ctx, job, results, contract, published, x_train[chosen], chosen, labels_out)
    # results.json is written, but no stamp: the next run tries the export again.
    _raise_failures(job)
    ctx.record_output(results_path)


class _NotConverted(Exception):
    """A converter raised: carries its exception (``__cause__``) out of the staging block."""


def _convert(job: Publishing, fmt: str, model, staged: Path):
    """Convert into ``staged``, with metadata; return the outputs before the metadata went in (None: no metadata)."""
    spec = registry.get(fmt)
    plain = None
    with atomic_path(staged) as tmp:
        try:
            convert.get(fmt).export(model, tmp, job.export_ctx)
        except Exception as exc:  # the converter's own error (TFLite, tf2onnx, the ORT quantizer)
            raise _NotConverted(exc) from exc  # out of atomic_path: no file is left
        if spec.kind().metadata is not None:
            # Outputs before the metadata goes in: adding it must not change one bit of them.
            plain = load_predictor(tmp, spec.runtime, job.cfg.export.threads)(job.ref.images)
            file_metadata.write_metadata(tmp, job.info)
    return plain


def _export_format(job: Publishing, fmt: str, model) -> None:
    """One format: converted, validated against the reference, inspected, then published or rejected."""
    cfg, ref, spec = job.cfg, job.ref, registry.get(fmt)
    filename = Path(layout.artifact(cfg.name, spec.suffix)).name
    staged = job.staging / filename
    started = time.time()
    try:
        plain = _convert(job, fmt, model, staged)
    except _NotConverted as failed:
        # A converter can refuse a model the user's config made (an untrained QAT model's
        # degenerate quantization ranges, say): that format fails, the others are still made.
        exc = failed.__cause__
        log.debug("[export] %s conversion traceback", fmt, exc_info=exc)
        why = f"conversion failed ({one_line(f'{type(exc).__name__}: {exc}', 240)})"
        log.error("[export] %-14s %s NOT MADE: %s", fmt, filename, why)
        job.entries.append({"name": f"{cfg.name}-{fmt}", "format": fmt, "runtime": spec.runtime,
                            "precision": spec.precision, "source_model": spec.source, "file": None,
                            "status": "failed", "error": why})
        job.unconverted.append(f"{fmt} ({why})")
        return
    export_s = time.time() - started
    probs = load_predictor(staged, spec.runtime, cfg.export.threads)(ref.images)
    check = compare(probs, ref.probabilities, ref.labels, spec, cfg.export.budgets.get(fmt))
    entry = {
        "name": f"{cfg.name}-{fmt}", "format": fmt, "runtime": spec.runtime, "precision": spec.precision,
        "source_model": spec.source, "file": filename, "bytes": staged.stat().st_size,
        "gzip_bytes": gzip_size(staged), "sha256": sha256_file(staged),
        "accuracy": {"top1": check.top1, "delta_pp": round(-check.accuracy_drop_pp, 4) + 0.0},
        "validation": check.as_dict(), "export_seconds": round(export_s, 2),
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
    entry["status"] = "passed" if not failures else ("warned" if cfg.export.on_budget_fail == "warn" else "failed")
    if cfg.export.latency_runs:
        entry["latency_ms"] = median_latency_ms(open_session(staged, spec.runtime, threads=1), ref.images[:1],
                                                cfg.export.latency_runs)
        entry["latency_ratio_to_keras"] = round(entry["latency_ms"] / ref.latency_ms, 4)
    if failures:
        entry["error"] = "; ".join(failures)
    _publish_or_reject(job, entry, staged, check, failures)


def _publish_or_reject(job: Publishing, entry: dict, staged: Path, check, failures: list[str]) -> None:
    fmt, filename = entry["format"], entry["file"]
    if entry["status"] != "failed":
        published = job.artifacts / filename
        os.replace(staged, published)
        job.ctx.record_output(published)
        log.info("[export] %-14s %-28s %9.1f KB  top-1 %.4f (%+.2f pp)  agreement %.4f  max|dp| %.2e%s",
                 fmt, filename, entry["bytes"] / 1024, check.top1, entry["accuracy"]["delta_pp"],
                 check.top1_agreement, check.max_abs_diff,
                 f"  OVER BUDGET (warn): {entry['error']}" if failures else "")
    else:
        entry["file"] = str(Path(layout.STAGING) / filename)
        job.rejected.append(f"{staged} ({entry['error']})")
        log.error("[export] %-14s %s REJECTED: %s", fmt, filename, entry["error"])
    job.entries.append(entry)


def _results(cfg: Config, ctx, class_names: list[str], contract: dict, job: Publishing) -> dict:
    ref = job.ref
    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "name": cfg.name,
        "config_hash": cfg.config_hash(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"machine": platform.machine(), "system": platform.system(), "cpus": os.cpu_count()},
        "versions": _versions(),
        "dataset": {
            "source": cfg.data.source, "path": cfg.data.path, "classes": class_names,
            "test_images": int(len(ref.labels)),
        },
        # What the data stage left out (file and reason), converted, and found twice (data/scan.json).
        "data": json.loads(ctx.path(layout.SCAN).read_text(encoding="utf-8")),
        "model": {"backbone": cfg.model.backbone, "alpha": cfg.model.alpha, "weights": cfg.model.weights,
                  "image_size": cfg.data.image_size},
        "preprocessing": contract,
        "reference": {"format": "keras", "accuracy": {"top1": ref.top1, "majority_class_rate": ref.majority_class_rate},
                      "at_chance": ref.untrained, "latency_ms": ref.latency_ms},
        "artifacts": job.entries,
    }
    report = ctx.path(layout.OPTIMIZE_REPORT)
    if needed_models(cfg) and report.exists():
        results["optimize"] = json.loads(report.read_text())
    return results


def _write_manifest(cfg: Config, ctx, job: Publishing, results: dict, contract: dict, published: list[dict],
                    calibration: np.ndarray, chosen: np.ndarray, labels_out: Path) -> None:
    info = job.info
    split = json.loads(ctx.path(layout.SPLIT_INDEX).read_text(encoding="utf-8"))
    calibration_files = [split["files"]["train"][i] for i in chosen]
    bundle = {
        "schema_version": manifest.MANIFEST_VERSION,
        "model": {"name": info.name, "version": info.version, "description": info.description,
                  "author": info.author, "license": info.license, "backbone": cfg.model.backbone,
                  "alpha": cfg.model.alpha, "weights": cfg.model.weights, "image_size": cfg.data.image_size},
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
    manifest_path = ctx.path(layout.MANIFEST)
    write_json(manifest_path, bundle)
    ctx.record_output(manifest_path)
    log.info("[export] %s: %d files with sha256, metadata, validation and accelerator support",
             manifest_path, len(published))


def _raise_failures(job: Publishing) -> None:
    unconverted, rejected = job.unconverted, job.rejected
    if unconverted:
        raise ExportError(
            f"{len(unconverted)} format(s) could not be converted and no file was made: {'; '.join(unconverted)}"
            + (f"; {len(rejected)} exported file(s) also failed validation: {'; '.join(rejected)}" if rejected else "")
            + "; the other files were published. Check that the model trained (its test top-1 is in the log), "
              "or drop those formats from export.formats."
        )
    if rejected:
        raise BudgetError(
            f"{len(rejected)} exported file(s) failed validation and were not published: {'; '.join(rejected)}."
        )
