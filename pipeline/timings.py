"""Where a build's time went: seconds per stage, per training phase, and per step of each exported format.

Read back from what the stages already record, so nothing is timed twice:

- each stage's stamp (``<stage>/stamp.json``, ``seconds``: the last run that made its outputs);
- fine-tuning's ``history.json`` (``epoch_seconds`` of the head and fine-tune phases, this run's epochs);
- the optimize report (``seconds`` of pruning, with its sparsity-preserving QAT, and of QAT);
- the export results (each format's ``seconds``: repair search, convert, validate, inspect, latency).

A stage skipped as up to date keeps the seconds of the run that made it, so on a
rebuild the figures are those of the last run that did the work; a stage resumed
after a kill counts only the resumed part.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from core import layout

STAGES = ("data", "finetune", "optimize", "export", "bench")
EXPORT_STEPS = ("repair", "convert", "validate", "inspect", "latency")


def read_json(path: Path) -> Optional[dict]:
    """The JSON file at ``path``, or None when it is missing or unreadable (a build that stopped early)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _training_phases(root: Path) -> dict:
    history = read_json(root / layout.HISTORY) or {}
    phases = {}
    for phase, epochs in (history.get("epoch_seconds") or {}).items():
        if epochs:
            phases[f"finetune.{phase}"] = {"seconds": round(sum(epochs), 2), "epochs": len(epochs),
                                           "seconds_per_epoch": round(sum(epochs) / len(epochs), 2)}
    report = read_json(root / layout.OPTIMIZE_REPORT) or {}
    for name, key in (("optimize.prune_and_pruned_qat", "pruning"), ("optimize.qat", "qat")):
        seconds = (report.get(key) or {}).get("seconds")
        if seconds is not None:
            phases[name] = {"seconds": seconds}
    return phases


def of_build(root: Path, artifacts: Optional[list[dict]] = None, stages: tuple[str, ...] = STAGES) -> dict:
    """``{"stages": {stage: seconds}, "phases": {...}, "export": {format: {step: seconds}}}`` of the build at ``root``.

    ``artifacts``: the export results' entries (read from ``export/results.json`` when not given);
    ``stages``: the stages to read, those that have finished (a running stage's old stamp is gone, a
    later one's may be from an earlier run).
    """
    root = Path(root)
    seconds = {}
    for name in stages:
        stamp = read_json(root / layout.stamp(name))
        if stamp is not None and stamp.get("seconds") is not None:
            seconds[name] = stamp["seconds"]
    if artifacts is None:
        artifacts = (read_json(root / layout.EXPORT_RESULTS) or {}).get("artifacts", [])
    export = {e["format"]: e["seconds"] for e in artifacts if e.get("seconds")}
    return {"stages": seconds, "phases": _training_phases(root), "export": export}
