"""Frozen-feature linear probe: the baseline a fine-tuned model has to beat.

Pooled features of the pretrained backbone (no fine-tuning, no augmentation)
feed a multinomial logistic regression; its L2 strength is picked on the
validation split, and test top-1 is reported on the same test split the
pipeline uses. Needs the ``data`` stage's output (``make export`` runs it).

    python -m pipeline.linear_probe --config configs/flowers.yaml
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from core import layout


def pooled_features(model_cfg, image_size: int, images: np.ndarray, batch: int = 64) -> np.ndarray:
    from core.contract import HEAD_PREFIX
    from core.keras_compat import keras, tf
    from pipeline.models import build_classifier

    classifier = build_classifier(model_cfg, num_classes=2, image_size=image_size)
    features = keras.Model(classifier.input, classifier.get_layer(HEAD_PREFIX + "pool").output)
    fn = tf.function(lambda x: features(x, training=False))
    return np.concatenate([fn(tf.constant(images[i:i + batch], tf.float32)).numpy() for i in range(0, len(images), batch)])


def probe(cfg) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from core.errors import DataError
    from core.splits import load_split

    root = cfg.build_root
    if not (root / layout.split("test")).exists():
        raise DataError(f"{root}/data has no split yet; run `make export CONFIG=...` (or its data stage) first.")
    started = time.time()
    feats, labels = {}, {}
    for split in layout.SPLITS:
        images, labels[split] = load_split(root / layout.split(split))
        feats[split] = pooled_features(cfg.model, cfg.data.image_size, images)
    scaler = StandardScaler().fit(feats["train"])
    x = {k: scaler.transform(v) for k, v in feats.items()}
    best = None
    for c in (0.001, 0.01, 0.1, 1.0):
        clf = LogisticRegression(C=c, max_iter=3000).fit(x["train"], labels["train"])
        val = clf.score(x["val"], labels["val"])
        if best is None or val > best[0]:
            best = (val, c, clf)
    val_acc, c, clf = best
    return {
        "backbone": cfg.model.backbone, "alpha": cfg.model.alpha, "weights": cfg.model.weights,
        "image_size": cfg.data.image_size, "C": c, "val_top1": float(val_acc),
        "test_top1": float(clf.score(x["test"], labels["test"])), "test_images": int(len(labels["test"])),
        "seconds": round(time.time() - started, 1),
    }


def main(argv=None) -> int:
    from pipeline.config import load_config
    from core.errors import PipelineError
    from core.io import write_json

    parser = argparse.ArgumentParser(prog="python -m pipeline.linear_probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        result = probe(cfg)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    write_json(cfg.build_root / layout.LINEAR_PROBE, result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
