"""Validate an exported file against the Keras reference on real held-out images."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from core import stats
from exporters.registry import Format
from exporters.runtimes import load_predictor


@dataclass(frozen=True)
class Validation:
    images: int
    top1: float
    reference_top1: float
    accuracy_drop_pp: float
    top1_agreement: float
    max_abs_diff: float
    min_top1_agreement: Optional[float]
    max_abs_diff_budget: Optional[float]
    max_accuracy_drop_pp: Optional[float]
    # The paired table against Keras on these images (core.stats): the interval of the top-1
    # change, the exact McNemar test, agreement with its interval, and the verdict on the budget.
    paired: dict

    @property
    def verdict(self) -> str:
        """``within``/``over``/``unproven`` for the accuracy budget; ``within``/``over`` for exact formats."""
        if self.max_accuracy_drop_pp is not None:
            return self.paired["verdict"]
        return "over" if self.failures else "within"

    @property
    def failures(self) -> list[str]:
        # `not (x <= budget)` rather than `x > budget`, so NaN fails too.
        out = []
        if self.min_top1_agreement is not None and not self.top1_agreement >= self.min_top1_agreement:
            out.append(f"top-1 agreement {self.top1_agreement:.4f} < {self.min_top1_agreement}")
        if self.max_abs_diff_budget is not None and not self.max_abs_diff <= self.max_abs_diff_budget:
            out.append(f"max |dp| {self.max_abs_diff:.3g} > {self.max_abs_diff_budget:g}")
        if self.max_accuracy_drop_pp is not None and self.paired["verdict"] == "over":
            out.append(f"top-1 dropped {self.accuracy_drop_pp:.2f} pp{self._interval()}, over the "
                       f"{self.max_accuracy_drop_pp:g} pp budget even at the interval's best")
        return out

    @property
    def unproven(self) -> Optional[str]:
        """Why this test set cannot tell whether the file meets its budget (None: it can)."""
        if self.max_accuracy_drop_pp is None or self.paired["verdict"] != "unproven":
            return None
        settle = stats.settle_text(self.paired.get("images_to_settle"))
        return (f"top-1 {-self.accuracy_drop_pp + 0.0:+.2f} pp{self._interval()} is neither within nor over the "
                f"{self.max_accuracy_drop_pp:g} pp budget on {self.images} test images (one image is "
                f"{100 / max(self.images, 1):.2f} pp); {settle}")

    def _interval(self) -> str:
        low, high = self.paired["delta_interval_pp"]
        return f" (95% interval {low:+.2f} to {high:+.2f} pp, McNemar p={self.paired['mcnemar_p']:.3g})"

    @property
    def passed(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict:
        return asdict(self)


def compare(probs: np.ndarray, reference: np.ndarray, labels: np.ndarray, exporter: type[Format],
            max_accuracy_drop_pp: Optional[float] = None) -> Validation:
    """Figures of one artifact against the Keras reference; ``max_accuracy_drop_pp`` overrides the format's budget."""
    if probs.shape != reference.shape:
        raise ValueError(f"output shape {probs.shape} differs from the Keras model's {reference.shape}")
    top1 = float(np.mean(probs.argmax(1) == labels))
    reference_top1 = float(np.mean(reference.argmax(1) == labels))
    budget = exporter.max_accuracy_drop_pp if max_accuracy_drop_pp is None else max_accuracy_drop_pp
    return Validation(
        images=int(len(labels)),
        top1=top1,
        reference_top1=reference_top1,
        accuracy_drop_pp=round(100.0 * (reference_top1 - top1), 4),
        top1_agreement=float(np.mean(probs.argmax(1) == reference.argmax(1))),
        max_abs_diff=float(np.max(np.abs(probs - reference))) if len(labels) else 0.0,
        min_top1_agreement=exporter.min_top1_agreement,
        max_abs_diff_budget=exporter.max_abs_diff,
        max_accuracy_drop_pp=budget,
        paired=stats.paired(reference, probs, labels).as_dict(budget),
    )


def validate(path: Path, exporter: type[Format], images: np.ndarray, labels: np.ndarray, reference: np.ndarray,
             threads: int = 1, max_accuracy_drop_pp: Optional[float] = None) -> Validation:
    predict = load_predictor(path, exporter.runtime, threads)
    return compare(predict(images.astype(np.float32)), reference, labels, exporter, max_accuracy_drop_pp)
