"""The one way the report and the figures page write a table, in markdown or in HTML.

Cells are text. A markdown cell has its whitespace collapsed and ``|`` escaped, so a
budget failure or a resizer's call written into it cannot split its row; an HTML cell
is escaped.
"""

from __future__ import annotations

import html as _html
from typing import Any, Optional, Sequence


def cell(text: Any) -> str:
    """``text`` as one markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def markdown(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A markdown table's lines: the header, its rule, one line per row."""
    return ["| " + " | ".join(cell(c) for c in header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def html(header: Sequence[str], rows: Sequence[Sequence[Any]], css: str = "",
         row_classes: Optional[Sequence[str]] = None, table_id: str = "") -> str:
    """An HTML table; ``row_classes`` gives each row's class ("" for none), e.g. to shade failures."""
    esc = _html.escape
    attrs = (f" id='{esc(table_id)}'" if table_id else "") + (f" class='{esc(css)}'" if css else "")
    classes = row_classes if row_classes is not None else [""] * len(rows)
    out = [f"<table{attrs}><tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in header) + "</tr>"]
    out += [(f"<tr class='{esc(cls)}'>" if cls else "<tr>") + "".join(f"<td>{esc(str(c))}</td>" for c in cells)
            + "</tr>" for cls, cells in zip(classes, rows)]
    return "\n".join(out + ["</table>"])
