"""The report's "where it differs" section: for every lossy file, Keras's prediction against the file's.

A confusion matrix of the best file says where the model is wrong; it cannot say where
quantization changed the answer. This section does: per lossy file (every precision but
fp32), the test images whose top-1 differs from the Keras model's, by (Keras class, file
class), from ``accuracy.vs_keras`` of the bench rows (one target per file: the first that
ran it). A table lists the most frequent flips; the figure draws each file's matrix over
the classes involved, agreements on the diagonal in grey.
"""

from __future__ import annotations

import html as _html
from typing import Optional

from benchmarks import tables

HEADING = "Where each lossy file differs from Keras (test split)"
MOST = 5  # flips named per file in the table
MAX_CLASSES = 20  # classes drawn per matrix: those with the most flips


def lossy_rows(results: dict) -> list[dict]:
    """One bench row per lossy file of the build (the first target that measured it), in row order."""
    seen, out = set(), []
    for row in results["benchmark"]["rows"]:
        acc = row.get("accuracy") or {}
        if row["origin"] != "build" or row["precision"] == "fp32" or "vs_keras" not in acc:
            continue
        if row["artifact"] not in seen:
            seen.add(row["artifact"])
            out.append(row)
    return out


def _most(row: dict, classes: list[str]) -> str:
    pairs = row["accuracy"]["vs_keras"]["pairs"]
    named = [f"{classes[a]} → {classes[b]} ({n})" for a, b, n in pairs[:MOST]]
    more = sum(n for _, _, n in pairs[MOST:])
    return ", ".join(named) + (f", {more} more" if more else "") if named else "none"


def table_rows(results: dict) -> list[list[str]]:
    classes = results["dataset"]["classes"]
    out = []
    for row in lossy_rows(results):
        v = row["accuracy"]["vs_keras"]
        flipped = v["images"] - v["agreed"]
        out.append([row["artifact"], row["target"], f"{flipped} of {v['images']} ({100 * flipped / v['images']:.1f}%)",
                    _most(row, classes)])
    return out


COLUMNS = ("file", "target", "images flipped", "most frequent flips: Keras class → file class (images)")
INTRO = ("Test images on which the file's top-1 is not the Keras model's, whatever the label; "
         "the figure shows each file's flips by class (rows: Keras's class, columns: the file's).")


def markdown(results: dict) -> list[str]:
    rows = table_rows(results)
    if not rows:
        return []
    return ["", f"## {HEADING}", "", INTRO, ""] + tables.markdown(COLUMNS, rows)


def html(results: dict, inline: dict[str, str]) -> list[str]:
    rows = table_rows(results)
    if not rows:
        return []
    esc = _html.escape
    out = [f"<h2>{esc(HEADING)}</h2><p>{esc(INTRO)}</p>", tables.html(COLUMNS, rows, css="flips")]
    if "flips.png" in inline:
        out.append(f"<img class='plot' alt='flips.png' src='data:image/png;base64,{inline['flips.png']}'>")
    return out


def _classes_drawn(pairs: list[list[int]]) -> list[int]:
    weight: dict[int, int] = {}
    for a, b, n in pairs:
        weight[a] = weight.get(a, 0) + n
        weight[b] = weight.get(b, 0) + n
    return sorted(sorted(weight, key=lambda c: -weight[c])[:MAX_CLASSES])


def figure(results: dict) -> Optional[object]:
    """Each lossy file's flip matrix side by side; None when there is none."""
    import matplotlib.pyplot as plt
    import numpy as np

    from benchmarks.plotting import annotate_cells

    rows = lossy_rows(results)
    if not rows:
        return None
    classes = results["dataset"]["classes"]
    ncols = min(3, len(rows))
    nrows = -(-len(rows) // ncols)
    span = max(len(_classes_drawn(r["accuracy"]["vs_keras"]["pairs"])) for r in rows)
    side = min(max(2.6, 0.42 * span + 1.8), 7.0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(side * ncols, side * nrows), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.set_visible(False)
    for ax, row in zip(axes.flat, rows):
        v = row["accuracy"]["vs_keras"]
        drawn = _classes_drawn(v["pairs"])
        flipped = v["images"] - v["agreed"]
        ax.set_title(f"{row['artifact']}: {flipped} of {v['images']} flipped", fontsize=9)
        if not drawn:
            ax.text(0.5, 0.5, "no flips", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        at = {c: i for i, c in enumerate(drawn)}
        grid = np.zeros((len(drawn), len(drawn)), dtype=int)
        for a, b, n in v["pairs"]:
            if a in at and b in at:
                grid[at[a], at[b]] = n
        masked = np.ma.masked_where(np.eye(len(drawn), dtype=bool), grid)
        ax.imshow(np.eye(len(drawn)), cmap="Greys", vmin=0, vmax=6)  # the diagonal: agreement, not drawn to scale
        image = ax.imshow(masked, cmap="Reds", vmin=0, vmax=max(1, int(grid.max())))
        annotate_cells(ax, image, grid, skip_diagonal=True)
        names = [classes[c] for c in drawn]
        ax.set_xticks(range(len(drawn)), names, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(drawn)), names, fontsize=7)
        ax.set_xlabel("file's class", fontsize=8)
        ax.set_ylabel("Keras's class", fontsize=8)
    return fig
