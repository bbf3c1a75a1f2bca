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


def test_readme_config_table_lists_every_key():
    from pydantic import BaseModel

    from pipeline.config import Config

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    table = readme[readme.index("| key | default | meaning |"):].split("\n\n", 1)[0]

    def keys(model, prefix=""):
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                yield from keys(field.annotation, f"{prefix}{name}.")
            else:
                yield prefix, name

    # A key is listed in full (`data.seed`) or after its section's first key on the same row (`, .max_runs`).
    missing = [f"{p}{k}" for p, k in keys(Config) if f"`{p}{k}`" not in table and f"`.{k}`" not in table]
    assert not missing, f"README config table lacks {missing}"
