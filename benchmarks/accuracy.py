"""Accuracy of one file's predictions on the test split, as a mobile team reads it."""

from __future__ import annotations

import numpy as np


def metrics(probs: np.ndarray, labels: np.ndarray, class_names: list[str]) -> dict:
    """top-1, top-k (k = 5, or the number of classes when fewer), per-class recall and the confusion matrix.

    ``confusion[i][j]`` counts test images of class ``i`` predicted as ``j``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(f"predictions have shape {probs.shape}; expected (images, {n_classes})")
    k = min(5, n_classes)
    predicted = probs.argmax(1)
    top_k = np.argsort(-probs, axis=1)[:, :k]
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support = confusion.sum(1)
    recall = {name: (round(float(confusion[i, i] / support[i]), 4) if support[i] else None)
              for i, name in enumerate(class_names)}
    return {
        "images": int(len(labels)),
        "top1": round(float(np.mean(predicted == labels)), 6),
        # With fewer than 5 classes "top5" is top-k over every class (always 1.0); top_k says which k.
        "top5": round(float(np.mean((top_k == labels[:, None]).any(1))), 6),
        "top_k": k,
        "per_class_recall": recall,
        "confusion": confusion.tolist(),
    }


def flips(reference_probs: np.ndarray, probs: np.ndarray) -> dict:
    """Where a file's top-1 differs from the reference's on the same images: each (reference, file) class pair.

    Only the pairs that differ are listed (most images first), so the record stays small for
    a thousand classes; ``agreed`` counts the rest.
    """
    ref, got = reference_probs.argmax(1), probs.argmax(1)
    pairs: dict[tuple[int, int], int] = {}
    for a, b in zip(ref[ref != got].tolist(), got[ref != got].tolist()):
        pairs[(a, b)] = pairs.get((a, b), 0) + 1
    ordered = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"images": int(len(ref)), "agreed": int((ref == got).sum()),
            "pairs": [[int(a), int(b), int(n)] for (a, b), n in ordered]}
