"""What a stage's result depends on, as its stamp records it, and why a stamp no longer matches.

A stamp (``build/<name>/<stage>/stamp.json``) holds the sha256 of the stage's
dependency files, of the config sections it reads, of every repo module in the
stage's import closure, of any data outside the build folder, and of every file it
wrote. The code part is derived, not listed: :func:`import_closure` reads the
stage module's imports, those inside functions too, and follows them through
the repo's packages, so a change to any module a stage can run re-runs that stage
and no other.

``pipeline.config`` is the one module the walk does not enter: every stage
imports it for the ``Config`` type, and what it decides reaches a stage only as
the resolved values of the sections the stage reads, which the stamp already
hashes (defaults included). Following it would tie every stage to the format
registry it validates ``export.formats`` against.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from pathlib import Path
from typing import Optional

from core import layout
from core.io import sha256_file
from pipeline.config import Config
from pipeline.stages import Stage

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "exporters", "benchmarks", "pipeline")
# Modules whose effect a stamp already holds another way (see the module docstring).
BOUNDARY = frozenset({"pipeline.config"})


def module_file(name: str) -> Optional[Path]:
    """The source file of repo module ``name``, or None when it is not one."""
    if name.split(".")[0] not in PACKAGES:
        return None
    base = REPO.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(name: str, path: Path) -> set[str]:
    """Every module name an import statement in ``path`` may load, at any depth of the code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            # `from package import module` loads the module; `from module import name` only the module.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _with_parents(name: str) -> list[str]:
    """``a.b.c`` and the packages Python runs first to import it: ``a``, ``a.b``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@functools.lru_cache(maxsize=None)
def _direct(name: str, mtime_ns: int) -> frozenset[str]:
    path = module_file(name)
    return frozenset(m for imported in _imported_names(name, path) for m in _with_parents(imported)
                     if module_file(m) is not None)


def import_closure(module: str) -> list[str]:
    """The repo modules that importing (and running) ``module`` can load, itself included, sorted."""
    seen: set[str] = set()
    todo = _with_parents(module)
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        if name in BOUNDARY:
            continue
        todo.extend(_direct(name, module_file(name).stat().st_mtime_ns) - seen)
    return sorted(seen - BOUNDARY)


def code_digests(module: str) -> dict[str, str]:
    """sha256 of each module in ``module``'s import closure, by module name."""
    return {name: hashlib.sha256(module_file(name).read_bytes()).hexdigest() for name in import_closure(module)}


def stage_inputs(stage: Stage, cfg: Config, root: Path) -> dict:
    """What a stage's result depends on, as its stamp records it: dependency files, config, code, source data."""
    deps = {}
    for rel in stage.dependencies(cfg):
        p = root / rel
        deps[rel] = sha256_file(p) if p.exists() else None
    params = {section: cfg.section_hash(section, ignore=stage.ignores) for section in stage.params}
    if stage.derived_params:
        params.update(stage.derived_params(cfg))
    return {
        "deps": deps,
        "params": params,
        "code": code_digests(stage.module),
        "inputs": stage.external_inputs(cfg) if stage.external_inputs else None,
    }


def stamp_path(root: Path, stage: Stage) -> Path:
    return Path(root) / layout.stamp(stage.name)


def input_change(recorded: dict, expected: dict) -> Optional[str]:
    """Why ``recorded`` (a stamp, a checkpoint) was made from other inputs than ``expected``; None if it was not."""
    for rel, digest in expected["deps"].items():
        if digest is None:
            return f"input {rel} missing"
        if recorded.get("deps", {}).get(rel) != digest:
            return f"input {rel} changed"
    if recorded.get("params") != expected["params"]:
        old = recorded.get("params") if isinstance(recorded.get("params"), dict) else {}
        changed = [s for s in expected["params"] if old.get(s) != expected["params"][s]]
        return f"config section(s) {', '.join(changed)} changed"
    if recorded.get("code") != expected["code"]:
        old = recorded.get("code") if isinstance(recorded.get("code"), dict) else {}
        changed = sorted(m for m in set(old) | set(expected["code"]) if old.get(m) != expected["code"].get(m))
        shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
        return f"stage code changed ({shown})" if old else "stage code changed"
    if recorded.get("inputs") != expected["inputs"]:
        return "source data changed"
    return None


def why_stale(stage: Stage, cfg: Config, root: Path) -> Optional[str]:
    """None when the stage is up to date, else a short reason."""
    path = stamp_path(root, stage)
    if not path.exists():
        if path.parent.is_dir() and any(path.parent.iterdir()):
            # Its folder has files but no stamp: a run began it and failed or was stopped.
            return "no completed run: the last one failed or was stopped"
        return "never run"
    try:
        stamp = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return "stamp unreadable"
    changed = input_change(stamp, stage_inputs(stage, cfg, root))
    if changed:
        return changed
    for rel, digest in stamp.get("outs", {}).items():
        out = root / rel
        if not out.exists():
            return f"output {rel} missing"
        if sha256_file(out) != digest:
            return f"output {rel} modified"
    return None
