"""The README's format table is the registry's table."""

from __future__ import annotations

from exporters import registry
from tests.conftest import REPO


def test_readme_format_table_matches_registry():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("| format | runtime | precision | file | validation budget | description |")
    table = readme[start:].split("\n\n", 1)[0]
    rows = table.splitlines()[2:]
    expected = [
        f"| `{r['format']}` | {r['runtime']} | {r['precision']} | `{r['file']}` | {r['budget']} | {r['description']} |"
        for r in registry.table()
    ]
    assert rows == expected


def test_readme_starts_with_the_two_commands():
    head = (REPO / "README.md").read_text(encoding="utf-8")[:1500]
    assert "make export" in head and "make test" in head

