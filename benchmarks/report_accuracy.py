"""The report's accuracy sections, read from the export stage's fields of ``bench/results.json``.

Three sections, each left out when its fields are absent (results written before the
export stage recorded them, or a build without int8 files):

- Accuracy against the Keras model: per file, the paired test-split figures (top-1 change
  with its 95% interval, lost/gained images, McNemar p, agreement with its interval),
  agreement on the validation split and on training images the calibration did not use,
  mean KL, and the verdict on the budget; then each unproven file's warning.
- Repair: per int8 file, every recipe tried on the validation split, the chosen one marked.
- Int8 sensitivity per layer: the most sensitive layers of the fine-tuned model, and which
  mixed files keep each in float (table, and a bar plot in the HTML).

``markdown(results)`` gives the markdown lines, ``html(results, inline)`` the HTML, and
``sensitivity_figure(results)`` the plot, which ``benchmarks.report`` saves beside the others.
"""

from __future__ import annotations

import html as _html
from typing import Optional

from benchmarks import tables
from core import sensitivity

TOP_LAYERS = 15
CHOSEN = "✓"
MINUS = "−"  # U+2212: a hyphen reads as a dash beside the interval's brackets

PAIRED_COLUMNS = ("file", "Δ top-1 pp [95%]", "lost/gained", "McNemar p", "agreement [95%]", "val agreement",
                  "unused-train agreement", "mean KL", "verdict")
ATTEMPT_COLUMNS = ("#", "method", "calibration images", "float layers", "val agreement", "val Δ pp [95%]",
                   "val verdict", "seconds", "chosen")
SENSITIVITY_COLUMNS = ("#", "layer", "rmse/scale", "ops", "kept in float by")


def _signed(x: float) -> str:
    # Rounded first, so that -0.001 shows as +0.00 and not as a negative zero.
    return f"{round(x, 2) + 0.0:+.2f}".replace("-", MINUS)


def delta_text(delta_pp: float, interval: Optional[list]) -> str:
    """``−0.93 [−2.10, +0.14]``: the top-1 change in points with its 95% interval."""
    text = _signed(delta_pp)
    return text if not interval else f"{text} [{_signed(interval[0])}, {_signed(interval[1])}]"


def _percent(x: Optional[float]) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def agreement_text(agreement: Optional[float], interval: Optional[list]) -> str:
    """``99.63% [97.93, 99.93]``: top-1 agreement with the Keras model, with its 95% interval in percent."""
    if agreement is None:
        return "–"
    if not interval:
        return _percent(agreement)
    return f"{_percent(agreement)} [{100 * interval[0]:.2f}, {100 * interval[1]:.2f}]"


def _p(p: Optional[float]) -> str:
    return "–" if p is None else f"{p:.3g}"


def _kl(kl: Optional[float]) -> str:
    # KL is never negative; a float sum of near-equal outputs can land a hair below zero.
    return "–" if kl is None else f"{max(kl, 0.0) + 0.0:.4f}"


def _verdict(paired: dict, verdict: Optional[str]) -> str:
    verdict = verdict or paired.get("verdict") or "–"
    budget = paired.get("budget_pp")
    return verdict if budget is None else f"{verdict} (budget {budget:g} pp)"


def _paired_artifacts(results: dict) -> list[dict]:
    return [a for a in results.get("artifacts", []) if (a.get("validation") or {}).get("paired")]


def paired_rows(results: dict) -> list[tuple[str, list[str]]]:
    """(verdict, cells) per file with paired figures on the test split."""
    out = []
    for a in _paired_artifacts(results):
        paired, fidelity = a["validation"]["paired"], a.get("fidelity") or {}
        val, train = fidelity.get("val") or {}, fidelity.get("train_not_calibration") or {}
        kl = (fidelity.get("test") or {}).get("kl_mean")
        verdict = a.get("verdict") or paired.get("verdict") or ""
        out.append((verdict, [
            a["format"], delta_text(paired["delta_pp"], paired.get("delta_interval_pp")),
            f"{paired['lost']}/{paired['gained']}", _p(paired.get("mcnemar_p")),
            agreement_text(paired.get("agreement"), paired.get("agreement_interval")),
            _percent(val.get("agreement")), _percent(train.get("agreement")), _kl(kl),
            _verdict(paired, a.get("verdict")),
        ]))
    return out


def warnings(results: dict) -> list[str]:
    return [a["warning"] for a in results.get("artifacts", []) if a.get("warning")]


def methods_line(results: dict) -> Optional[str]:
    """What the columns mean and which methods made them, from ``results["statistics"]``."""
    s = results.get("statistics")
    if not s:
        return None
    methods = "; ".join(s[k] for k in ("interval", "test") if s.get(k))
    verdict = f" Verdict against the budget (a top-1 drop in pp) — {s['verdict']}." if s.get("verdict") else ""
    return (f"Δ: the file's top-1 minus the Keras model's; lost/gained: test images only the Keras model / only the "
            f"file got right. Methods: {methods}.{verdict}")


def _float_layers_text(layers: list) -> str:
    return "none" if not layers else f"{len(layers)}: {', '.join(layers)}"


def repair_tables(results: dict) -> list[tuple[dict, list[tuple[bool, list[str]]]]]:
    """(artifact, [(chosen, cells) per attempt]) for each file whose recipe came from a repair search."""
    out = []
    for a in results.get("artifacts", []):
        repair = a.get("repair")
        if not repair or not repair.get("attempts"):
            continue
        rows = []
        for i, attempt in enumerate(repair["attempts"], 1):
            recipe, val = attempt["recipe"], attempt.get("val") or {}
            chosen = recipe == a.get("recipe")
            rows.append((chosen, [
                str(i), recipe.get("calibration_method", "–") + (f", {recipe['int8_types']}" if recipe.get("int8_types")
                                                                   else "")
                + (f", {recipe['weight_rounding']} rounding" if recipe.get("weight_rounding") else ""),
                str(recipe.get("calibration_images", "–")),
                _float_layers_text(recipe.get("float_layers") or []),
                agreement_text(val.get("agreement"), val.get("agreement_interval")),
                delta_text(val["delta_pp"], val.get("delta_interval_pp")) if "delta_pp" in val else "–",
                val.get("verdict", "–"), f"{attempt['seconds']:.1f}" if attempt.get("seconds") is not None else "–",
                CHOSEN if chosen else "",
            ]))
        out.append((a, rows))
    return out


def _repair_note(a: dict) -> Optional[str]:
    return "recipe reused from an earlier build; no search" if a["repair"].get("reused") else None


def float_keepers(results: dict) -> dict[str, list[str]]:
    """Layer name -> the files (formats) whose recipe keeps it in float."""
    out: dict[str, list[str]] = {}
    for a in results.get("artifacts", []):
        for layer in (a.get("recipe") or {}).get("float_layers") or []:
            out.setdefault(layer, []).append(a["format"])
    return out


def sensitivity_rows(results: dict) -> list[list[str]]:
    layers = (results.get("sensitivity") or {}).get("layers") or []
    keepers = float_keepers(results)
    return [[str(i), r["layer"], sensitivity.figure(r), str(r.get("ops", "–")),
             ", ".join(keepers.get(r["layer"], []))] for i, r in enumerate(layers[:TOP_LAYERS], 1)]


def _sensitivity_intro(results: dict) -> str:
    s = results["sensitivity"]
    model = {"finetune": "fine-tuned"}.get(s.get("model", "finetune"), s.get("model"))
    return (f"Each layer's int8 output against its float output on {s.get('images', '?')} training images of the "
            f"{model} model, as RMSE over the layer's quantization scale (higher: int8 "
            f"hurts that layer more); the {min(TOP_LAYERS, len(s['layers']))} most sensitive of {len(s['layers'])}.")


ACCURACY_HEADING = "Accuracy against the Keras model (test split, paired)"
REPAIR_HEADING = "Repair (chosen on the validation split)"
REPAIR_INTRO = ("Each int8 file's recipe was chosen on the validation split; the test split above only gives the "
                "verdict, so the choice does not flatter it.")
SENSITIVITY_HEADING = "Int8 sensitivity per layer"


def markdown(results: dict) -> list[str]:
    """The three sections as markdown lines (none for a section whose fields are absent)."""
    lines: list[str] = []
    rows = paired_rows(results)
    if rows:
        lines += ["", f"## {ACCURACY_HEADING}", ""] + tables.markdown(PAIRED_COLUMNS, [cells for _, cells in rows])
        if methods_line(results):
            lines += ["", methods_line(results)]
        if warnings(results):
            lines += [""] + [f"- {w}" for w in warnings(results)]
    repairs = repair_tables(results)
    if repairs:
        lines += ["", f"## {REPAIR_HEADING}", "", REPAIR_INTRO]
        for a, attempts in repairs:
            lines += ["", f"### {a['format']}", ""]
            if _repair_note(a):
                lines += [_repair_note(a) + ".", ""]
            lines += tables.markdown(ATTEMPT_COLUMNS, [cells for _, cells in attempts])
    sens = sensitivity_rows(results)
    if sens:
        lines += ["", f"## {SENSITIVITY_HEADING}", "", _sensitivity_intro(results), ""]
        lines += tables.markdown(SENSITIVITY_COLUMNS, sens)
    return lines


def _html_table(cls: str, header, rows: list[tuple[str, list[str]]]) -> str:
    return tables.html(header, [cells for _, cells in rows], css=cls, row_classes=[row_cls for row_cls, _ in rows])


def html(results: dict, inline: dict[str, str]) -> list[str]:
    """The three sections as HTML; ``inline`` maps plot file names to their base64 PNG."""
    esc = _html.escape
    parts: list[str] = []
    rows = paired_rows(results)
    if rows:
        parts.append(f"<h2>{esc(ACCURACY_HEADING)}</h2>")
        parts.append(_html_table("paired", PAIRED_COLUMNS, rows))
        if methods_line(results):
            parts.append(f"<p>{esc(methods_line(results))}</p>")
        if warnings(results):
            parts.append("<ul class='warnings'>" + "".join(f"<li>{esc(w)}</li>" for w in warnings(results)) + "</ul>")
    repairs = repair_tables(results)
    if repairs:
        parts.append(f"<h2>{esc(REPAIR_HEADING)}</h2><p>{esc(REPAIR_INTRO)}</p>")
        for a, attempts in repairs:
            parts.append(f"<h3>{esc(a['format'])}</h3>")
            if _repair_note(a):
                parts.append(f"<p>{esc(_repair_note(a))}.</p>")
            parts.append(_html_table("attempts", ATTEMPT_COLUMNS,
                                     [("chosen" if chosen else "", cells) for chosen, cells in attempts]))
    sens = sensitivity_rows(results)
    if sens:
        parts.append(f"<h2>{esc(SENSITIVITY_HEADING)}</h2><p>{esc(_sensitivity_intro(results))}</p>")
        parts.append(_html_table("sensitivity", SENSITIVITY_COLUMNS, [("float" if c[4] else "", c) for c in sens]))
        if "sensitivity.png" in inline:
            parts.append("<img class='plot' alt='sensitivity.png' "
                         f"src='data:image/png;base64,{inline['sensitivity.png']}'>")
    return parts


CSS = ("tr.over td{background:#fde2e2}tr.unproven td{background:#fff4d6}tr.chosen td{background:#e4f4e4;"
       "font-weight:600}tr.float td{background:#fff0e0}table.attempts td:nth-child(2),table.attempts td:nth-child(4),"
       "table.sensitivity td:nth-child(2),table.sensitivity td:nth-child(5){text-align:left}")


def sensitivity_figure(results: dict):
    """Horizontal bars of the most int8-sensitive layers, float-kept ones highlighted; None without the data."""
    layers = ((results.get("sensitivity") or {}).get("layers") or [])[:TOP_LAYERS]
    if not layers:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on CI machines
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    keepers = float_keepers(results)
    names = [r["layer"] for r in layers]
    colours = ["tab:orange" if n in keepers else "tab:blue" for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.4))
    # A collapsed range's ratio (up to 1e39) would flatten every other bar: it is drawn hatched, at the
    # axis' end, and named in the legend.
    finite = [r["rmse_per_scale"] for r in layers if not sensitivity.collapsed(r)]
    cap = 1.25 * max(finite) if finite else 1.0
    widths = [cap if sensitivity.collapsed(r) else r["rmse_per_scale"] for r in layers]
    bars = ax.barh(range(len(names)), widths, color=colours)
    for bar, r in zip(bars, layers):
        if sensitivity.collapsed(r):
            bar.set_hatch("//")
            bar.set_edgecolor("black")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()  # most sensitive on top, as in the table
    ax.set_xlabel("int8 output RMSE / quantization scale")
    ax.set_title(f"Int8 sensitivity per layer (top {len(names)})")
    handles = [Patch(color="tab:blue", label="int8 in every file")]
    if keepers:
        handles.append(Patch(color="tab:orange", label="kept in float by a mixed file"))
    if len(finite) < len(layers):
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//",
                             label="range collapsed in calibration (off the scale)"))
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return fig
