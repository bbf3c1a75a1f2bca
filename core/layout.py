"""The build folder's layout: every path a stage reads or writes, named once.

Paths are relative to ``build/<name>/`` (the form stamps record them in).
"""

from __future__ import annotations

from pathlib import Path

SPLITS = ("train", "val", "test")

# data stage
LABELS = "data/labels.txt"
SPLIT_INDEX = "data/split.json"  # class names, counts and the files of each split
SCAN = "data/scan.json"  # skipped, converted and duplicate files
# finetune stage
MODEL = "finetune/model.keras"
HISTORY = "finetune/history.json"
FINETUNE_CHECKPOINT = "finetune/checkpoint"
# optimize stage
PRUNED_MODEL = "optimize/pruned.keras"
QAT_WEIGHTS = "optimize/qat_weights.h5"
PRUNED_QAT_WEIGHTS = "optimize/pruned_qat_weights.h5"
OPTIMIZE_REPORT = "optimize/report.json"
OPTIMIZE_CHECKPOINT = "optimize/checkpoint"  # the phase and epoch pruning or QAT reached, resumed by the next run
# export stage
STAGING = "export/staging"  # files before validation; a rejected one stays here
NEXT_BUNDLE = "export/bundle.next"  # the new bundle, assembled whole before it takes artifacts/'s place
EXPORT_RESULTS = "export/results.json"
REPAIR_RECIPES = "export/recipes.json"  # the recipe each repaired format was chosen with, reused on a rebuild
ARTIFACTS = "artifacts"  # the published bundle
ARTIFACT_LABELS = "artifacts/labels.txt"
MANIFEST = "artifacts/manifest.json"
# bench stage and the tools beside it
BENCH_RESULTS = "bench/results.json"
BENCH_WORK = "bench/work"
REPORT = "report"
TRAIN_THROUGHPUT = "bench/train_throughput.json"
LINEAR_PROBE = "bench/linear_probe.json"
# training's disk cache of the splits (data.cache: disk), removed after each run
CACHE = "cache"


def split(name: str) -> str:
    """The decoded split ``name`` (train, val or test)."""
    if name not in SPLITS:
        raise ValueError(f"no split {name!r}; splits are {', '.join(SPLITS)}")
    return f"data/{name}.npz"


def artifact(build_name: str, suffix: str) -> str:
    """A published file: the build's name and its format's suffix (``artifacts/flowers_int8.tflite``)."""
    return f"{ARTIFACTS}/{build_name}{suffix}"


def stamp(stage: str) -> str:
    return f"{stage}/stamp.json"


def read_labels(root: Path) -> list[str]:
    """The class names of the build under ``root``, in label order."""
    return (Path(root) / LABELS).read_text(encoding="utf-8").splitlines()
