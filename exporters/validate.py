"""Validate an exported file against the Keras reference on real held-out images."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from exporters.registry import Exporter
from exporters.runtimes import load_predictor


@dataclass(frozen=True)
class Validation:
    images: int
    top1: float
    top1_agreement: float
    max_abs_diff: float
    min_top1_agreement: float
    max_abs_diff_budget: float

    @property
    def failures(self) -> list[str]:
        out = []
        if self.top1_agreement < self.min_top1_agreement:
            out.append(f"top-1 agreement {self.top1_agreement:.4f} < {self.min_top1_agreement}")
        if not self.max_abs_diff <= self.max_abs_diff_budget:  # `not <=` also catches NaN
            out.append(f"max |dp| {self.max_abs_diff:.3g} > {self.max_abs_diff_budget:g}")
        return out

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        return asdict(self)


def compare(probs: np.ndarray, reference: np.ndarray, labels: np.ndarray, exporter: Exporter) -> Validation:
    if probs.shape != reference.shape:
        raise ValueError(f"output shape {probs.shape} differs from the Keras model's {reference.shape}")
    return Validation(
        images=int(len(labels)),
        top1=float(np.mean(probs.argmax(1) == labels)),
        top1_agreement=float(np.mean(probs.argmax(1) == reference.argmax(1))),
        max_abs_diff=float(np.max(np.abs(probs - reference))) if len(labels) else 0.0,
        min_top1_agreement=exporter.min_top1_agreement,
        max_abs_diff_budget=exporter.max_abs_diff,
    )


def validate(path: Path, exporter: Exporter, images: np.ndarray, labels: np.ndarray,
             reference: np.ndarray, threads: int = 1) -> Validation:
    predict = load_predictor(path, exporter.runtime, threads)
    return compare(predict(images.astype(np.float32)), reference, labels, exporter)
