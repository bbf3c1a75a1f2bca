"""The report's resizer section, read from ``benchmark.resizers`` of ``bench/results.json``.

One table of the resizers (library and version, the call, how many photos' pixels
differ from the contract's), then one row per file and resizer: test top-1, its
change against the same file on the contract's pixels (paired 95% interval), and
top-1 agreement with the Keras model on the contract's pixels. Left out when the
results have no such section (results written before it existed); a build it
does not apply to (the digits) gets one sentence saying why.

``markdown(results)`` gives the markdown lines, ``html(results)`` the HTML.
"""

from __future__ import annotations

import html as _html
from typing import Optional

from benchmarks import tables
from benchmarks.report_accuracy import agreement_text, delta_text

HEADING = "The app's resize: each file on the test photos resized as apps do"
RESIZER_COLUMNS = ("resizer", "library", "call", "framing", "photos whose pixels differ", "mean |Δ pixel|")
ROW_COLUMNS = ("file", "resizer", "images", "top-1", "Δ top-1 pp vs contract resize [95%]", "top-1 changed",
               "agreement with Keras [95%]")


def _section(results: dict) -> Optional[dict]:
    return (results.get("benchmark") or {}).get("resizers")


def intro(section: dict) -> list[str]:
    """The sentences above the tables: what the contract's resizer is, and what the photos allow."""
    contract = section["contract"]
    photos = section["photos"]
    size = photos["input_size"]
    out = [f"Every file was validated on the contract's resize, `{contract['name']}` ({contract['library']}: "
           f"`{contract['call']}`, {contract['framing']}). Below, each file runs in its own runtime on the "
           f"{photos['images']} original test photos resized each other way; agreement is with the Keras model on "
           "the contract's pixels, Δ against the same file on them."]
    if photos["at_input_size"] == photos["images"]:
        out.append(f"Every test photo is already {size}×{size}, the model's input: every resizer returns the "
                   "contract's pixels, so this build cannot show a resize effect. Measure it on photos larger than "
                   "the input (or a smaller data.image_size).")
    else:
        side = photos["short_side"]
        out.append(f"Test photos: {photos['square']} of {photos['images']} square, {photos['at_input_size']} already "
                   f"{size}×{size}; short side {side['min']}–{side['max']} px (median {side['median']:g}).")
    if section.get("reproduces_data_stage") is False:
        out.append(f"`{contract['name']}` here does not reproduce the data stage's pixels (another {contract['library']}"
                   " version than the build's?): its rows differ from the export stage's figures.")
    return out


def _resizer_cells(r: dict) -> list[str]:
    return [r["name"], r["library"], r["call"], r["framing"], str(r["photos_differing"]),
            f"{r['mean_abs_pixel_change']:.2f}"]


def _row_cells(r: dict) -> list[str]:
    return [r["file"], r["resizer"], str(r["images"]), f"{r['top1']:.4f}", delta_text(r["delta_pp"], r["delta_interval_pp"]),
            str(r["changed"]), agreement_text(r["agreement_with_keras"], r["agreement_with_keras_interval"])]


def _ordered(rows: list[dict]) -> list[dict]:
    """Grouped by file, the Keras model last, resizers in the configured order."""
    files = list(dict.fromkeys(r["artifact"] for r in rows))
    files = [f for f in files if f != "keras"] + [f for f in files if f == "keras"]
    return sorted(rows, key=lambda r: files.index(r["artifact"]))


def markdown(results: dict) -> list[str]:
    section = _section(results)
    if section is None:
        return []
    lines = ["", f"## {HEADING}", ""]
    if not section["applies"]:
        return lines + [f"Not measured: {section['reason']}."]
    lines += [" ".join(intro(section)), ""] + tables.markdown(RESIZER_COLUMNS, [_resizer_cells(r) for r in section["resizers"]])
    lines += [""] + tables.markdown(ROW_COLUMNS, [_row_cells(r) for r in _ordered(section["rows"])])
    return lines


def html(results: dict) -> list[str]:
    section = _section(results)
    if section is None:
        return []
    esc = _html.escape
    parts = [f"<h2>{esc(HEADING)}</h2>"]
    if not section["applies"]:
        return parts + [f"<p>Not measured: {esc(section['reason'])}.</p>"]
    parts.append("<p>" + "<br>".join(esc(s) for s in intro(section)) + "</p>")
    parts.append(tables.html(RESIZER_COLUMNS, [_resizer_cells(r) for r in section["resizers"]], css="resizers"))
    parts.append(tables.html(ROW_COLUMNS, [_row_cells(r) for r in _ordered(section["rows"])], css="resizer-rows"))
    return parts
