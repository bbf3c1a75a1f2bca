"""data stage: scan or load the dataset, split it, decode every image once."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline import data
from pipeline.config import Config
from pipeline.io import atomic_path, write_json, write_text
from pipeline.stages import Stage

log = logging.getLogger("pipeline")

SPLITS = ("train", "val", "test")


def _source_fingerprint(cfg: Config) -> str:
    if cfg.data.source == "digits":
        import sklearn

        return f"sklearn-digits-{sklearn.__version__}"
    listing = data.scan_folder(cfg.data.path)
    return data.fingerprint_files(listing.root, listing.files)


STAGE = Stage(
    name="data",
    deps=(),
    params=("data",),
    code=("pipeline.stages.data", "pipeline.data"),
    external_inputs=_source_fingerprint,
)


def run(cfg: Config, ctx) -> None:
    size = cfg.data.image_size
    if cfg.data.source == "digits":
        class_names, images, labels = data.load_digits_dataset(size)
        files = [f"digits/{i}" for i in range(len(labels))]
    else:
        listing = data.scan_folder(cfg.data.path)
        class_names, labels, files = listing.class_names, listing.labels, list(listing.files)
        keep = data.limit_per_class(labels, cfg.data.limit_per_class, cfg.data.seed)
        labels, files = labels[keep], [files[i] for i in keep]
        images = np.stack([
            data.load_image(listing.root / rel, size)
            for rel in tqdm(files, desc=f"decode {len(files)} images", unit="img", leave=False, disable=None)
        ])
    if cfg.data.source == "digits" and cfg.data.limit_per_class:
        keep = data.limit_per_class(labels, cfg.data.limit_per_class, cfg.data.seed)
        images, labels, files = images[keep], labels[keep], [files[i] for i in keep]

    split = data.stratified_split(labels, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.seed)
    for name in SPLITS:
        idx = split[name]
        out = ctx.path(f"data/{name}.npz")
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, images=images[idx], labels=labels[idx])
        ctx.record_output(out)

    labels_txt = ctx.path("data/labels.txt")
    write_text(labels_txt, "".join(f"{n}\n" for n in class_names))
    ctx.record_output(labels_txt)

    summary = {
        "source": cfg.data.source,
        "path": cfg.data.path,
        "image_size": size,
        "classes": list(class_names),
        "counts": {name: np.bincount(labels[split[name]], minlength=len(class_names)).tolist() for name in SPLITS},
        "files": {name: [files[i] for i in split[name]] for name in SPLITS},
    }
    split_json = ctx.path("data/split.json")
    write_json(split_json, summary)
    ctx.record_output(split_json)
    log.info("[data] %d classes; train %d, val %d, test %d images at %d px",
             len(class_names), *(len(split[n]) for n in SPLITS), size)


def read_labels(root: Path) -> list[str]:
    return (root / "data/labels.txt").read_text(encoding="utf-8").splitlines()
