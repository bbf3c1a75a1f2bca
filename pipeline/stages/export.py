"""export stage: every format in ``export.formats`` is exported, validated, then published.

Each file is written to ``export/staging/``, given its metadata (labels, the
preprocessing contract; ``exporters.metadata``), loaded in its real runtime, run
on the real test split and compared with the Keras model and with itself before
the metadata was added. Only a file within its budget is moved into
``artifacts/``; one that fails stays in staging for inspection, every result is
still written to ``export/results.json``, and the run then fails naming each
rejected file. ``artifacts/manifest.json`` describes what was published.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path

import numpy as np

import exporters
from exporters import delegates, inspect
from exporters import metadata as file_metadata
from exporters.runtimes import load_predictor, median_latency_ms
from exporters.validate import compare
from pipeline import data, manifest, models
from pipeline.config import Config
from pipeline.errors import BudgetError, DataError, ExportError, one_line
from pipeline.io import atomic_path, gzip_size, sha256_file, write_json
from pipeline.stages import Stage
from pipeline.stages.data import read_labels
from pipeline.stages import optimize

log = logging.getLogger("pipeline")

STAGE = Stage(
    name="export",
    deps=("finetune/model.keras", "data/train.npz", "data/test.npz", "data/labels.txt", "data/scan.json"),
    params=("export",),
    extra_deps=optimize.outputs_for,
    code=(
        "pipeline.stages.export", "pipeline.stages.optimize", "pipeline.compression", "exporters.registry",
        "exporters.keras_format", "exporters.tflite", "exporters.onnx", "exporters.folding", "exporters.runtimes",
        "exporters.validate", "exporters.inspect", "pipeline.models", "exporters.metadata", "exporters.delegates",
        "pipeline.manifest",
    ),
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


class _NotConverted(Exception):
    """A converter raised: carries its exception (``__cause__``) out of the staging block."""


def carries_metadata(path: Path) -> bool:
    return path.suffix in (".tflite", ".onnx")


def inspect_file(path: Path, exporter, model) -> dict:
    """Facts read back from the exported bytes (sparsity, integer-only ops)."""
    if exporter.runtime == "litert":
        summary = inspect.tflite_summary(path)
        return {"sparsity": summary["sparsity"], "fully_integer": summary["fully_integer"],
                "float_ops": summary["float_ops"], "input": summary["input"]}
    if exporter.runtime == "onnxruntime":
        return {"sparsity": inspect.onnx_sparsity(path)}
    return {"sparsity": inspect.keras_sparsity(model)}


def keras_latency_ms(model, sample: np.ndarray, runs: int):
    """The Keras model as a compiled tf.function, batch 1, timed like the exported files."""
    if not runs:
        return None
    return median_latency_ms(models.compiled_predictor(model), sample, runs)


def run(cfg: Config, ctx) -> None:
    root = ctx.root
    class_names = read_labels(root)
    x_test, y_test = data.load_split(ctx.path("data/test.npz"))
    x_test = x_test.astype(np.float32)
    model = optimize.load_optimized(root, "finetune")
    reference = models.predict_probs(model, x_test)
    keras_top1 = float(np.mean(reference.argmax(1) == y_test))
    log.info("[export] Keras reference: test top-1 %.4f on %d images", keras_top1, len(y_test))
    chance = float(np.bincount(y_test).max() / len(y_test))
    # Exported files can agree perfectly with a model that learned nothing: say so.
    untrained = keras_top1 <= chance + 0.02
    if untrained:
        log.warning("[export] the Keras model's test top-1 %.4f is no better than always guessing the largest "
                    "class (%.4f): training did not learn; check the data, model.weights and the train section",
                    keras_top1, chance)

    staging = ctx.path("export/staging")
    artifacts = ctx.path("artifacts")
    # A re-run starts from empty folders so nothing stale is published beside new files.
    for folder in (staging, artifacts):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    contract = models.preprocessing_contract(cfg.model, cfg.data.image_size)
    info = model_info(cfg, class_names, contract)
    x_train, _ = data.load_split(ctx.path("data/train.npz"))
    chosen = calibration_indices(len(x_train), cfg.export.calibration_samples, cfg.data.seed)
    calibration = x_train[chosen].astype(np.float32)
    export_ctx = exporters.ExportContext(image_size=cfg.data.image_size, onnx_opset=cfg.export.onnx_opset,
                                         calibration_images=calibration, int8_input=cfg.export.int8_input,
                                         int8_output=cfg.export.int8_output)
    sample = x_test[:1]
    reference_latency = keras_latency_ms(model, sample, cfg.export.latency_runs)

    trained = {"finetune": model}  # pruned / QAT models are rebuilt on first use
    entries, rejected, unconverted = [], [], []
    for fmt in cfg.export.formats:
        exporter = exporters.get(fmt)
        if exporter.source not in trained:
            trained[exporter.source] = optimize.load_optimized(root, exporter.source)
        filename = f"{cfg.name}{exporter.suffix}"
        staged = staging / filename
        started = time.time()
        plain = None
        try:
            with atomic_path(staged) as tmp:
                try:
                    exporter.export(trained[exporter.source], tmp, export_ctx)
                except Exception as exc:  # the converter's own error (TFLite, tf2onnx, the ORT quantizer)
                    raise _NotConverted(exc) from exc  # out of atomic_path: no file is left
                if carries_metadata(tmp):
                    # Outputs before the metadata goes in: adding it must not change one bit of them.
                    plain = load_predictor(tmp, exporter.runtime, cfg.export.threads)(x_test)
                    file_metadata.write_metadata(tmp, info)
        except _NotConverted as failed:
            # A converter can refuse a model the user's config made (an untrained QAT model's
            # degenerate quantization ranges, say): that format fails, the others are still made.
            exc = failed.__cause__
            log.debug("[export] %s conversion traceback", fmt, exc_info=exc)
            why = f"conversion failed ({one_line(f'{type(exc).__name__}: {exc}', 240)})"
            log.error("[export] %-14s %s NOT MADE: %s", fmt, filename, why)
            entries.append({"name": f"{cfg.name}-{fmt}", "format": fmt, "runtime": exporter.runtime,
                            "precision": exporter.precision, "source_model": exporter.source, "file": None,
                            "status": "failed", "error": why})
            unconverted.append(f"{fmt} ({why})")
            continue
        export_s = time.time() - started
        probs = load_predictor(staged, exporter.runtime, cfg.export.threads)(x_test)
        check = compare(probs, reference, y_test, exporter, cfg.export.budgets.get(fmt))
        entry = {
            "name": f"{cfg.name}-{fmt}",
            "format": fmt,
            "runtime": exporter.runtime,
            "precision": exporter.precision,
            "source_model": exporter.source,
            "file": filename,
            "bytes": staged.stat().st_size,
            "gzip_bytes": gzip_size(staged),
            "sha256": sha256_file(staged),
            "accuracy": {"top1": check.top1, "delta_pp": round(-check.accuracy_drop_pp, 4) + 0.0},
            "validation": check.as_dict(),
            "export_seconds": round(export_s, 2),
            **inspect_file(staged, exporter, model),
        }
        failures = check.failures
        if exporter.fully_integer and not entry.get("fully_integer", True):
            failures = failures + [f"claims full integer but runs float ops {entry['float_ops']}"]
        if plain is not None:
            identical = plain.dtype == probs.dtype and np.array_equal(plain, probs)
            entry["metadata"] = {"written": True, "outputs_bit_identical": bool(identical), "images": int(len(x_test))}
            if not identical:
                failures = failures + ["adding its metadata changed its outputs on the test images"]
        if exporter.runtime == "litert":
            entry["delegates"] = delegates.tflite_delegates(staged)
        entry["status"] = "passed" if not failures else ("warned" if cfg.export.on_budget_fail == "warn" else "failed")
        if cfg.export.latency_runs:
            predict = load_predictor(staged, exporter.runtime, threads=1)
            entry["latency_ms"] = median_latency_ms(predict, sample, cfg.export.latency_runs)
            entry["latency_ratio_to_keras"] = round(entry["latency_ms"] / reference_latency, 4)
        if failures:
            entry["error"] = "; ".join(failures)
        if entry["status"] != "failed":
            published = artifacts / filename
            os.replace(staged, published)
            ctx.record_output(published)
            log.info("[export] %-14s %-28s %9.1f KB  top-1 %.4f (%+.2f pp)  agreement %.4f  max|dp| %.2e%s",
                     fmt, filename, entry["bytes"] / 1024, check.top1, entry["accuracy"]["delta_pp"],
                     check.top1_agreement, check.max_abs_diff,
                     f"  OVER BUDGET (warn): {entry['error']}" if failures else "")
        else:
            entry["file"] = str(Path("export/staging") / filename)
            rejected.append(f"{staged} ({entry['error']})")
            log.error("[export] %-14s %s REJECTED: %s", fmt, filename, entry["error"])
        entries.append(entry)

    labels_out = artifacts / "labels.txt"
    with atomic_path(labels_out) as tmp:
        shutil.copyfile(ctx.path("data/labels.txt"), tmp)
    ctx.record_output(labels_out)

    results = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "name": cfg.name,
        "config_hash": cfg.config_hash(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": {"machine": platform.machine(), "system": platform.system(), "cpus": os.cpu_count()},
        "versions": _versions(),
        "dataset": {
            "source": cfg.data.source, "path": cfg.data.path, "classes": class_names,
            "test_images": int(len(y_test)),
        },
        # What the data stage left out (file and reason), converted, and found twice (data/scan.json).
        "data": json.loads(ctx.path("data/scan.json").read_text(encoding="utf-8")),
        "model": {"backbone": cfg.model.backbone, "alpha": cfg.model.alpha, "weights": cfg.model.weights,
                  "image_size": cfg.data.image_size},
        "preprocessing": contract,
        "reference": {"format": "keras", "accuracy": {"top1": keras_top1, "majority_class_rate": chance},
                      "at_chance": untrained, "latency_ms": reference_latency},
        "artifacts": entries,
    }
    report = ctx.path("optimize/report.json")
    if optimize.needed_models(cfg) and report.exists():
        results["optimize"] = json.loads(report.read_text())
    results_path = ctx.path("export/results.json")
    write_json(results_path, results)
    published = [e for e in entries if e["status"] != "failed"]
    if published:
        split = json.loads(ctx.path("data/split.json").read_text(encoding="utf-8"))
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
                cfg, split, {name: ctx.path(f"data/{name}.npz") for name in ("train", "val", "test")}),
            "calibration": manifest.calibration_fingerprint(x_train[chosen], calibration_files, cfg.data.seed),
            "labels": list(class_names),
            "labels_file": {"file": labels_out.name, "sha256": sha256_file(labels_out)},
            "preprocessing": contract,
            "artifacts": [manifest.artifact_entry(artifacts / e["file"], e, contract, e.get("delegates"),
                                                  len(class_names)) for e in published],
        }
        manifest.check_schema(bundle)
        manifest_path = artifacts / manifest.MANIFEST
        write_json(manifest_path, bundle)
        ctx.record_output(manifest_path)
        log.info("[export] %s: %d files with sha256, metadata, validation and accelerator support",
                 manifest_path, len(published))
    # results.json is written, but no stamp: the next run tries the export again.
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
    ctx.record_output(results_path)
