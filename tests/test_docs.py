"""The docs stay true: the config reference is the schema's, README is short and its links resolve."""

from __future__ import annotations

import re

from pydantic import BaseModel

from pipeline import docs
from pipeline.config import Config
from tests.conftest import REPO

README_LIMIT = 12 * 1024
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _config_keys(model: type[BaseModel] = Config, prefix: str = ""):
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _config_keys(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_config_reference_is_generated_from_the_schema():
    page = docs.CONFIG_DOC.read_text(encoding="utf-8")
    assert page == docs.render(), (
        f"docs/config.md differs from pipeline/config.py ({'; '.join(docs.stale(page, docs.render()))}): run make docs")


def test_config_reference_lists_every_key_with_its_description():
    page = docs.CONFIG_DOC.read_text(encoding="utf-8")
    keys = list(_config_keys())
    assert len(keys) > 50
    missing = [k for k in keys if f"| `{k}` |" not in page]
    assert not missing, f"docs/config.md lacks {missing}"

    def undescribed(model: type[BaseModel] = Config, prefix: str = ""):
        for name, field in model.model_fields.items():
            if not field.description:
                yield f"{prefix}{name}"
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                yield from undescribed(field.annotation, f"{prefix}{name}.")

    assert not list(undescribed()), "every config field has a Field(description=...)"


def test_config_reference_rows_show_type_default_and_allowed_values():
    page = docs.render()
    assert "| `data.cache` | one of `auto`, `memory`, `disk`, `none` | `auto` |" in page
    assert "| `data.image_size` | int, ≥ 32, ≤ 1024 | `224` |" in page
    assert "| `name` | str | (required) |" in page
    # Left out, the data section is the digits, not a folder.
    assert "A file without a `data` section gets `data.source: digits`" in page


def test_check_names_the_stale_key(tmp_path, capsys):
    page = tmp_path / "config.md"
    page.write_text(docs.render(), encoding="utf-8")
    assert docs.main(["--check", "--out", str(page)]) == 0

    stale = docs.render().replace("| `train.patience` | int, ≥ 1 | `3` |", "| `train.patience` | int, ≥ 1 | `4` |")
    stale = "\n".join(line for line in stale.splitlines() if not line.startswith("| `export.author`"))
    page.write_text(stale, encoding="utf-8")
    assert docs.main(["--check", "--out", str(page)]) == 1
    err = capsys.readouterr().err
    assert "train.patience: row differs" in err and "export.author: missing" in err
    assert page.read_text(encoding="utf-8") == stale, "--check writes nothing"

    missing = tmp_path / "none.md"
    assert docs.main(["--check", "--out", str(missing)]) == 1 and not missing.exists()


def test_readme_is_short():
    size = (REPO / "README.md").stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes; the limit is {README_LIMIT}"


def test_readme_links_every_docs_page_and_each_link_resolves():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    local = [link.split("#", 1)[0] for link in LINK.findall(readme) if "://" not in link and not link.startswith("#")]
    broken = [link for link in local if not (REPO / link).is_file()]
    assert not broken, f"README links to files that do not exist: {broken}"
    pages = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))
    assert pages, "docs/ has pages"
    unlinked = [p for p in pages if p not in local]
    assert not unlinked, f"README does not link {unlinked}"


def _anchors(page) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+ (.+)$", page.read_text(encoding="utf-8"), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def test_docs_links_and_anchors_resolve():
    broken = []
    for page in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for link in LINK.findall(text):
            if "://" in link:
                continue
            target, _, anchor = link.partition("#")
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.name}: {link}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.name}: {link} (no such heading)")
    assert not broken, f"links that do not resolve: {broken}"


def test_benchmarks_page_targets_table_matches_targets_yaml():
    import yaml

    targets = yaml.safe_load((REPO / "configs" / "targets.yaml").read_text(encoding="utf-8"))["targets"]
    page = (REPO / "docs" / "benchmarks.md").read_text(encoding="utf-8")
    rows = {line.split("`")[1]: line for line in page.splitlines() if line.startswith("| `")}
    assert set(targets) <= set(rows), f"docs/benchmarks.md lacks profiles {set(targets) - set(rows)}"
    for name, profile in targets.items():
        row, budgets = rows[name], profile.get("budgets", {})
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[2].split()[0] == str(profile["threads"]), name
        expected = ([f"p90 ≤ {budgets['p90_ms']:g} ms"] if "p90_ms" in budgets else []) + \
                   ([f"≤ {budgets['size_mb']:g} MiB"] if "size_mb" in budgets else []) + \
                   ([f"top-1 drop ≤ {budgets['accuracy_drop_pp']:g} pp"] if "accuracy_drop_pp" in budgets else [])
        assert cells[4] == ", ".join(expected), f"{name}: {cells[4]!r} vs configs/targets.yaml {budgets}"
        assert profile["regression"] == {"accuracy_pp": 1.0, "latency_pct": 10}, "the page states the shipped regression"


def test_backbone_page_is_the_registrys():
    page = docs.BACKBONES_DOC.read_text(encoding="utf-8")
    assert page == docs.render_backbones(), "docs/backbones.md differs from pipeline/backbones.py: run make docs"
    assert all(f"| `{name}` |" in page for name in docs.BACKBONES)


def test_matrix_page_is_rendered_from_its_json_and_has_every_backbone():
    from pipeline import matrix

    page = matrix.MATRIX_PAGE.read_text(encoding="utf-8")
    assert page == matrix.render(matrix.load(matrix.MATRIX_JSON)), "docs/matrix.md differs: make matrix MATRIX_FLAGS=--render"
    rows = matrix.load(matrix.MATRIX_JSON)["backbones"]
    assert set(rows) == set(docs.BACKBONES), f"docs/matrix.json lacks {sorted(set(docs.BACKBONES) - set(rows))}"
