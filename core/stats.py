"""Paired statistics of an exported file against the Keras model, image by image on the same images.

Every image falls in one cell of the paired 2×2 table of correctness:

============  ===================  ==================
..            file right           file wrong
============  ===================  ==================
Keras right   ``a`` (both right)   ``b`` (lost)
Keras wrong   ``c`` (gained)       ``d`` (both wrong)
============  ===================  ==================

The top-1 change is ``(c - b) / n``; only the discordant pairs ``b`` and ``c``
carry information about it. Its 95% interval is Newcombe's method 10 for paired
proportions (Newcombe 1998, *Statistics in Medicine* 17:2635–2650): Wilson score
intervals of the two accuracies, combined with the correlation of the pairs. It
keeps its coverage for the small ``b`` and ``c`` that quantized files produce and
never collapses to zero width. The exact McNemar test is the two-sided binomial
test of ``b`` against ``b + c`` at one half. Agreement (same top-1 class as Keras)
gets a Wilson interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import numpy as np

CONFIDENCE = 0.95
Verdict = Literal["within", "over", "unproven"]


def _z(confidence: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + confidence / 2))


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of a proportion (``(0, 1)`` for no trials)."""
    if n == 0:
        return 0.0, 1.0
    z, p = _z(confidence), successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_paired(a: int, b: int, c: int, d: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Interval of ``p_file - p_keras = (c - b) / n`` (Newcombe's method 10, with his corrected correlation)."""
    n = a + b + c + d
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n  # Keras, file
    l1, u1 = wilson(a + b, n, confidence)
    l2, u2 = wilson(a + c, n, confidence)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if margins > 0:
        # Newcombe's continuity-corrected correlation: ad - bc shrunk towards 0 by n/2 when positive.
        cross = a * d - b * c
        corrected = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)
        phi = corrected / math.sqrt(margins)
    theta = p2 - p1
    below = math.sqrt(max(0.0, (p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2))
    above = math.sqrt(max(0.0, (u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))
    return max(-1.0, theta - below), min(1.0, theta + above)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: ``b`` of ``b + c`` discordant pairs against a fair coin (1.0 for none)."""
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(b, b + c, 0.5).pvalue)


def verdict(drop_low_pp: float, drop_high_pp: float, budget_pp: float) -> Verdict:
    """``within`` when even the interval's worst drop meets the budget, ``over`` when even its best misses it."""
    if drop_high_pp <= budget_pp:
        return "within"
    if drop_low_pp > budget_pp:
        return "over"
    return "unproven"


@dataclass(frozen=True)
class Paired:
    """The paired table of one file against Keras, and what follows from it."""

    images: int
    both_right: int
    lost: int  # b: Keras right, file wrong
    gained: int  # c: Keras wrong, file right
    both_wrong: int
    agreed: int  # same top-1 class as Keras (two different wrong answers disagree)
    confidence: float = CONFIDENCE

    @property
    def delta_pp(self) -> float:
        return 100.0 * (self.gained - self.lost) / self.images if self.images else 0.0

    @property
    def delta_interval_pp(self) -> tuple[float, float]:
        low, high = newcombe_paired(self.both_right, self.lost, self.gained, self.both_wrong, self.confidence)
        return 100.0 * low, 100.0 * high

    @property
    def drop_interval_pp(self) -> tuple[float, float]:
        low, high = self.delta_interval_pp
        return -high, -low

    @property
    def mcnemar_p(self) -> float:
        return mcnemar_exact(self.lost, self.gained)

    @property
    def agreement(self) -> float:
        return self.agreed / self.images if self.images else float("nan")

    @property
    def agreement_interval(self) -> tuple[float, float]:
        return wilson(self.agreed, self.images, self.confidence)

    def verdict(self, budget_pp: float) -> Verdict:
        return verdict(*self.drop_interval_pp, budget_pp)

    def images_to_settle(self, budget_pp: float, limit: int = 1_000_000) -> Optional[int]:
        """How many test images, in the same proportions, would make the verdict ``within`` or ``over``.

        None when no number up to ``limit`` does (the measured drop sits on the budget).
        """
        if self.images == 0 or self.verdict(budget_pp) != "unproven":
            return None if self.images == 0 else self.images
        cells = np.array([self.both_right, self.lost, self.gained, self.both_wrong], float) / self.images

        def settled(n: int) -> bool:
            a, b, c, d = np.round(cells * n).astype(int)
            return Paired(n, int(a + (n - (a + b + c + d))), int(b), int(c), int(d), 0, self.confidence).verdict(
                budget_pp) != "unproven"

        if not settled(limit):
            return None
        low, high = self.images, limit  # settled(high); find the smallest n that settles
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (low, middle) if settled(middle) else (middle, high)
        return high

    def as_dict(self, budget_pp: Optional[float] = None) -> dict:
        out = {**asdict(self),
               "delta_pp": round(self.delta_pp, 4),
               "delta_interval_pp": [round(x, 4) for x in self.delta_interval_pp],
               "mcnemar_p": round(self.mcnemar_p, 6),
               "agreement": round(self.agreement, 6),
               "agreement_interval": [round(x, 6) for x in self.agreement_interval],
               "interval_method": "Newcombe method 10 (paired Wilson score); exact McNemar"}
        if budget_pp is not None:
            out["budget_pp"] = budget_pp
            out["verdict"] = self.verdict(budget_pp)
            if out["verdict"] == "unproven":
                out["images_to_settle"] = self.images_to_settle(budget_pp)
        return out


def settle_text(images_to_settle: Optional[int]) -> str:
    """What would turn an ``unproven`` verdict into ``within`` or ``over`` (``Paired.images_to_settle``)."""
    if images_to_settle:
        return f"about {images_to_settle:,} test images in the same proportions would settle it"
    return "no affordable number of test images settles it: the drop sits on the budget"


def paired(reference_probs: np.ndarray, probs: np.ndarray, labels: np.ndarray,
           confidence: float = CONFIDENCE) -> Paired:
    """The paired table of ``probs`` against ``reference_probs`` on the images with ``labels``."""
    ref_top, top = reference_probs.argmax(1), probs.argmax(1)
    ref_right, right = ref_top == labels, top == labels
    return Paired(images=int(len(labels)), both_right=int(np.sum(ref_right & right)),
                  lost=int(np.sum(ref_right & ~right)), gained=int(np.sum(~ref_right & right)),
                  both_wrong=int(np.sum(~ref_right & ~right)), agreed=int(np.sum(ref_top == top)),
                  confidence=confidence)


def fidelity(reference_probs: np.ndarray, probs: np.ndarray, confident_margin: float = 0.1) -> dict:
    """Label-free agreement with Keras: top-1 agreement (Wilson interval), mean KL(Keras ‖ file) in nats,
    and agreement on the images where Keras is confident (top-1 minus top-2 probability ≥ ``confident_margin``):
    a flip on a near-tie means less than one on a clear answer."""
    n = len(reference_probs)
    agreed_each = reference_probs.argmax(1) == probs.argmax(1)
    p = np.clip(reference_probs.astype(np.float64), 1e-7, 1.0)
    q = np.clip(probs.astype(np.float64), 1e-7, 1.0)
    kl = np.maximum(np.sum(p * (np.log(p) - np.log(q)), axis=1), 0.0)  # clipping can leave -1e-9
    ordered = np.sort(reference_probs, axis=1)
    confident = (ordered[:, -1] - ordered[:, -2]) >= confident_margin if reference_probs.shape[1] > 1 else \
        np.ones(n, bool)
    agreed = int(agreed_each.sum())
    return {"images": int(n), "agreement": round(agreed / n, 6) if n else None,
            "agreement_interval": [round(x, 6) for x in wilson(agreed, n)],
            "kl_mean": round(float(kl.mean()), 6) if n else None,
            "confident_images": int(confident.sum()), "confident_margin": confident_margin,
            "agreement_confident": round(float(agreed_each[confident].mean()), 6) if confident.any() else None}
