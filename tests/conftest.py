"""Shared fixtures: tiny real image folders, tiny configs, the ../shared data (skipped when absent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FLOWERS = SHARED / "datasets/flowers_128"
MOBILENET_WEIGHTS = SHARED / "weights/mobilenet_v2_1.0_imagenet_no_top.h5"

needs_shared = pytest.mark.skipif(
    not (FLOWERS.is_dir() and MOBILENET_WEIGHTS.is_file()),
    reason="../shared (flowers_128 and MobileNetV2 weights) is not beside this checkout",
)

# Each class has its own dominant colour, so a tiny network learns it in an epoch.
CLASS_COLOURS = {"apple": (200, 40, 40), "leaf": (40, 190, 60), "sky": (50, 80, 210)}


def _photo(rng: np.random.Generator, colour, size: int = 40) -> np.ndarray:
    base = np.array(colour, dtype=np.float32)
    noise = rng.normal(0, 25, (size, size, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """3 classes x 12 images in every supported format and mode (PNG/JPG/JPEG/BMP/GIF, L/RGBA/P, upper-case)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    kinds = [("png", "RGB"), ("JPG", "RGB"), ("jpeg", "L"), ("bmp", "RGB"), ("gif", "P"), ("png", "RGBA")]
    for name, colour in CLASS_COLOURS.items():
        folder = root / name
        folder.mkdir()
        for i in range(12):
            ext, mode = kinds[i % len(kinds)]
            img = Image.fromarray(_photo(rng, colour))
            img = img.convert(mode) if mode != "P" else img.convert("P", palette=Image.ADAPTIVE)
            img.save(folder / f"img_{i:02d}.{ext}")
    (root / "sky" / "notes.txt").write_text("not an image")  # ignored: not an image extension
    return root


def write_config(path: Path, **sections) -> Path:
    """A tiny, fast config; keyword arguments replace whole sections or top-level keys."""
    cfg = {
        "name": "tiny",
        "build_dir": str(path.parent / "build"),
        "data": {"source": "digits", "image_size": 32, "limit_per_class": 12, "seed": 7, "augment": ["brightness"]},
        "model": {"backbone": "mobilenet_v2", "alpha": 0.35, "weights": "none", "dropout": 0.0},
        "train": {"batch_size": 16, "head_epochs": 1, "head_lr": 0.01, "fine_tune_epochs": 1,
                  "fine_tune_lr": 0.01, "fine_tune_at": 1.0, "freeze_batchnorm": False, "batchnorm_momentum": 0.9},
        "export": {"formats": ["keras", "tflite-fp32", "onnx-fp32"], "latency_runs": 5},
        "benchmark": {"targets": []},  # the bench stage has its own tests (test_bench.py)
    }
    for key, value in sections.items():
        cfg[key] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args: str, cwd: Path = REPO, env_extra: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
