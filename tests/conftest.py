"""Shared fixtures: tiny real image folders, tiny configs, the ../shared data (skipped when absent)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
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


@pytest.fixture(scope="session")
def standard_schema(request, tmp_path_factory):
    """The reader ``flatc`` generated from the published metadata schema, taken from the tflite-support wheel.

    Only that one file is used (it needs ``flatbuffers`` alone): tflite-support itself no
    longer imports beside current TensorFlow. The wheel is cached in pytest's cache.
    """
    member = "tensorflow_lite_support/metadata/metadata_schema_py_generated.py"
    cache = Path(request.config.cache.mkdir("tflite-support-0.4.4"))
    if not list(cache.glob("tflite_support-0.4.4-*.whl")):
        # Any platform's wheel holds the same generated Python: ask for one that exists.
        command = [sys.executable, "-m", "pip", "download", "tflite-support==0.4.4", "--no-deps", "--only-binary=:all:",
                   "--platform", "manylinux2014_x86_64", "--python-version", "3.11", "-d", str(cache), "-q"]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
            reason = (result.stderr.strip().splitlines() or [f"pip exited {result.returncode}"])[-1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = str(exc)
        if not list(cache.glob("tflite_support-0.4.4-*.whl")):
            pytest.skip(f"cannot download tflite-support 0.4.4 for its schema-generated metadata reader: {reason}")
    wheel = sorted(cache.glob("tflite_support-0.4.4-*.whl"))[0]
    target = tmp_path_factory.mktemp("tflite_support") / "metadata_schema_py_generated.py"
    with zipfile.ZipFile(wheel) as archive:
        target.write_bytes(archive.read(member))
    spec = importlib.util.spec_from_file_location("tflite_support_metadata_schema_generated", target)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY_FORMATS = ["keras", "tflite-fp32", "tflite-int8", "onnx-fp32"]
# The shared tiny build: every digit of scikit-learn's set (1,797 images, 270 held out for the test),
# the whole MobileNetV2 0.35 trained from scratch for 10 epochs at 32 px (~30 s on 2 cores). Fewer
# images or epochs did not learn (12 a class: test top-1 0.11, chance; 60 a class and 8 epochs: 0.46),
# and a model at chance makes every fidelity test vacuous: its outputs hardly depend on the image.
TINY_SECTIONS = {
    "data": {"source": "digits", "image_size": 32, "seed": 7, "augment": ["brightness"]},
    "train": {"batch_size": 64, "head_epochs": 0, "head_lr": 0.001, "fine_tune_epochs": 10, "fine_tune_lr": 0.004,
              "fine_tune_at": 1.0, "freeze_batchnorm": False, "batchnorm_momentum": 0.9, "patience": 10},
    "export": {"formats": TINY_FORMATS, "latency_runs": 0},
}
# The bar the fixture asserts: the higher of the two (at least 0.9, or 3x chance: 0.3 for
# ten digits), so that int8 rounding shows as real disagreement on real images.
TINY_MIN_TEST_TOP1 = 0.9


def _tiny_test_top1(cfg) -> float:
    results = json.loads((cfg.build_root / "export/results.json").read_text())
    return results["reference"]["accuracy"]["top1"]


class SharedFolder:
    """A folder that one pytest-xdist worker fills and every worker reads, made once per session.

    ``with SharedFolder(tmp_path_factory, worker_id, name) as shared:`` holds a file lock;
    ``shared.ready`` says whether an earlier worker finished it, and ``shared.done()`` marks
    it finished (a worker that failed leaves it unfinished, and the next one tries again).
    """

    def __init__(self, tmp_path_factory, worker_id: str, name: str):
        from filelock import FileLock

        base = tmp_path_factory.getbasetemp()
        base = base if worker_id == "master" else base.parent  # the session's folder, above each worker's
        self.path = base / name
        self._finished = base / f"{name}.finished"
        self._lock = FileLock(str(base / f"{name}.lock"))

    def __enter__(self) -> "SharedFolder":
        self._lock.acquire()
        self.ready = self._finished.is_file()
        self.path.mkdir(exist_ok=True)
        return self

    def done(self) -> None:
        self._finished.touch()

    def __exit__(self, *exc) -> None:
        self._lock.release()


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory, worker_id):
    """One tiny digits build (float and int8 TFLite, ONNX, Keras) whose model learned, for every test module.

    Under pytest-xdist the first worker to get here builds it while the others wait, so it
    is trained once per session. Tests read it; a test that changes files works on a copy
    (``copy_build``).
    """
    from pipeline import runner
    from pipeline.config import load_config

    with SharedFolder(tmp_path_factory, worker_id, "tiny_build") as shared:
        path = shared.path / "tiny.yaml"
        if not shared.ready:
            write_config(path, **TINY_SECTIONS)
            assert runner.run(load_config(path), str(path)) == ["data", "finetune", "export"]
            shared.done()
        cfg = load_config(path)
    top1 = _tiny_test_top1(cfg)
    assert top1 >= TINY_MIN_TEST_TOP1, f"the tiny model did not learn: test top-1 {top1:.3f}"
    return cfg, path


def copy_build(tiny_build, destination: Path, **sections):
    """The tiny build (or a build made from it: ``(cfg, path)``) copied to ``destination``, with a config
    pointing at the copy (stamps still valid when ``sections`` are the build's own)."""
    import shutil

    from pipeline.config import load_config

    cfg, _ = tiny_build
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copytree(cfg.build_root.parent, destination / "build", symlinks=True)
    path = write_config(destination / "tiny.yaml", **{**TINY_SECTIONS, **sections})
    return load_config(path), path


def _jpeg_bytes(colour, size=(40, 40), **save) -> bytes:
    import io

    out = io.BytesIO()
    Image.fromarray(_photo(np.random.default_rng(1), colour, size[0])[: size[1], : size[0]]).save(out, "JPEG", **save)
    return out.getvalue()


def salt_folder(root: Path, outside: Path) -> dict[str, str]:
    """Add one file of every kind a real photo folder holds to ``root``; return the ones that cannot be used.

    The answer maps each unusable file (relative path) to a word its skip reason must contain.
    Usable oddities are added too (16-bit, CMYK, EXIF-rotated, nested, upper-case, non-ASCII,
    a symlink inside the dataset, a copy of one class's image in another class).
    """
    import io

    apple, leaf, sky = (CLASS_COLOURS[k] for k in ("apple", "leaf", "sky"))
    # Usable, converted or found on the way.
    grey16 = (np.linspace(0, 65535, 40 * 40).reshape(40, 40)).astype(np.uint16)
    Image.fromarray(grey16).save(root / "apple" / "grey_16bit.png")
    Image.fromarray(_photo(np.random.default_rng(2), apple)).convert("CMYK").save(root / "apple" / "cmyk.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees in the camera
    Image.fromarray(_photo(np.random.default_rng(3), leaf, 40)[:20]).save(root / "leaf" / "rotated.jpg", exif=exif)
    (root / "leaf" / "nested" / "deeper").mkdir(parents=True)
    Image.fromarray(_photo(np.random.default_rng(4), leaf)).save(root / "leaf" / "nested" / "deeper" / "deep.png")
    Image.fromarray(_photo(np.random.default_rng(5), sky)).save(root / "sky" / "UPPER.PNG")
    (root / "sky" / "link_inside.png").symlink_to(root / "sky" / "img_03.bmp")
    (root / "sky" / "copy_of_an_apple.png").write_bytes((root / "apple" / "img_00.png").read_bytes())
    flor = root / "flor_ñandú"
    flor.mkdir()
    for i in range(6):
        Image.fromarray(_photo(np.random.default_rng(10 + i), (210, 200, 40))).save(flor / f"fotografía_{i}.png")
    # Unusable.
    good = _jpeg_bytes(apple)
    (root / "apple" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    png = io.BytesIO()
    Image.fromarray(_photo(np.random.default_rng(6), leaf)).save(png, "PNG")
    (root / "leaf" / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    (root / "apple" / "empty.jpg").write_bytes(b"")
    (root / "leaf" / "fake.png").write_text("this is a text file with an image extension")
    (root / "sky" / "corrupt.jpg").write_bytes(good[:20] + bytes(range(256)) * 4)
    (root / "sky" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "apple" / "._img_00.png").write_bytes(b"\0\5\26\7 AppleDouble")
    Image.new("RGB", (1200, 1000), apple).save(root / "leaf" / "huge.png")
    outside.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_photo(np.random.default_rng(7), apple)).save(outside / "elsewhere.png")
    (root / "apple" / "outside.png").symlink_to(outside / "elsewhere.png")
    (root / "apple" / "broken.png").symlink_to(root / "apple" / "no_such_file.png")
    (root / "README.md").write_text("photos of apples, leaves and the sky")
    return {
        "apple/truncated.jpg": "truncated", "leaf/truncated.png": "truncated", "apple/empty.jpg": "empty file",
        "leaf/fake.png": "not an image", "sky/corrupt.jpg": "not an image", "sky/notes.txt": "not an image file",
        "sky/.DS_Store": "hidden", "apple/._img_00.png": "hidden", "leaf/huge.png": "very large image",
        "apple/outside.png": "outside the dataset", "apple/broken.png": "broken symlink",
        "README.md": "not in a class folder",
    }


SALTED_MAX_PIXELS = 1_000_000  # leaf/huge.png (1.2 MP) is over it


@pytest.fixture(scope="session")
def salted_folder(tmp_path_factory, image_folder):
    """The image folder copied and salted with every kind of bad and odd file (``salt_folder``)."""
    import shutil

    root = tmp_path_factory.mktemp("salted") / "photos"
    shutil.copytree(image_folder, root)
    unusable = salt_folder(root, root.parent / "outside")
    return root, unusable
