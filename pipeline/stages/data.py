"""data stage: scan or load the dataset, split it, decode every image once."""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from core import layout
from core.io import atomic_path, write_json, write_text
from core.contract import read_class_order
from core.layout import SPLITS
from pipeline import data
from pipeline.config import Config
from pipeline.stages import Stage

log = logging.getLogger("pipeline")


def _source_fingerprint(cfg: Config) -> str:
    if cfg.data.source == "digits":
        import sklearn

        return f"sklearn-digits-{sklearn.__version__}"
    listing = data.scan_folder(cfg.data.path)
    return data.fingerprint_files(listing.root, listing.files)


STAGE = Stage(
    name="data",
    module=__name__,
    deps=(),
    outs=(*(layout.split(name) for name in SPLITS), layout.LABELS, layout.SPLIT_INDEX, layout.SCAN),
    params=("data",),
    external_inputs=_source_fingerprint,
    # model.labels renumbers the classes: its contents are an input of the split.
    derived_params=lambda cfg: {"model.labels (class order)": None if cfg.model.labels is None
                                else list(read_class_order(cfg.model.labels))},
    # Where training caches the splits does not change them: switching it does not decode again.
    ignores=("data.cache",),
)


def run(cfg: Config, ctx) -> None:
    size = cfg.data.image_size
    skipped: list[dict] = []
    conversions: dict[str, int] = {}
    digests: list[str] = []
    if cfg.data.source == "digits":
        class_names, images, labels = data.load_digits_dataset(size)
        files = [f"digits/{i}" for i in range(len(labels))]
        digests = [hashlib.sha256(img.tobytes()).hexdigest() for img in images]
        if cfg.data.limit_per_class:
            keep = data.limit_per_class(labels, cfg.data.limit_per_class, cfg.data.seed)
            images, labels, files = images[keep], labels[keep], [files[i] for i in keep]
            digests = [digests[i] for i in keep]
    else:
        listing = data.scan_folder(cfg.data.path)
        class_names, skipped = listing.class_names, list(listing.skipped)
        keep = data.limit_per_class(listing.labels, cfg.data.limit_per_class, cfg.data.seed)
        decoded = data.decode_files(listing.root, [listing.files[i] for i in keep], listing.labels[keep], size,
                                    cfg.data.max_image_pixels, cfg.data.on_bad_image)
        images, labels, files, digests = decoded.images, decoded.labels, decoded.files, decoded.digests
        skipped += decoded.skipped
        conversions = decoded.conversions
    if cfg.model.labels is not None:  # a model brought to the pipeline fixes the class order
        class_names, labels = data.apply_class_order(read_class_order(cfg.model.labels), class_names, labels)
    data.check_class_counts(class_names, labels, cfg.data.min_images_per_class, skipped)

    split = data.stratified_split(labels, cfg.data.val_fraction, cfg.data.test_fraction, cfg.data.seed)
    data.check_split_covers_classes(split, labels, class_names,
                                    {"val": cfg.data.val_fraction, "test": cfg.data.test_fraction})
    for name in SPLITS:
        idx = split[name]
        out = ctx.path(layout.split(name))
        with atomic_path(out) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, images=images[idx], labels=labels[idx])
        ctx.record_output(out)

    labels_txt = ctx.path(layout.LABELS)
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
    split_json = ctx.path(layout.SPLIT_INDEX)
    write_json(split_json, summary)
    ctx.record_output(split_json)

    split_of = {int(i): name for name in SPLITS for i in split[name]}
    duplicates = data.duplicate_groups(files, digests, labels, class_names, split_of)
    scan = {
        "images": int(len(labels)),
        "skipped": skipped,
        "converted": conversions,
        "duplicates": duplicates,
        "cross_class_duplicates": sum(g["cross_class"] for g in duplicates),
        "cross_split_duplicates": sum(g["cross_split"] for g in duplicates),
    }
    scan_json = ctx.path(layout.SCAN)
    write_json(scan_json, scan)
    ctx.record_output(scan_json)

    log.info("[data] %d classes; train %d, val %d, test %d images at %d px",
             len(class_names), *(len(split[n]) for n in SPLITS), size)
    _log_findings(conversions, skipped, duplicates)


def _log_findings(conversions: dict, skipped: list[dict], duplicates: list[dict]) -> None:
    """What the scan converted, skipped and found twice, in the log (scan.json holds all of it)."""
    if conversions:
        log.info("[data] converted on decode: %s", ", ".join(f"{k} {v}" for k, v in conversions.items()))
    if skipped:
        log.warning("[data] skipped %d file(s) that are not usable images (data/scan.json, results.json "
                    "data.skipped):", len(skipped))
        for item in skipped[:20]:
            log.warning("[data]   %s: %s", item["file"], item["reason"])
        if len(skipped) > 20:
            log.warning("[data]   ... and %d more", len(skipped) - 20)
    for group in duplicates:
        if group["cross_class"] or group["cross_split"]:
            what = " and ".join(w for w, flag in (("classes", group["cross_class"]), ("splits", group["cross_split"]))
                                if flag)
            log.warning("[data] byte-identical images across %s: %s", what,
                        ", ".join(f"{f['file']} ({f['split']})" for f in group["files"]))
