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
from PIL import Image

from core import photos
from core.contract import check_label
from core.errors import DataError
from core.photos import BadImage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Decoding follows core.contract.RESIZE_POLICY (core.photos.CONTRACT_RESIZER), part of the preprocessing
# contract that ships with every artifact: an app has to crop and resize the same way to see the same
# accuracy (benchmarks.resizers measures how far each file moves when it does not).


@dataclass(frozen=True)
class LabelledFiles:
    """What a dataset is before decoding: class names, (relative path, label) pairs, and what was left out."""

    root: Path
    class_names: tuple[str, ...]
    files: tuple[str, ...]
    labels: np.ndarray
    # {"file": relative path, "reason": one phrase}: files found under the root that are not images to use.
    skipped: tuple[dict, ...] = ()


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root))


def _class_files(class_dir: Path, root: Path, skipped: list[dict]) -> list[str]:
    """Image files under one class folder, nested folders included, in sorted order; the rest is recorded.

    Symlinks are followed when they point inside the dataset (a folder is entered once, so a
    link loop ends); a link that leaves it, or points nowhere, is skipped.
    """
    found, seen = [], set()

    def visit(folder: Path) -> None:
        real = folder.resolve()
        if real in seen:
            return
        seen.add(real)
        for entry in sorted(folder.iterdir(), key=lambda p: p.name):
            rel = _relative(entry, root)
            if entry.name.startswith("."):
                skipped.append({"file": rel, "reason": "hidden file or folder"})
            elif entry.is_symlink() and not entry.exists():
                skipped.append({"file": rel, "reason": "broken symlink"})
            elif entry.is_symlink() and not _inside(entry, root):
                skipped.append({"file": rel, "reason": "symlink to a place outside the dataset folder"})
            elif entry.is_dir():
                visit(entry)
            elif not entry.is_file():
                skipped.append({"file": rel, "reason": "not a regular file"})
            elif entry.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append({"file": rel, "reason": f"not an image file (extension {entry.suffix or 'none'!r})"})
            elif entry.stat().st_size == 0:
                skipped.append({"file": rel, "reason": "empty file (0 bytes)"})
            else:
                found.append(rel)

    visit(class_dir)
    return found


def scan_folder(root: str | Path) -> LabelledFiles:
    """One sub-folder per class, in sorted order; image files matched by extension, any case.

    Nothing is decoded here: files that decode badly are found by :func:`decode_files`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"Dataset folder {root} does not exist; set data.path to a folder with one sub-folder per class.")
    skipped: list[dict] = []
    class_dirs = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            skipped.append({"file": entry.name, "reason": "hidden file or folder"})
        elif entry.is_dir() and entry.is_symlink() and not _inside(entry, root):
            skipped.append({"file": entry.name, "reason": "symlink to a folder outside the dataset folder"})
        elif entry.is_dir():
            class_dirs.append(entry)
        else:
            skipped.append({"file": entry.name, "reason": "not in a class folder"})
    if not class_dirs:
        raise DataError(f"Dataset folder {root} has no class sub-folders; put each class's images in a folder "
                        "named after the class.")
    files: list[str] = []
    labels: list[int] = []
    names: list[str] = []
    for class_dir in class_dirs:
        try:  # the name becomes a line of labels.txt and of every file's metadata
            check_label(class_dir.name, len(names))
        except ValueError as exc:
            raise DataError(f"Class folder {class_dir!r} cannot be a label ({exc}); rename the folder.") from None
        images = _class_files(class_dir, root, skipped)
        if not images:
            raise DataError(f"Class folder {class_dir} has no images ({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder.")
        names.append(class_dir.name)
        files.extend(images)
        labels.extend([len(names) - 1] * len(images))
    if len(names) < 2:
        raise DataError(f"Dataset folder {root} has {len(names)} class sub-folder(s); a classifier needs at least two.")
    return LabelledFiles(root, tuple(names), tuple(files), np.asarray(labels, dtype=np.int64), tuple(skipped))


def apply_class_order(order: tuple[str, ...], class_names: tuple[str, ...],
                      labels: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """(order, labels renumbered to it): class ``i`` becomes the one ``order`` puts at line ``i``."""
    missing = [n for n in class_names if n not in order]
    extra = [n for n in order if n not in class_names]
    if missing or extra:
        what = (f"has no line for class folder {missing[0]!r}" if missing
                else f"names {extra[0]!r}, which is no class folder of data.path")
        raise DataError(f"model.labels {what}; the labels file must name exactly the class folders "
                        f"({', '.join(class_names)}), in the order of the model's outputs.")
    position = np.array([order.index(n) for n in class_names], dtype=np.int64)
    return tuple(order), position[labels]


def decode_image(data: bytes, size: int, max_pixels: int) -> tuple[np.ndarray, list[str]]:
    """RGB uint8 (size, size, 3) from a file's bytes, and what had to be converted on the way.

    Decoded by :func:`core.photos.open_rgb` and resized by the contract's resizer, the one
    every exported file is validated on. Raises :class:`BadImage` with a reason for
    anything that is not a usable image.
    """
    photo, conversions = photos.open_rgb(data, max_pixels)
    return photos.resize(photo, size, photos.CONTRACT_RESIZER), conversions


def load_image(path: Path, size: int, max_pixels: int = 100_000_000) -> np.ndarray:
    """Decode any supported image to RGB uint8 (size, size, 3), honouring EXIF orientation."""
    try:
        return decode_image(Path(path).read_bytes(), size, max_pixels)[0]
    except BadImage as exc:
        raise DataError(f"Image {path} cannot be used ({exc.reason}); remove or replace the file.") from None


@dataclass
class Decoded:
    """The images a folder dataset yields, and what the decoding found on the way."""

    images: np.ndarray
    labels: np.ndarray
    files: list[str]
    digests: list[str]  # sha256 of each used file's bytes
    skipped: list[dict]
    conversions: dict[str, int]


def decode_files(root: Path, files: list[str], labels: np.ndarray, size: int, max_pixels: int,
                 on_bad_image: str) -> Decoded:
    """Decode every file once; a bad one is skipped with its reason, or stops the run (``on_bad_image``)."""
    from collections import Counter

    from tqdm import tqdm

    images, kept, used, digests, skipped, conversions = [], [], [], [], [], Counter()
    for rel, label in tqdm(list(zip(files, labels)), desc=f"decode {len(files)} images", unit="img", leave=False,
                           disable=None):
        try:
            try:
                raw = (Path(root) / rel).read_bytes()
            except OSError as exc:
                raise BadImage(f"unreadable file ({exc.__class__.__name__})") from None
            pixels, converted = decode_image(raw, size, max_pixels)
        except BadImage as exc:
            if on_bad_image == "fail":
                raise DataError(f"Image {Path(root) / rel} cannot be used ({exc.reason}); remove or replace it, or "
                                "set data.on_bad_image: skip to leave such files out.") from None
            skipped.append({"file": rel, "reason": exc.reason})
            continue
        conversions.update(converted)
        images.append(pixels)
        kept.append(int(label))
        used.append(rel)
        digests.append(hashlib.sha256(raw).hexdigest())
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return Decoded(stacked, np.asarray(kept, np.int64), used, digests, skipped, dict(sorted(conversions.items())))


def check_class_counts(class_names: tuple[str, ...], labels: np.ndarray, minimum: int, skipped: list[dict]) -> None:
    """Every class needs ``minimum`` usable images: say which one falls short, and why, in one sentence."""
    counts = np.bincount(labels, minlength=len(class_names))
    for name, count in zip(class_names, counts):
        if count >= minimum:
            continue
        bad = [s for s in skipped if s["file"].startswith(f"{name}/")]
        why = f"; {len(bad)} of its files could not be used (e.g. {bad[0]['file']}: {bad[0]['reason']})" if bad else ""
        if count == 0:
            raise DataError(f"Class '{name}' has no usable images{why}; add images to it or remove its folder.")
        raise DataError(f"Class '{name}' has {count} usable image(s), fewer than data.min_images_per_class "
                        f"({minimum}){why}; add images to it or remove its folder.")


def check_split_covers_classes(split: dict[str, np.ndarray], labels: np.ndarray, class_names: tuple[str, ...],
                               fractions: dict[str, float]) -> None:
    """A class missing from a split would go unseen in training, or untested: refuse it with the remedy."""
    for name, idx in split.items():
        present = set(np.unique(labels[idx]).tolist())
        for c, class_name in enumerate(class_names):
            if c not in present:
                total = int(np.sum(labels == c))
                remedy = (f"raise data.{name}_fraction (now {fractions[name]:g}) or add images to that class"
                          if name in fractions else "add images to that class")
                raise DataError(f"The split leaves class '{class_name}' ({total} images) without {name} images; "
                                f"{remedy}.")


def duplicate_groups(files: list[str], digests: list[str], labels: np.ndarray, class_names: tuple[str, ...],
                     split_of: dict[int, str]) -> list[dict]:
    """Byte-identical files: across classes they are label noise, across splits they leak test images into training."""
    from collections import defaultdict

    groups: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        groups[digest].append(i)
    out = []
    for digest, members in groups.items():
        if len(members) < 2:
            continue
        classes = sorted({class_names[labels[i]] for i in members})
        splits = sorted({split_of[i] for i in members})
        out.append({"sha256": digest, "cross_class": len(classes) > 1, "cross_split": len(splits) > 1,
                    "classes": classes, "splits": splits,
                    "files": [{"file": files[i], "class": class_names[labels[i]], "split": split_of[i]}
                              for i in members]})
    return sorted(out, key=lambda g: (not g["cross_class"], not g["cross_split"], g["files"][0]["file"]))


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
    import os

    digest = hashlib.sha256()
    for rel in files:
        digest.update(os.fsencode(rel) + b"\0")  # file names need not be valid UTF-8
        digest.update(hashlib.sha256((root / rel).read_bytes()).digest())
    return digest.hexdigest()


def _file_region(images: np.ndarray) -> tuple[str, int] | None:
    """(file, byte offset) where a memory-mapped array's data lies, or None for an array in memory.

    A slice of a mapped split is mapped too, but numpy keeps the whole mapping's
    offset on it: the slice's own start is found from the mapping it belongs to.
    """
    import mmap

    origin = images
    while isinstance(origin.base, np.ndarray):
        origin = origin.base
    if not (isinstance(images, np.memmap) and isinstance(origin, np.memmap) and isinstance(origin.base, mmap.mmap)
            and images.flags.c_contiguous and origin.filename):
        return None
    return str(origin.filename), origin.offset + (images.ctypes.data - origin.ctypes.data)


# data.cache: auto keeps a split in memory when its decoded bytes are at most this
# fraction of the memory available when training starts; the rest is left to the model,
# its gradients and optimizer state, and the other split's cache.
MEMORY_CACHE_FRACTION = 0.5
# A split that is not held in memory (disk cache, or no cache over a mapped split) is
# shuffled within a window of this many bytes of images instead of as a whole: a
# whole-split shuffle buffer would hold every image in memory after all. A constant,
# not a share of the memory free now, so the order stays a function of the seed.
SHUFFLE_WINDOW_BYTES = 256 * 2**20


def available_memory() -> int | None:
    """Bytes the system can give this process now without swapping, or None where it cannot say."""
    import os

    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):  # counts reclaimable page cache, unlike MemFree
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not every system names these (macOS has no SC_AVPHYS_PAGES)
        return None


def memory_budget() -> int | None:
    """Bytes a split may take in the memory cache under data.cache: auto (None: unknown, so memory)."""
    available = available_memory()
    return None if available is None else int(available * MEMORY_CACHE_FRACTION)


def resolve_cache(mode: str, nbytes: int) -> str:
    """The cache a split of ``nbytes`` decoded bytes gets: ``mode`` itself, or for auto memory when it fits, else disk."""
    if mode != "auto":
        return mode
    budget = memory_budget()
    return "memory" if budget is None or nbytes <= budget else "disk"


def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _disk_cache_prefix(cache_dir: Path, label: str, owner) -> str:
    """A fresh folder for one dataset's tf.data cache files; the file prefix inside it.

    ``Dataset.cache(filename)`` trusts whatever it finds under that prefix: a finished
    cache is read back without a check that it holds the same images, and a run killed
    while writing leaves a lock file that makes the next run fail. So every dataset
    writes under a name no earlier run used (its process id and a random part), the
    folder goes when ``owner`` (the dataset) does or the process ends, and folders of
    processes that no longer run are deleted here.
    """
    import os
    import re
    import shutil
    import tempfile
    import weakref

    cache_dir.mkdir(parents=True, exist_ok=True)
    for folder in cache_dir.iterdir():
        match = re.fullmatch(r".+\.pid(\d+)\..+", folder.name)
        if folder.is_dir() and match and not _pid_alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
    folder = tempfile.mkdtemp(prefix=f"{label}.pid{os.getpid()}.", dir=cache_dir)
    weakref.finalize(owner, shutil.rmtree, folder, True)  # also runs at interpreter exit
    return os.path.join(folder, "cache")


def _source(images: np.ndarray, labels: np.ndarray):
    """(image, label) elements: streamed from the .npz for a memory-mapped split, else sliced from memory."""
    import os

    from core.keras_compat import tf

    region = _file_region(images)
    if region is None:
        return tf.data.Dataset.from_tensor_slices((images, labels))
    filename, offset = region
    record = int(np.prod(images.shape[1:])) * images.dtype.itemsize
    footer = os.path.getsize(filename) - offset - record * len(images)
    shape, dtype = images.shape[1:], tf.as_dtype(images.dtype)
    pixels = tf.data.FixedLengthRecordDataset(filename, record, header_bytes=offset, footer_bytes=footer)
    pixels = pixels.map(lambda raw: tf.reshape(tf.io.decode_raw(raw, dtype), shape),
                        num_parallel_calls=tf.data.AUTOTUNE)
    streamed = tf.data.Dataset.zip((pixels, tf.data.Dataset.from_tensor_slices(labels)))
    # tf.data cannot know how many records a file holds. Keras handles a dataset of unknown
    # length differently (each fit() runs its first epoch until the data ends), and then a
    # resumed fine-tuning no longer trained as an uninterrupted one (tests/test_resume.py).
    return streamed.apply(tf.data.experimental.assert_cardinality(len(images)))


def make_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, *, training: bool,
                 augment: tuple[str, ...] = (), seed: int = 0, cache: str = "memory",
                 cache_dir: Path | None = None, label: str = "split"):
    """tf.data over decoded uint8 images: cache, (shuffle, augment) for training, batch, prefetch.

    ``cache`` is data.cache: ``memory``, ``disk`` (files under ``cache_dir``, removed
    with the dataset), ``none`` (read the source every epoch) or ``auto`` (memory when
    the split fits :func:`memory_budget`, else disk). The cache holds the uint8 images
    before shuffling and augmentation, so every epoch is shuffled and augmented anew;
    the order and the augmentations depend only on ``seed``. They are the same for
    every cache while the split fits the shuffle window (:data:`SHUFFLE_WINDOW_BYTES`).
    """
    import logging

    from core.keras_compat import tf

    nbytes = int(images.nbytes)
    mode = resolve_cache(cache, nbytes)
    ds = _source(images, labels)
    if mode == "memory":
        ds = ds.cache()
    elif mode == "disk":
        if cache_dir is None:
            raise ValueError("a disk cache needs cache_dir")
        prefix = _disk_cache_prefix(Path(cache_dir), label, ds)
        ds = ds.cache(prefix)
    elif mode != "none":
        raise ValueError(f"unknown cache mode {cache!r}")
    logging.getLogger("pipeline").info("[data] %s: %d images, %.1f MB decoded, cache %s%s", label, len(images),
                                       nbytes / 1e6, mode, " (auto)" if cache == "auto" else "")
    if training:
        in_memory = mode == "memory" or _file_region(images) is None
        per_image = max(1, nbytes // max(1, len(images)))
        window = len(images) if in_memory else max(1, min(len(images), SHUFFLE_WINDOW_BYTES // per_image))
        ds = ds.shuffle(window, seed=seed, reshuffle_each_iteration=True)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if training and augment:
        # Each image gets its own seed pair from a stream that follows ``seed`` and is drawn
        # anew on every pass (epoch). The augmentation uses only stateless random ops on
        # that pair, so the map runs in parallel even under op determinism, which runs a
        # map with stateful random ops one element at a time.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2, drop_remainder=True)
        ds = tf.data.Dataset.zip((ds, seeds)).map(lambda xy, pair: (_augment(xy[0], augment, pair), xy[1]),
                                                  num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    # Under MultiWorkerMirroredStrategy tf.data shards the dataset over the workers. Its
    # default tries shards by file first, and a split is one .npz file (streamed splits)
    # or none: every worker instead reads the same seeded order and keeps its share of
    # each global batch (DATA).
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def _augment(image, ops: tuple[str, ...], seed):
    """Light augmentation in raw pixel space [0, 255]; the model normalizes inside its graph.

    ``seed`` (two integers) decides every random choice: one image, one seed, one result.
    """
    from core.keras_compat import tf

    flip, scale_seed, crop_seed, brightness, contrast = tf.unstack(tf.random.experimental.stateless_split(seed, 5))
    size = tf.shape(image)[0]
    if "resize_jitter" in ops:
        # Its seeds are folded from the image's own: the other augmentations draw what they drew without it.
        image = _resize_jitter(image, tf.random.experimental.stateless_fold_in(seed, RESIZE_JITTER_SALT))
    if "horizontal_flip" in ops:
        image = tf.image.stateless_random_flip_left_right(image, flip)
    if "crop" in ops:
        # Random crop of 85-100% of the side, resized back: a mild zoom and shift.
        scale = tf.random.stateless_uniform([], scale_seed, 0.85, 1.0)
        side = tf.cast(tf.cast(size, tf.float32) * scale, tf.int32)
        image = tf.image.stateless_random_crop(image, tf.stack([side, side, 3]), crop_seed)
        image = tf.image.resize(image, tf.stack([size, size]))
    if "brightness" in ops:
        image = tf.image.stateless_random_brightness(image, 0.1 * 255.0, brightness)
    if "contrast" in ops:
        image = tf.image.stateless_random_contrast(image, 0.85, 1.15, contrast)
    return tf.clip_by_value(image, 0.0, 255.0)


RESIZE_JITTER_SALT = 0x52535A  # "RSZ"
# resize_jitter: the photo is taken to be this many times the input side before an app's resizer reduces it.
RESIZE_JITTER_SCALE = (1.25, 2.5)


def _resize_jitter(image, seed):
    """The image as another app's resizer would have given it: one of five, drawn per image with ``seed``.

    The decoded split holds the contract's pixels only (the photos are not read again while
    training), so a larger photo is made by enlarging the image (bicubic, by a random factor
    in :data:`RESIZE_JITTER_SCALE`), and it is reduced back by bilinear without antialiasing
    (OpenCV ``INTER_LINEAR``, Android's filtered bitmap scaling, ``tf-bilinear``), area
    averaging (``INTER_AREA``, Pillow's box), antialiased bilinear (Pillow's bilinear, the
    contract) or the nearest pixel (an unfiltered bitmap scale); the fifth choice leaves the
    image as it is. The result is rounded to whole values, as a resized bitmap's bytes are.
    """
    from core.keras_compat import tf

    scale_seed, method_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    size = tf.shape(image)[:2]
    scale = tf.random.stateless_uniform([], scale_seed, *RESIZE_JITTER_SCALE)
    larger = tf.image.resize(image, tf.cast(tf.round(tf.cast(size, tf.float32) * scale), tf.int32), method="bicubic")
    choices = tf.stack([
        tf.image.resize(larger, size, method="bilinear", antialias=False),
        tf.image.resize(larger, size, method="area"),
        tf.image.resize(larger, size, method="bilinear", antialias=True),
        tf.image.resize(larger, size, method="nearest"),
        image,
    ])
    pick = tf.random.stateless_uniform([], method_seed, 0, 5, dtype=tf.int32)
    return tf.ensure_shape(tf.clip_by_value(tf.round(tf.gather(choices, pick)), 0.0, 255.0), image.shape)
