"""Small pieces the report's plots share: readable cell numbers, log-axis ticks, and a check that labels do not collide."""

from __future__ import annotations

import math


def annotate_cells(ax, image, values, skip_diagonal: bool = False, fontsize: int = 8) -> None:
    """Write each cell's value, white on dark cells and black on light ones (by the colour's luminance)."""
    for i, line in enumerate(values):
        for j, v in enumerate(line):
            if skip_diagonal and i == j:
                continue
            r, g, b, _ = image.cmap(image.norm(v))
            luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b  # sRGB weights (ITU-R BT.709)
            ax.text(j, i, str(v), ha="center", va="center", fontsize=fontsize,
                    color="white" if luminance < 0.5 else "black")


def log_ticks(low: float, high: float) -> list[float]:
    """Tick values for a log axis from ``low`` to ``high``: 1-2-5 steps, or every digit when that gives fewer than 3.

    Matplotlib's default labels every minor tick of an axis spanning less than a decade
    ("3×10⁻¹4×10⁻¹"), and the labels run into each other.
    """
    if not (low > 0 and high > low):
        return [low] if low > 0 else []
    for mantissas in ((1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1)
                 for m in mantissas]
        inside = [t for t in ticks if low <= t <= high]
        if len(inside) >= 3:
            return inside
    if len(inside) >= 2:
        return inside
    # Narrower than two digits apart: the ends and the middle, to two significant figures.
    picks = {float(f"{x:.2g}") for x in (low, math.sqrt(low * high), high)}
    return sorted(t for t in picks if low <= t <= high) or [float(f"{math.sqrt(low * high):.2g}")]


def set_log_x(ax, low: float, high: float) -> None:
    """A log x axis with ticks from ``log_ticks``, labelled as plain numbers (``%g``), no minor labels."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    ax.set_xscale("log")
    ax.set_xlim(low, high)
    ax.xaxis.set_major_locator(FixedLocator(log_ticks(low, high)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def tick_label_overlaps(fig) -> list[tuple[str, str]]:
    """Pairs of tick labels of one axis whose drawn boxes overlap (after a draw), as their texts."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    clashes = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for axis in (ax.xaxis, ax.yaxis):
            labels = [t for t in axis.get_ticklabels(which="both") if t.get_visible() and t.get_text()]
            for i, a in enumerate(labels):
                for b in labels[i + 1:]:
                    if _collide(a, b, renderer, fig.dpi):
                        clashes.append((a.get_text(), b.get_text()))
    return clashes


def _collide(a, b, renderer, dpi: float) -> bool:
    angle = math.radians(a.get_rotation() % 180)
    if angle == 0 or angle != math.radians(b.get_rotation() % 180):
        box_a, box_b = a.get_window_extent(renderer), b.get_window_extent(renderer)
        # Strict: boxes that only touch do not collide.
        return (box_a.x0 < box_b.x1 and box_b.x0 < box_a.x1 and box_a.y0 < box_b.y1 and box_b.y0 < box_a.y1)
    # Two labels turned by the same angle are parallel strips (their axis-aligned boxes overlap long
    # before the glyphs do): they collide when the strips are closer than a line of text.
    (xa, ya), (xb, yb) = (a.get_transform().transform(a.get_position()), b.get_transform().transform(b.get_position()))
    across = abs((xb - xa) * math.sin(angle) - (yb - ya) * math.cos(angle))
    return across < 0.9 * max(a.get_fontsize(), b.get_fontsize()) * dpi / 72
