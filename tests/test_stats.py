"""The paired statistics behind every verdict (core.stats), against hand-computed cases and references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from core import stats


def test_wilson_interval_matches_the_hand_computed_formula():
    # 640 of 648 with z = 1.959964: centre (p + z²/2n)/(1 + z²/n), half-width z√(p(1-p)/n + z²/4n²)/(1 + z²/n).
    z, n, k = 1.959963984540054, 648, 640
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert stats.wilson(k, n) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(10, 10)[1] == pytest.approx(1.0)


def test_mcnemar_exact_for_b3_c1_is_the_two_sided_binomial_tail_by_hand():
    # b=3, c=1 of 4 discordant pairs: P(X<=1) + P(X>=3) for X ~ Bin(4, 1/2) = (1 + 4 + 4 + 1) / 16.
    assert stats.mcnemar_exact(3, 1) == pytest.approx(10 / 16)
    assert stats.mcnemar_exact(8, 0) == pytest.approx(2 / 2 ** 8)  # only the two extreme tables
    assert stats.mcnemar_exact(0, 0) == 1.0


def test_mcnemar_exact_matches_scipys_binomial_test():
    from scipy.stats import binomtest

    for b, c in [(3, 1), (12, 4), (0, 7), (25, 31)]:
        assert stats.mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue)


def newcombe_by_hand(a, b, c, d, z=1.959963984540054):
    """Newcombe (1998) method 10 written out step by step, for p_file - p_keras."""
    n = a + b + c + d
    p1, p2 = (a + b) / n, (a + c) / n

    def wilson(k):
        p = k / n
        centre = (2 * k + z * z) / (2 * (n + z * z))
        half = z * math.sqrt(z * z + 4 * k * (1 - p)) / (2 * (n + z * z))
        return centre - half, centre + half

    (l1, u1), (l2, u2) = wilson(a + b), wilson(a + c)
    ad_bc = a * d - b * c
    corrected = ad_bc - n / 2 if ad_bc > n / 2 else (ad_bc if ad_bc < 0 else 0)
    phi = corrected / math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    d_ = p2 - p1
    return (d_ - math.sqrt((p2 - l2) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1) + (u1 - p1) ** 2),
            d_ + math.sqrt((u2 - p2) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1) + (p1 - l1) ** 2))


def test_newcombe_interval_for_b3_c1_n648_matches_the_hand_computation():
    table = stats.Paired(images=648, both_right=600, lost=3, gained=1, both_wrong=44, agreed=644)
    low, high = table.delta_interval_pp
    by_hand = newcombe_by_hand(600, 3, 1, 44)
    assert (low / 100, high / 100) == pytest.approx(by_hand, abs=1e-12)
    assert table.delta_pp == pytest.approx(-2 / 648 * 100)
    assert low < table.delta_pp < high  # the estimate lies inside
    assert table.drop_interval_pp == pytest.approx((-high, -low))
    assert table.mcnemar_p == pytest.approx(10 / 16)


def test_newcombe_interval_covers_the_true_change_about_95_percent_of_the_time():
    """A reference by simulation: paired outcomes with a known true change of -1 pp, 2,000 seeded draws."""
    rng = np.random.default_rng(0)
    cells = np.array([0.88, 0.02, 0.01, 0.09])  # a, b, c, d: true change (c - b) = -1 pp
    covered = 0
    draws = 2000
    for _ in range(draws):
        a, b, c, d = rng.multinomial(648, cells)
        low, high = stats.newcombe_paired(int(a), int(b), int(c), int(d))
        covered += low <= -0.01 <= high
    assert 0.93 <= covered / draws <= 0.98


def test_interval_agrees_with_a_seeded_paired_bootstrap_when_discordances_are_many():
    rng = np.random.default_rng(1)
    n = 4000
    ref_right = rng.random(n) < 0.85
    flip = rng.random(n) < 0.06
    file_right = np.where(flip, ~ref_right, ref_right)
    deltas = []
    for _ in range(2000):
        i = rng.integers(0, n, n)
        deltas.append(file_right[i].mean() - ref_right[i].mean())
    boot = np.percentile(deltas, [2.5, 97.5])
    a = int(np.sum(ref_right & file_right)); b = int(np.sum(ref_right & ~file_right))
    c = int(np.sum(~ref_right & file_right)); d = int(np.sum(~ref_right & ~file_right))
    assert stats.newcombe_paired(a, b, c, d) == pytest.approx(tuple(boot), abs=0.002)


@pytest.mark.parametrize("low, high, budget, expected", [
    (-0.5, 1.0, 1.0, "within"),      # the worst drop equals the budget: within
    (-0.5, 1.0001, 1.0, "unproven"),
    (1.0, 3.0, 1.0, "unproven"),     # the best drop equals the budget: not yet over
    (1.0001, 3.0, 1.0, "over"),
    (-2.0, -0.1, 0.0, "within"),     # a file that gains
])
def test_verdict_rules_at_their_edges(low, high, budget, expected):
    assert stats.verdict(low, high, budget) == expected


def test_sixty_test_images_and_a_one_point_budget_are_unproven_and_say_how_many_images_would_settle_it():
    # The user's folder in the issue: both int8 files lost 2 of 60 test images (3.33 pp).
    table = stats.Paired(images=60, both_right=50, lost=2, gained=0, both_wrong=8, agreed=58)
    assert table.verdict(1.0) == "unproven"
    needed = table.images_to_settle(1.0)
    assert needed is not None and needed > 60
    a, b, c, d = np.round(np.array([50, 2, 0, 8]) / 60 * needed).astype(int)
    bigger = stats.Paired(needed, int(needed - b - c - d), int(b), int(c), int(d), 0)
    assert bigger.verdict(1.0) == "over"  # at that size the same proportions are decided
    smaller = stats.Paired(needed - 1, 0, 0, 0, 0, 0)
    a, b, c, d = np.round(np.array([50, 2, 0, 8]) / 60 * (needed - 1)).astype(int)
    smaller = stats.Paired(needed - 1, int(needed - 1 - b - c - d), int(b), int(c), int(d), 0)
    assert smaller.verdict(1.0) == "unproven"


def test_a_drop_on_the_budget_never_settles():
    table = stats.Paired(images=600, both_right=500, lost=9, gained=3, both_wrong=88, agreed=588)  # exactly 1 pp
    assert table.verdict(1.0) == "unproven" and table.images_to_settle(1.0, limit=200_000) is None


def test_fidelity_reports_agreement_kl_and_agreement_where_keras_is_confident():
    ref = np.array([[0.9, 0.1], [0.52, 0.48], [0.2, 0.8], [0.7, 0.3]], np.float32)
    got = np.array([[0.8, 0.2], [0.45, 0.55], [0.3, 0.7], [0.6, 0.4]], np.float32)
    f = stats.fidelity(ref, got)
    assert f["images"] == 4 and f["agreement"] == 0.75
    assert f["confident_images"] == 3 and f["agreement_confident"] == 1.0  # the flip was a near-tie
    expected_kl = np.mean(np.sum(ref * np.log(ref / got), axis=1))
    assert f["kl_mean"] == pytest.approx(expected_kl, rel=1e-4)
