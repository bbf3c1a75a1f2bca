"""The files a benchmark runs: this build's published files, reference files the config names, and the Keras model.

Each is one dict (``key``, ``origin`` build/reference/keras, ``runtime``, ``path``, size facts) that
``benchmarks.run`` times and scores and ``benchmarks.resizers`` runs on resized photos.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Optional

from benchmarks.inputs import input_size
from core import layout
from core.errors import ConfigError
from core.io import gzip_size
from exporters.registry import FILE_KINDS, is_model_file, kind_of_file

KERAS_KEY = "keras"


def reference_files(patterns: tuple[str, ...]) -> list[Path]:
    """Files named (or globbed) by ``benchmark.reference_models``; a pattern that matches nothing is an error."""
    out: list[Path] = []
    for pattern in patterns:
        matches = sorted(Path(p) for p in glob.glob(pattern)) if glob.has_magic(pattern) else [Path(pattern)]
        matches = [p for p in matches if p.is_file()]
        if not matches:
            raise ConfigError(f"benchmark.reference_models: '{pattern}' matches no file; fix the path or remove it.")
        for path in matches:
            if not (is_model_file(path) and kind_of_file(path).ships):
                shipped = " or ".join(k.extension for k in FILE_KINDS if k.ships)
                raise ConfigError(f"benchmark.reference_models: '{path}' is not a {shipped} file.")
            if any(p.name == path.name for p in out):
                raise ConfigError(f"benchmark.reference_models: two files are named {path.name}; rename one "
                                  "(rows are keyed by file name).")
            out.append(path)
    return out


def _readable(path: Path, read):
    """Parse a reference file in the parent; a broken one is a config problem, named, not a traceback."""
    try:
        return read(path)
    except Exception as exc:
        raise ConfigError(f"benchmark.reference_models: {path} cannot be read as a model file "
                          f"({exc.__class__.__name__}); replace or remove it.") from None


def _file_facts(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "gzip_bytes": gzip_size(path)}


def _tflite_integer(path: Path) -> Optional[bool]:
    from exporters import inspect

    return bool(inspect.tflite_summary(path)["fully_integer"])


def candidates(root: Path, export_results: dict, references: list[Path]) -> list[dict]:
    """Published files of this build, then reference files; the Keras model last."""
    out = []
    for art in export_results["artifacts"]:
        if art["status"] == "failed" or art["format"] == "keras":
            continue
        path = root / layout.ARTIFACTS / art["file"]
        out.append({"key": art["format"], "name": art["name"], "origin": "build", "format": art["format"],
                    "runtime": art["runtime"], "precision": art["precision"], "path": path,
                    "file": art["file"], "bytes": art["bytes"], "gzip_bytes": art["gzip_bytes"],
                    "fully_integer": art.get("fully_integer"), "sparsity": art.get("sparsity")})
    for path in references:
        runtime = kind_of_file(path).runtime
        out.append({"key": f"reference:{path.name}", "name": path.stem, "origin": "reference", "format": None,
                    "runtime": runtime, "precision": None, "path": path, "file": str(path),
                    "fully_integer": _readable(path, _tflite_integer) if runtime == "litert" else None,
                    "input_size": _readable(path, input_size),
                    "sparsity": None, **_file_facts(path)})
    # The Keras model as shipped (the `keras` export, no optimizer state) when it was exported.
    shipped = [a for a in export_results["artifacts"] if a["format"] == "keras" and a["status"] != "failed"]
    keras_path = root / layout.ARTIFACTS / shipped[0]["file"] if shipped else root / layout.MODEL
    out.append({"key": KERAS_KEY, "name": f"{export_results['name']}-keras", "origin": "keras", "format": "keras",
                "runtime": "keras", "precision": "fp32", "path": keras_path, "file": str(keras_path.relative_to(root)),
                "fully_integer": False, "sparsity": None, **_file_facts(keras_path)})
    return out
