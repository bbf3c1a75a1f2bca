"""The README's format table is the registry's table."""

from __future__ import annotations

import exporters
from tests.conftest import REPO


def test_readme_format_table_matches_registry():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    rows = [line for line in readme.splitlines() if line.startswith("| `") and "| ≥ " in line]
    expected = [
        f"| `{r['format']}` | {r['runtime']} | {r['precision']} | `{r['file']}` | ≥ {r['min_top1_agreement']} "
        f"| ≤ {r['max_abs_diff']:g} | {r['description']} |"
        for r in exporters.table()
    ]
    assert rows == expected


def test_readme_starts_with_the_two_commands():
    head = (REPO / "README.md").read_text(encoding="utf-8")[:1500]
    assert "make export" in head and "make test" in head
