"""The report's "Build time" section, read from ``timings`` of ``bench/results.json``.

Three tables: seconds per stage (with the share of the build), the training phases
(head and fine-tune epochs, pruning and QAT), and each exported format's steps
(repair search, convert, validate, inspect, latency). The figures are those of the
last run that did each stage's work (a skipped stage keeps its earlier figure).
Left out when the results have no timings (results written before they existed).

``markdown(results)`` gives the markdown lines, ``html(results)`` the HTML.
"""

from __future__ import annotations

import html as _html
from typing import Optional

from benchmarks import tables

HEADING = "Build time"
STEPS = ("repair", "convert", "validate", "inspect", "latency")
STAGE_COLUMNS = ("stage", "seconds", "share")
PHASE_COLUMNS = ("phase", "seconds", "epochs", "seconds per epoch")
STEP_COLUMNS = ("format",) + STEPS + ("total",)


def _section(results: dict) -> Optional[dict]:
    timings = results.get("timings")
    return timings if timings and timings.get("stages") else None


def _s(x) -> str:
    return "" if x is None else f"{x:.1f}"


def intro(timings: dict) -> str:
    total = sum(timings["stages"].values())
    return (f"{total:.0f} s over the stages below ({total / 60:.1f} min), each as the last run that did its work "
            "took it; a stage skipped as up to date keeps its earlier figure.")


def stage_cells(timings: dict) -> list[list[str]]:
    total = sum(timings["stages"].values()) or 1.0
    return [[name, _s(s), f"{100 * s / total:.0f}%"] for name, s in timings["stages"].items()]


def phase_cells(timings: dict) -> list[list[str]]:
    return [[name, _s(p["seconds"]), str(p.get("epochs", "")), _s(p.get("seconds_per_epoch"))]
            for name, p in timings.get("phases", {}).items()]


def step_cells(timings: dict) -> list[list[str]]:
    return [[fmt] + [_s(steps.get(step)) for step in STEPS] + [_s(sum(steps.values()))]
            for fmt, steps in timings.get("export", {}).items()]


def _tables(timings: dict):
    yield STAGE_COLUMNS, stage_cells(timings)
    if timings.get("phases"):
        yield PHASE_COLUMNS, phase_cells(timings)
    if timings.get("export"):
        yield STEP_COLUMNS, step_cells(timings)


def markdown(results: dict) -> list[str]:
    timings = _section(results)
    if timings is None:
        return []
    lines = ["", f"## {HEADING}", "", intro(timings)]
    for columns, rows in _tables(timings):
        lines += [""] + tables.markdown(columns, rows)
    return lines


def html(results: dict) -> list[str]:
    timings = _section(results)
    if timings is None:
        return []
    esc = _html.escape
    parts = [f"<h2>{esc(HEADING)}</h2>", f"<p>{esc(intro(timings))}</p>"]
    parts += [tables.html(columns, rows, css="timings") for columns, rows in _tables(timings)]
    return parts
