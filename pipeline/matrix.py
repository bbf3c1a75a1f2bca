"""The backbone × format matrix: every backbone of the registry built through every stage into every export
format, at a small input with ``weights: none``, and what happened to each file.

``python -m pipeline.matrix`` (``make matrix``) writes ``docs/matrix.json`` and renders ``docs/matrix.md`` from
it. For each cell it records whether the file converted, whether it passed validation against the Keras model,
whether every op runs in integers, its size and its latency at one thread; for each backbone, whether QAT and
pruning trained (and which layers needed our QAT plan), the Keras model's test top-1 and how long the build took.

Each backbone is built by ``python -m pipeline run`` in a child process of its own, so a converter that crashes
the interpreter costs one row, not the matrix; the JSON and the page are rewritten after every backbone, so an
interrupted run keeps what it measured, and a rerun with ``--backbones`` replaces only those rows (the builds in
``--build-dir`` are reused where their stamps still hold).

The figures are this host's. The models are trained from scratch for a few epochs on scikit-learn's digits, so
the matrix answers "does this combination work, how big and how fast is it", not "how accurate is it": a
validation verdict is the file's agreement with that small model.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import yaml

from benchmarks.run import host_info
from exporters import registry
from pipeline.backbones import BACKBONES

REPO = Path(__file__).resolve().parent.parent
MATRIX_JSON = REPO / "docs" / "matrix.json"
MATRIX_PAGE = MATRIX_JSON.with_suffix(".md")
SCHEMA_VERSION = 1

FORMATS = tuple(registry.names())
SMALL_INPUT = 32  # px; a backbone with a larger smallest input (InceptionV3 75, Xception 71) gets its own
# The narrowest width the Keras weights exist for is not the point here: one width per backbone, the one a
# mobile team would start from.
ALPHA = {"mobilenet_v2": 0.35, "mobilenet": 0.25, "mobilenet_v3_small": 0.75, "mobilenet_v3_large": 0.75}
# One thread per runtime: the latency column is single-core, the figure that carries across hosts best.
TARGETS = {
    "litert-1t": {"description": "LiteRT CPU, 1 thread", "runtime": "litert", "threads": 1},
    "onnxruntime-1t": {"description": "onnxruntime CPU, 1 thread", "runtime": "onnxruntime", "threads": 1},
    "keras-1t": {"description": "tf_keras, 1 thread", "runtime": "keras", "threads": 1},
}


def build_config(backbone: str, build_dir: Path, formats: tuple[str, ...]) -> dict[str, Any]:
    """The config one backbone is built with: small input, weights none, a few epochs on digits."""
    spec = BACKBONES[backbone]
    return {
        "name": backbone,
        "build_dir": str(build_dir),
        "model": {"backbone": backbone, "alpha": ALPHA.get(backbone, 1.0), "weights": "none", "dropout": 0.0},
        "data": {"source": "digits", "image_size": max(SMALL_INPUT, spec.min_size), "seed": 3, "augment": [], "val_fraction": 0.2, "test_fraction": 0.2},
        # All 1,797 digits and a fast-moving BatchNorm average: from scratch, 8 epochs at momentum 0.9 left
        # MobileNetV3's moving statistics behind its weights (val top-1 at chance); at 0.5 it reached 0.97.
        "train": {"batch_size": 32, "head_epochs": 0, "head_lr": 0.001, "fine_tune_epochs": 8,
                  "fine_tune_lr": 0.002, "fine_tune_at": 1.0, "freeze_batchnorm": False,
                  "batchnorm_momentum": 0.5, "patience": 8},
        "optimize": {"prune": {"target_sparsity": 0.5, "epochs": 1}, "qat": {"epochs": 1}},
        # warn: an over-budget file is still published, so its size and latency are measured and recorded
        "export": {"formats": list(formats), "on_budget_fail": "warn"},
        "benchmark": {"targets": [t for t in TARGETS if _runs_any(t, formats)],
                      "targets_file": str(build_dir / "targets.yaml"),
                      "min_runs": 20, "max_runs": 400, "max_seconds": 4, "blocks": 1, "rel_ci": 0.02,
                      "peak_seconds": 0.1},
    }


def _runs_any(target: str, formats: tuple[str, ...]) -> bool:
    return any(registry.get(f).runtime == TARGETS[target]["runtime"] for f in formats)


def build_backbone(backbone: str, build_dir: Path, formats: tuple[str, ...], overrides: tuple[str, ...],
                   timeout_s: float) -> dict[str, Any]:
    """Build one backbone in a child process; its row of the matrix."""
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "targets.yaml").write_text(yaml.safe_dump({"targets": TARGETS}, sort_keys=False))
    config_path = build_dir / f"{backbone}.yaml"
    config_path.write_text(yaml.safe_dump(build_config(backbone, build_dir, formats), sort_keys=False))
    log_path = build_dir / f"{backbone}.log"
    started = time.monotonic()
    with open(log_path, "w") as log:
        exit_code = _run(config_path, overrides, log, timeout_s)
        row = read_row(build_dir / backbone, formats)
        made = [f for f, cell in row["cells"].items() if cell["converted"]]
        if exit_code == 1 and made and len(made) < len(row["cells"]):
            # A format that could not be converted ends the run before the bench: the files that were made are
            # exported again without it (its recipes reused) and timed; the failed cells keep their error.
            log.write(f"\n[matrix] timing the {len(made)} converted formats\n")
            log.flush()
            if _run(config_path, overrides + (f"export.formats=[{','.join(made)}]",), log, timeout_s) == 0:
                timed = read_row(build_dir / backbone, formats)["cells"]
                for fmt in made:
                    row["cells"][fmt]["p50_ms_1_thread"] = timed[fmt]["p50_ms_1_thread"]
    seconds = round(time.monotonic() - started, 1)
    row.update(exit_code=exit_code, build_seconds=seconds, log=str(log_path))
    if exit_code is None:
        row["error"] = f"stopped after {timeout_s:.0f} s (--timeout)"
    elif exit_code != 0:
        row["error"] = _last_error(log_path.read_text(errors="replace"))
    return row


def _run(config_path: Path, overrides: tuple[str, ...], log, timeout_s: float) -> Optional[int]:
    """``python -m pipeline run`` in a child process; its exit code, None when it ran past ``timeout_s``."""
    command = [sys.executable, "-m", "pipeline", "run", "--config", str(config_path)]
    for override in overrides:
        command += ["--set", override]
    try:
        return subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              timeout=timeout_s, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    except subprocess.TimeoutExpired:
        return None


def _last_error(log: str) -> str:
    """The run's own one-sentence error (the last line it printed that says error), else the last line."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    for line in reversed(lines):
        if "error" in line.lower() or "refused" in line.lower():
            return line[:400]
    return lines[-1][:400] if lines else "no output"


def read_row(build_root: Path, formats: tuple[str, ...]) -> dict[str, Any]:
    """One backbone's row, read from its build: export/results.json, and bench/results.json where it ran."""
    bench_file, export_file = build_root / "bench" / "results.json", build_root / "export" / "results.json"
    source = bench_file if bench_file.exists() else export_file
    if not source.exists():
        return {"cells": {}}
    results = json.loads(source.read_text())
    optimize = results.get("optimize") or {}
    latency = {}
    for row in (results.get("benchmark") or {}).get("rows", []):
        # each file on its own runtime's target (the Keras reference is timed beside every target: keras-1t's)
        if TARGETS.get(row["target"], {}).get("runtime") == row.get("runtime") and row.get("threads") == 1:
            latency[row["artifact"]] = row["latency_ms"]["p50"]
    cells = {}
    for entry in results["artifacts"]:
        fmt = entry["format"]
        if fmt not in formats:
            continue
        converted = entry.get("bytes") is not None  # a file that failed to convert has no size
        cells[fmt] = {
            "converted": converted,
            "validation": {"passed": "passed", "warned": "over budget"}.get(entry.get("status"), "failed"),
            "verdict": entry.get("verdict"),
            "fully_integer": entry.get("fully_integer"),
            "bytes": entry.get("bytes"),
            "p50_ms_1_thread": latency.get(fmt),
            "error": entry.get("error") or entry.get("warning"),
        }
    reference = results.get("reference") or {}
    qat_layers = optimize.get("qat_layers") or {}
    return {
        "input_px": results["model"]["image_size"],
        "alpha": results["model"].get("alpha"),
        "keras_test_top1": (reference.get("accuracy") or {}).get("top1"),
        "chance_top1": (reference.get("accuracy") or {}).get("majority_class_rate"),
        "test_images": (results.get("dataset") or {}).get("test_images"),
        "qat": {"trained": "qat" in optimize.get("models", ()),
                "layers_quantized_at_output": len(qat_layers.get("output", ())),
                "layers_left_float": len(qat_layers.get("float", ()))},
        "pruning": {"trained": "pruned-qat" in optimize.get("models", ()) or "pruned" in optimize.get("models", ()),
                    "sparsity": (optimize.get("pruning") or {}).get("sparsity")},
        "cells": cells,
    }


def host() -> dict[str, Any]:
    return {"cpu": host_info()["cpu"] or "unknown CPU", "cores": os.cpu_count()}


def load(path: Path) -> dict[str, Any]:
    if path.exists():
        matrix = json.loads(path.read_text())
        if matrix.get("schema_version") == SCHEMA_VERSION:
            return matrix
    return {"schema_version": SCHEMA_VERSION, "backbones": {}}


def save(matrix: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(matrix, indent=1, sort_keys=True) + "\n")
    path.with_suffix(".md").write_text(render(matrix))


def _cell_text(cell: Optional[dict[str, Any]]) -> str:
    if cell is None:
        return "–"
    if not cell["converted"]:
        return "✗ not converted"
    mark = {"passed": "✓", "over budget": "⚠"}.get(cell["validation"], "✗")
    parts = [mark + (" int" if cell["fully_integer"] else "")]
    if cell["bytes"] is not None:
        parts.append(f"{cell['bytes'] / 2**20:.2f} MB")
    if cell["p50_ms_1_thread"] is not None:
        parts.append(f"{cell['p50_ms_1_thread']:.3g} ms")
    return "<br>".join(parts)


def render(matrix: dict[str, Any]) -> str:
    """docs/matrix.md from docs/matrix.json (nothing else: the page holds no figure the JSON lacks)."""
    given = matrix.get("backbones", {})
    rows = {name: given[name] for name in [*[b for b in BACKBONES if b in given], *sorted(set(given) - set(BACKBONES))]}
    formats = [f for f in FORMATS if any(f in r.get("cells", {}) for r in rows.values())]
    run = matrix.get("run", {})
    lines = [
        "# Backbone × format matrix",
        "",
        "<!-- Generated by `make matrix` (python -m pipeline.matrix) from docs/matrix.json: do not edit. -->",
        "",
        "Every backbone of the registry ([backbones.md](backbones.md)) built through every stage into every "
        "export format at a small input with `weights: none`, trained from scratch for a few epochs on "
        "scikit-learn's digits (`build_config` in `pipeline/matrix.py`). It answers *does this combination "
        "convert, run in integers, and how big and how fast is it*; a validation mark is the file's verdict "
        "against that small Keras model on its test split, not an accuracy claim.",
        "",
        f"Measured on {run.get('host', {}).get('cpu', 'an unrecorded host')} "
        f"({run.get('host', {}).get('cores', '?')} cores), {run.get('date', 'date not recorded')}; "
        f"{', '.join(f'{k} {v}' for k, v in sorted(run.get('versions', {}).items()))}.",
        "",
        "Cell: ✓ passed validation, ⚠ converted but over its accuracy budget, ✗ failed; `int` every op runs "
        "in integers (read from the file); size; median latency at 1 thread on this host (LiteRT for "
        "`.tflite`, onnxruntime for `.onnx`, tf_keras for `.keras`). – not built.",
        "",
        "| backbone | " + " | ".join(f"`{f}`" for f in formats) + " |",
        "|---|" + "---|" * len(formats),
    ]
    for name, row in rows.items():
        cells = row.get("cells", {})
        lines.append(f"| `{name}` | " + " | ".join(_cell_text(cells.get(f)) for f in formats) + " |")
    lines += ["", "## Per backbone", "",
              "| backbone | input | alpha | Keras test top-1 (chance) | QAT | pruning | build | exit |",
              "|---|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        top1 = row.get("keras_test_top1")
        accuracy = "–" if top1 is None else f"{top1:.3f} ({row.get('chance_top1') or 0:.2f}) on " \
                                             f"{row.get('test_images') or '?'} images"
        qat = row.get("qat", {})
        qat_text = ("trained" + (f"; {qat['layers_quantized_at_output']} layers quantized at their output, "
                                 f"{qat['layers_left_float']} left float by our plan"
                                 if qat.get("layers_quantized_at_output") or qat.get("layers_left_float") else
                                 "; tfmot's defaults") if qat.get("trained") else "–")
        pruning = row.get("pruning", {})
        prune_text = (f"trained, sparsity {pruning['sparsity']:.2f}" if pruning.get("trained")
                      and pruning.get("sparsity") is not None else "–")
        build = f"{row['build_seconds'] / 60:.1f} min" if row.get("build_seconds") is not None else "–"
        lines.append(f"| `{name}` | {row.get('input_px', '–')} px | {row.get('alpha') or '–'} | {accuracy} | "
                     f"{qat_text} | {prune_text} | {build} | {row.get('exit_code', '–')} |")
    notes = [(name, fmt, cell["error"]) for name, row in rows.items()
             for fmt in formats if (cell := row.get("cells", {}).get(fmt))
             and cell.get("error") and cell["validation"] != "passed"]
    failures = [(name, row["error"]) for name, row in rows.items() if row.get("error")]
    if notes or failures:
        lines += ["", "## What went wrong", ""]
        lines += [f"- `{name}`: {error}" for name, error in failures]
        lines += [f"- `{name}` × `{fmt}`: {error}" for name, fmt, error in notes]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.matrix", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES),
                        help="comma-separated registry names (default: every backbone)")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated export formats (default: all)")
    parser.add_argument("--out", type=Path, default=MATRIX_JSON, help="the JSON file; the page is written beside it")
    parser.add_argument("--build-dir", type=Path, default=REPO / "build" / "matrix")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        help="a config override for every backbone, as in `pipeline run --set`")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per backbone at most")
    parser.add_argument("--render", action="store_true", help="only re-render the page from the JSON")
    args = parser.parse_args(argv)

    matrix = load(args.out)
    if args.render:
        save(matrix, args.out)
        return 0
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    unknown = [b for b in backbones if b not in BACKBONES] + [f for f in formats if f not in FORMATS]
    if unknown:
        print(f"pipeline.matrix: unknown backbone or format {', '.join(unknown)}; backbones: "
              f"{', '.join(BACKBONES)}; formats: {', '.join(FORMATS)}", file=sys.stderr)
        return 2
    from importlib.metadata import version

    matrix["run"] = {"host": host(), "date": time.strftime("%Y-%m-%d"),
                     "versions": {p: version(p) for p in ("tensorflow", "tensorflow-model-optimization", "tf2onnx",
                                                          "onnxruntime", "ai-edge-litert")},
                     "formats": list(formats)}
    for backbone in backbones:
        print(f"[matrix] {backbone}: building ({len(formats)} formats)", flush=True)
        row = build_backbone(backbone, args.build_dir, formats, tuple(args.overrides), args.timeout)
        matrix["backbones"][backbone] = row
        save(matrix, args.out)
        made = sum(c["converted"] for c in row["cells"].values())
        print(f"[matrix] {backbone}: {made}/{len(formats)} converted in {row['build_seconds']:.0f} s, exit "
              f"{row['exit_code']}" + (f": {row['error']}" if row.get("error") else ""), flush=True)
    print(render(matrix), end="")
    print(f"[matrix] wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
