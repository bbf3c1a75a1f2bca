"""How a row of the per-layer int8 sensitivity ranking (``exporters.sensitivity``) reads.

Here, apart from the ranking, so that the log and the report can name a row without
importing the converters that measure it.
"""

from __future__ import annotations

# A float32 activation with a real spread has a step far above this; below it the range is ~0.
COLLAPSED_SCALE = 1e-12


def collapsed(row: dict) -> bool:
    """Whether this ranking row's calibrated range collapsed (why it matters: ``exporters.sensitivity``)."""
    return row.get("scale") is not None and row["scale"] < COLLAPSED_SCALE


def figure(row: dict) -> str:
    """The row's sensitivity as people read it: the ratio, or the collapsed range it stands for."""
    if collapsed(row):
        return f"range collapsed (int8 step {row['scale']:.0e})"
    return f"{row['rmse_per_scale']:.2f}"
