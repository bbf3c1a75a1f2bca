"""``artifacts/manifest.json``: what each published file is, and everything needed to rebuild it.

Written by the export stage beside the files it describes; checked by
``python -m pipeline verify DIR`` (``make verify``), which recomputes every
checksum, validates the manifest against ``manifest.schema.json`` and reads the
metadata back out of every ``.tflite`` and ``.onnx`` file.

The manifest holds no time stamp, so two exports of the same trained model give
the same manifest, byte for byte, as they give the same files.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core import layout
from core.contract import INPUT_NAME
from core.io import gzip_size, sha256_file

MANIFEST = Path(layout.MANIFEST).name
SCHEMA_FILE = Path(__file__).with_name("manifest.schema.json")
MANIFEST_VERSION = 2  # 2: validation carries the interval, McNemar p and verdict; repaired files their recipe
FINGERPRINT_RULE = "sha256 over each file's relative path, a NUL byte and the sha256 of its bytes, in listed order"


class ManifestError(ValueError):
    """The manifest is missing, unreadable or not valid against its schema."""


def schema() -> dict:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def check_schema(manifest: dict, where: str = MANIFEST) -> None:
    """Raise :class:`ManifestError` naming the first place ``manifest`` breaks the schema."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        at = "/".join(str(p) for p in first.absolute_path) or "(top level)"
        raise ManifestError(f"{where} does not match {SCHEMA_FILE.name} at {at}: {first.message}")


# ---------------------------------------------------------------------------------------------
# Build facts


def git_state(directory: Path) -> dict:
    """The pipeline's git commit and whether its tracked files had uncommitted changes (null outside git)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        status = git("status", "--porcelain", "--untracked-files=no")
        return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}


def config_facts(cfg) -> dict:
    """The resolved config and its sha256, without ``build_dir``: where a build is made is not what it is made of."""
    config = cfg.model_dump(mode="json")
    config.pop("build_dir", None)
    from pipeline.config import sha256_json

    return {"config_hash": sha256_json(config), "config": config}


def files_fingerprint(root: Path, files: list[str]) -> str:
    from pipeline.data import fingerprint_files

    return fingerprint_files(Path(root), tuple(files))


def dataset_fingerprint(cfg, split: dict, data_files: dict[str, Path]) -> dict:
    """The images the build used (every split) by name and contents, and the decoded arrays it trained on."""
    decoded = {name: sha256_file(path) for name, path in data_files.items()}
    if cfg.data.source == "digits":
        import sklearn
        from sklearn.datasets import load_digits

        digits = load_digits()
        digest = hashlib.sha256(np.ascontiguousarray(digits.data).tobytes()
                                + np.ascontiguousarray(digits.target).tobytes()).hexdigest()
        return {"source": "digits", "path": None, "origin": f"scikit-learn {sklearn.__version__} load_digits()",
                "files": int(len(digits.target)), "rule": "sha256 of the data array's bytes, then the target array's",
                "sha256": digest, "decoded_sha256": decoded}
    files = [rel for name in ("train", "val", "test") for rel in split["files"][name]]
    return {"source": "folder", "path": cfg.data.path, "origin": None, "files": len(files),
            "rule": FINGERPRINT_RULE + " (train, then val, then test)",
            "sha256": files_fingerprint(Path(cfg.data.path), files), "decoded_sha256": decoded}


def calibration_fingerprint(images: np.ndarray, files: list[str], seed: int) -> dict:
    """Which training images the int8 exporters calibrated on, and their decoded pixels."""
    names = hashlib.sha256("".join(f"{f}\n" for f in files).encode("utf-8")).hexdigest()
    pixels = hashlib.sha256(np.ascontiguousarray(images.astype(np.uint8)).tobytes()).hexdigest()
    return {"samples": int(len(images)), "seed": seed, "files_sha256": names, "pixels_sha256": pixels,
            "rule": "files_sha256: sha256 of the file names, one a line; pixels_sha256: of the decoded uint8 "
                    "images in that order"}


# ---------------------------------------------------------------------------------------------
# Per file


def _tensor_spec(read: dict) -> dict:
    return {key: read.get(key) for key in ("tensor", "dtype", "shape", "quantization")}


def artifact_entry(path: Path, result: dict, contract: dict, delegates: dict | None, classes: int) -> dict:
    """The manifest entry of one published file, from its bytes, its metadata and its validation."""
    from exporters import metadata
    from exporters.registry import kind_of_file

    kind = kind_of_file(path)
    validation = result["validation"]
    entry = {
        "file": path.name,
        "format": result["format"],
        "runtime": result["runtime"],
        "precision": result["precision"],
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "gzip_bytes": gzip_size(path),
        "validation": {
            "status": result["status"], "images": validation["images"], "top1": validation["top1"],
            "reference_top1": validation["reference_top1"], "delta_pp": result["accuracy"]["delta_pp"],
            "top1_agreement": validation["top1_agreement"], "max_abs_diff": validation["max_abs_diff"],
            "delta_interval_pp": validation["paired"]["delta_interval_pp"],
            "mcnemar_p": validation["paired"]["mcnemar_p"], "verdict": result["verdict"],
        },
    }
    if result.get("recipe") is not None:
        # How it was calibrated, and which layers stay float (chosen on the validation split).
        # (Whether a rebuild reused it is in results.json: the manifest is the same for the same files.)
        entry["recipe"] = {**result["recipe"], "chosen_on": "validation split"}
    if kind.metadata is not None:
        read = metadata.read_metadata(path)
        inp = read["input"]
        entry["input"] = {"name": inp.get("name"), **_tensor_spec(inp)}
        entry["output"] = {"name": read["output"].get("name"), **_tensor_spec(read["output"])}
        entry["preprocessing"] = {
            **contract,
            "input_dtype": inp["dtype"],
            # What a caller does to an RGB pixel before feeding it: (x - mean) / std, then, for an
            # integer input, quantize with the input's scale and zero point.
            "caller_normalization": inp["normalization"],
            "input_value_range": inp["value_range"],
        }
        entry["metadata"] = {"standard": kind.metadata, "name": read["name"], "version": read["version"],
                             "labels": len(read["labels"]), "labels_sha256": _labels_sha256(read["labels"]),
                             "outputs_bit_identical": result["metadata"]["outputs_bit_identical"]}
    else:  # the Keras reference: labels and contract come from labels.txt and this manifest
        size = contract["input_shape"][1]
        entry["input"] = {"name": INPUT_NAME, "tensor": None, "dtype": "float32", "shape": [None, size, size, 3],
                          "quantization": None}
        entry["output"] = {"name": "probability", "tensor": None, "dtype": "float32",
                           "shape": [None, classes], "quantization": None}
        entry["preprocessing"] = {**contract, "input_dtype": "float32",
                                  "caller_normalization": {"mean": [0.0] * 3, "std": [1.0] * 3},
                                  "input_value_range": list(contract["value_range"])}
        entry["metadata"] = None
    entry["labels"] = {"file": "labels.txt", "packed_in_file": kind.runtime == "litert",
                       "in_metadata_props": kind.runtime == "onnxruntime"}
    entry["delegates"] = delegates
    return entry


def _labels_sha256(labels: list[str]) -> str:
    return hashlib.sha256("".join(f"{label}\n" for label in labels).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------
# Verify


@dataclass
class Verification:
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # Files whose bytes and metadata match but that were published over their accuracy budget
    # (export.on_budget_fail: warn): "ok" would hide that.
    warned: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def locate(directory: Path) -> Path:
    """``manifest.json`` in ``directory`` or in its ``artifacts/`` folder (a build folder)."""
    directory = Path(directory)
    for candidate in (directory / MANIFEST, directory / layout.MANIFEST):
        if candidate.is_file():
            return candidate
    raise ManifestError(f"no {MANIFEST} in {directory} or {directory / 'artifacts'}; run `make export` first, "
                        "or pass the artifacts folder of a build")


def load(path: Path) -> dict:
    try:
        manifest = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path} cannot be read as JSON ({exc}); re-export to write it again") from None
    check_schema(manifest, str(path))
    return manifest


def verify(directory: Path) -> Verification:
    """Every file's bytes and checksum, and every file's metadata, against the manifest."""
    manifest_path = locate(directory)
    folder = manifest_path.parent
    manifest = load(manifest_path)
    out = Verification()
    labels = manifest["labels"]
    labels_file = folder / manifest["labels_file"]["file"]
    if not labels_file.is_file():
        out.problems.append(f"{labels_file.name}: missing")
    elif sha256_file(labels_file) != manifest["labels_file"]["sha256"]:
        out.problems.append(f"{labels_file.name}: sha256 differs from the manifest")
    elif labels_file.read_text(encoding="utf-8").splitlines() != labels:
        out.problems.append(f"{labels_file.name}: its lines are not the manifest's labels")
    else:
        out.checked.append(f"{labels_file.name}: {len(labels)} labels, sha256 ok")

    for art in manifest["artifacts"]:
        checked = len(out.checked)
        _verify_one(folder, art, manifest, out)
        if len(out.checked) > checked and art["validation"]["status"] == "warned":
            v = art["validation"]
            low, high = v["delta_interval_pp"]
            out.warned.append(f"{out.checked.pop()} (over budget: top-1 {v['delta_pp']:+.2f} pp, 95% {low:+.2f}.."
                              f"{high:+.2f}, published under export.on_budget_fail: warn)")

    listed = {art["file"] for art in manifest["artifacts"]} | {MANIFEST, manifest["labels_file"]["file"]}
    for extra in sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in listed):
        out.notes.append(f"{extra}: in the folder but not in the manifest")
    return out


def _verify_one(folder: Path, art: dict, manifest: dict, out: Verification) -> None:
    """One file's bytes, checksum and metadata against its manifest entry: a line in ``out``."""
    from exporters import metadata

    path = folder / art["file"]
    if not path.is_file():
        out.problems.append(f"{art['file']}: listed in the manifest but missing")
        return
    size, digest = path.stat().st_size, sha256_file(path)
    if size != art["bytes"] or digest != art["sha256"]:
        out.problems.append(f"{art['file']}: sha256 {digest[:12]}… ({size} bytes) differs from the manifest's "
                            f"{art['sha256'][:12]}… ({art['bytes']} bytes): the file changed after export")
        return
    if art["metadata"] is None:
        out.checked.append(f"{art['file']}: sha256 ok")
        return
    try:
        read = metadata.read_metadata(path)
    except Exception as exc:  # any reader failure is this file's problem, reported by name
        out.problems.append(f"{art['file']}: its metadata cannot be read ({exc})")
        return
    mismatches = _metadata_mismatches(read, art, manifest)
    if mismatches:
        out.problems.append(f"{art['file']}: metadata disagrees with the manifest: {'; '.join(mismatches)}")
    else:
        norm = read["input"]["normalization"]
        out.checked.append(f"{art['file']}: sha256 ok; metadata ok ({len(read['labels'])} labels, "
                           f"mean {_short(norm['mean'])}, std {_short(norm['std'])})")


def _short(values: list[float]) -> str:
    return f"{values[0]:g}" if len(set(values)) == 1 else "/".join(f"{v:g}" for v in values)


def _metadata_mismatches(read: dict, art: dict, manifest: dict) -> list[str]:
    expect = art["preprocessing"]
    contract = {k: v for k, v in expect.items() if k not in ("input_dtype", "caller_normalization",
                                                              "input_value_range")}
    checks = [
        ("labels", read["labels"], manifest["labels"]),
        ("name", read["name"], manifest["model"]["name"]),
        ("version", read["version"], manifest["model"]["version"]),
        ("normalization", read["input"]["normalization"], expect["caller_normalization"]),
        ("value range", read["input"]["value_range"], expect["input_value_range"]),
        ("input dtype", read["input"]["dtype"], expect["input_dtype"]),
        ("preprocessing contract", read["preprocessing"], contract),
    ]
    return [f"{what} {got!r} != {want!r}" for what, got, want in checks if got != want]
