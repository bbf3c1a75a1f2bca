"""export stage: every format in ``export.formats`` is exported, validated, then published.

Each file is written to ``export/staging/``, loaded in its real runtime, run on
the real test split and compared with the Keras model. Only a file within its
budget is moved into ``artifacts/``; one that fails stays in staging for
inspection, every result is still written to ``bench/results.json``, and the
run then fails naming each rejected file.
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path

import numpy as np

import exporters
from exporters.validate import validate
from pipeline import data, models
from pipeline.config import Config
from pipeline.errors import BudgetError
from pipeline.io import atomic_path, sha256_file, write_json
from pipeline.stages import Stage
from pipeline.stages.data import read_labels
from pipeline.stages.finetune import load_model

log = logging.getLogger("pipeline")

STAGE = Stage(
    name="export",
    deps=("finetune/model.keras", "data/test.npz", "data/labels.txt"),
    params=("export",),
    code=(
        "pipeline.stages.export", "exporters.registry", "exporters.keras_format", "exporters.tflite",
        "exporters.onnx", "exporters.runtimes", "exporters.validate", "pipeline.models",
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


def run(cfg: Config, ctx) -> None:
    root = ctx.root
    class_names = read_labels(root)
    x_test, y_test = data.load_split(ctx.path("data/test.npz"))
    x_test = x_test.astype(np.float32)
    model = load_model(ctx.path("finetune/model.keras"))
    reference = models.predict_probs(model, x_test)
    keras_top1 = float(np.mean(reference.argmax(1) == y_test))
    log.info("[export] Keras reference: test top-1 %.4f on %d images", keras_top1, len(y_test))

    staging = ctx.path("export/staging")
    artifacts = ctx.path("artifacts")
    # A re-run starts from empty folders so nothing stale is published beside new files.
    for folder in (staging, artifacts):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    export_ctx = exporters.ExportContext(image_size=cfg.data.image_size, onnx_opset=cfg.export.onnx_opset)

    entries, rejected = [], []
    for fmt in cfg.export.formats:
        exporter = exporters.get(fmt)
        filename = f"{cfg.name}{exporter.suffix}"
        staged = staging / filename
        started = time.time()
        with atomic_path(staged) as tmp:
            exporter.export(model, tmp, export_ctx)
        export_s = time.time() - started
        check = validate(staged, exporter, x_test, y_test, reference, threads=cfg.export.threads)
        entry = {
            "name": f"{cfg.name}-{fmt}",
            "format": fmt,
            "runtime": exporter.runtime,
            "precision": exporter.precision,
            "file": filename,
            "bytes": staged.stat().st_size,
            "sha256": sha256_file(staged),
            "status": "passed" if check.passed else "failed",
            "accuracy": {"top1": check.top1, "delta_pp": round(100 * (check.top1 - keras_top1), 4)},
            "validation": check.as_dict(),
            "export_seconds": round(export_s, 2),
        }
        if check.passed:
            published = artifacts / filename
            os.replace(staged, published)
            ctx.record_output(published)
            log.info("[export] %-12s %s  %8.1f KB  top-1 %.4f  agreement %.4f  max|dp| %.2e",
                     fmt, filename, entry["bytes"] / 1024, check.top1, check.top1_agreement, check.max_abs_diff)
        else:
            entry["error"] = "; ".join(check.failures)
            entry["file"] = str(Path("export/staging") / filename)
            rejected.append(f"{staged} ({entry['error']})")
            log.error("[export] %-12s %s REJECTED: %s", fmt, filename, entry["error"])
        entries.append(entry)

    labels_out = artifacts / "labels.txt"
    shutil.copyfile(ctx.path("data/labels.txt"), labels_out)
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
        "model": {"backbone": cfg.model.backbone, "alpha": cfg.model.alpha, "weights": cfg.model.weights,
                  "image_size": cfg.data.image_size},
        "preprocessing": models.preprocessing_contract(cfg.model, cfg.data.image_size),
        "reference": {"format": "keras", "accuracy": {"top1": keras_top1}},
        "artifacts": entries,
    }
    results_path = ctx.path("bench/results.json")
    write_json(results_path, results)
    if rejected:
        # results.json is written, but no stamp: the next run tries the export again.
        raise BudgetError(
            f"{len(rejected)} exported file(s) failed validation and were not published: {'; '.join(rejected)}."
        )
    ctx.record_output(results_path)
