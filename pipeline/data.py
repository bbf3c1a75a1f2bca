"""Datasets: image folders and the bundled digits, split, decoded once, fed by tf.data.

Decoding happens once, in the ``data`` stage, into uint8 arrays at the model's
input size; training and validation read those arrays through tf.data with
the augmentation applied after the cache, so every epoch sees fresh
augmentations without decoding a file again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from pipeline.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# The resize policy is part of the preprocessing contract that ships with every
# artifact: an app has to crop and resize the same way to see the same accuracy.
RESIZE_POLICY = "center-crop to square, then bilinear resize to image_size"


@dataclass(frozen=True)
class LabelledFiles:
    """What a dataset is before decoding: class names and (relative path, label) pairs."""

    root: Path
    class_names: tuple[str, ...]
    files: tuple[str, ...]
    labels: np.ndarray


def scan_folder(root: str | Path) -> LabelledFiles:
    """One sub-folder per class, in sorted order; image files matched by extension, any case."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Dataset folder {root} does not exist; set data.path to a folder with one sub-folder per class.")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files: list[str] = []
    labels: list[int] = []
    names: list[str] = []
    for class_dir in class_dirs:
        images = sorted(
            p for p in class_dir.rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not images:
            raise DataError(f"Class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder.")
        names.append(class_dir.name)
        files.extend(str(p.relative_to(root)) for p in images)
        labels.extend([len(names) - 1] * len(images))
    if len(names) < 2:
        raise DataError(f"Dataset folder {root} has {len(names)} class sub-folder(s); a classifier needs at least two.")
    return LabelledFiles(root, tuple(names), tuple(files), np.asarray(labels, dtype=np.int64))


def load_image(path: Path, size: int) -> np.ndarray:
    """Decode any supported image to RGB uint8 (size, size, 3), honouring EXIF orientation."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img = img.convert("RGB")  # grayscale, palette, RGBA, CMYK -> RGB
            img = ImageOps.fit(img, (size, size), method=Image.BILINEAR, centering=(0.5, 0.5))
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"Image {path} cannot be decoded ({exc.__class__.__name__}); remove or replace the file.") from None


def load_digits_dataset(size: int) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real 8x8 handwritten digits (UCI), upscaled to RGB size x size."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are 0..16 (counts of set pixels in 4x4 blocks of the 32x32 originals).
    gray = np.clip(digits.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    images = np.stack([
        np.asarray(Image.fromarray(g, mode="L").resize((size, size), Image.BILINEAR).convert("RGB"))
        for g in gray
    ])
    names = tuple(str(n) for n in digits.target_names)
    return names, images, digits.target.astype(np.int64)


def limit_per_class(labels: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """Indices of at most ``limit`` items per class, chosen with the seed, in original order."""
    if limit is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(labels == c))[:limit] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Deterministic stratified train/val/test indices: the same seed always gives the same split."""
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    counts = np.bincount(labels)
    if counts.min() < 3:
        small = int(np.argmin(counts))
        raise DataError(f"Class {small} has {counts.min()} image(s); every class needs at least 3 to appear in train, val and test.")
    try:
        rest, test = train_test_split(index, test_size=test_fraction, stratify=labels, random_state=seed)
        train, val = train_test_split(
            rest, test_size=val_fraction / (1.0 - test_fraction), stratify=labels[rest], random_state=seed
        )
    except ValueError as exc:
        raise DataError(f"The dataset is too small for val_fraction={val_fraction} and test_fraction={test_fraction} ({exc}); add images or raise the fractions.") from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def fingerprint_files(root: Path, files: tuple[str, ...]) -> str:
    """sha256 over every file's relative path and contents: any change to the data changes it."""
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode("utf-8") + b"\0")
        digest.update(hashlib.sha256((root / rel).read_bytes()).digest())
    return digest.hexdigest()


def load_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as npz:
        return npz["images"], npz["labels"]


def make_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, *, training: bool,
                 augment: tuple[str, ...] = (), seed: int = 0):
    """tf.data over decoded uint8 images: cache, (shuffle, augment) for training, batch, prefetch."""
    from pipeline.keras_compat import tf

    ds = tf.data.Dataset.from_tensor_slices((images, labels)).cache()
    if training:
        ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment:
        ds = ds.map(lambda x, y: (_augment(x, augment), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _augment(image, ops: tuple[str, ...]):
    """Light augmentation in raw pixel space [0, 255]; the model normalizes inside its graph."""
    from pipeline.keras_compat import tf

    size = tf.shape(image)[0]
    if "horizontal_flip" in ops:
        image = tf.image.random_flip_left_right(image)
    if "crop" in ops:
        # Random crop of 85-100% of the side, resized back: a mild zoom and shift.
        scale = tf.random.uniform([], 0.85, 1.0)
        side = tf.cast(tf.cast(size, tf.float32) * scale, tf.int32)
        image = tf.image.random_crop(image, tf.stack([side, side, 3]))
        image = tf.image.resize(image, tf.stack([size, size]))
    if "brightness" in ops:
        image = tf.image.random_brightness(image, max_delta=0.1 * 255.0)
    if "contrast" in ops:
        image = tf.image.random_contrast(image, 0.85, 1.15)
    return tf.clip_by_value(image, 0.0, 255.0)
