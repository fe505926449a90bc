"""Intervals against published worked examples (Wilson: Newcombe 1998, Statistics in Medicine 17,
"Two-sided confidence intervals for the single proportion", Table I), the difference interval's
exact coverage on few images, and the verdict rule."""

import math

import numpy as np
import pytest
from scipy.stats import binom

from nsneg.trainer.eval import stats


@pytest.mark.parametrize(
    "correct, n, low, high",
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_matches_newcombes_table(correct, n, low, high):
    assert stats.wilson(correct, n) == pytest.approx((low, high), abs=5e-5)


def test_difference_is_the_agresti_caffo_interval():
    """One success and one failure added to each side, then Wald: 56/70 - 48/80 by hand."""
    diff = stats.difference(stats.proportion(56, 70), stats.proportion(48, 80))
    p1, p2 = 57 / 72, 49 / 82
    half = 1.959964 * math.sqrt(p1 * (1 - p1) / 72 + p2 * (1 - p2) / 82)
    assert diff["value"] == pytest.approx(0.2)
    assert (diff["low"], diff["high"]) == pytest.approx((p1 - p2 - half, p1 - p2 + half))
    assert stats.excludes_zero(diff)


@pytest.mark.parametrize("n1, n2", [(1, 3), (2, 4), (5, 5), (10, 30)])
def test_difference_interval_keeps_its_coverage_on_few_images(n1, n2):
    """Exact coverage (every outcome weighted by its binomial probability, no sampling) over a grid
    of true accuracies: the interval covers the true difference at least 93% of the time even
    with one image on a side, and an interval that excludes zero when the accuracies are equal
    (a wrong conclusion) happens at most 7% of the time."""
    diffs = [
        [
            stats.difference(stats.proportion(k1, n1), stats.proportion(k2, n2))
            for k2 in range(n2 + 1)
        ]
        for k1 in range(n1 + 1)
    ]
    low = np.array([[d["low"] for d in row] for row in diffs])  # [n1 + 1, n2 + 1]
    high = np.array([[d["high"] for d in row] for row in diffs])
    concludes = (low > 0) | (high < 0)
    for q1 in np.linspace(0.05, 0.95, 7):
        for q2 in np.linspace(0.05, 0.95, 7):
            weight = np.outer(
                binom.pmf(np.arange(n1 + 1), n1, q1), binom.pmf(np.arange(n2 + 1), n2, q2)
            )
            covered = weight[(low <= q1 - q2) & (q1 - q2 <= high)].sum()
            assert covered >= 0.93, (q1, q2, covered)
            if q1 == q2:
                assert weight[concludes].sum() <= 0.07, q1


def test_a_perfect_score_on_two_images_concludes_nothing():
    """2 / 2 against 2 / 4 is +50 points, and 0 / 1 against 3 / 3 is -100: the data cannot tell either."""
    one_class = stats.proportion(2, 2)
    assert one_class["low"] == pytest.approx(0.3424, abs=5e-5) and one_class["high"] == 1.0
    diff = stats.difference(one_class, stats.proportion(2, 4))
    assert diff["value"] == pytest.approx(0.5) and diff["low"] < 0 < diff["high"]
    assert not stats.excludes_zero(diff)
    assert not stats.excludes_zero(stats.difference(stats.proportion(0, 1), stats.proportion(3, 3)))
    assert stats.verdict(diff, "more", "less").startswith("the data cannot tell")
    big = stats.difference(stats.proportion(95, 100), stats.proportion(50, 100))
    assert stats.excludes_zero(big) and stats.verdict(big, "more", "less") == "more"
    assert (
        stats.verdict(
            stats.difference(stats.proportion(5, 100), stats.proportion(50, 100)), "more", "less"
        )
        == "less"
    )


def test_empty_counts_and_texts():
    assert stats.proportion(0, 0) == {
        "value": None,
        "correct": 0,
        "n": 0,
        "low": None,
        "high": None,
    }
    assert stats.difference(stats.proportion(0, 0), stats.proportion(1, 2))["value"] is None
    assert stats.verdict(
        stats.difference(stats.proportion(0, 0), stats.proportion(1, 2)), "a", "b"
    ).startswith("not comparable")
    with pytest.raises(ValueError, match="not a count"):
        stats.wilson(3, 2)
    assert stats.estimate_text(stats.proportion(1, 4)) == "25.0% [4.6, 69.9] (n=4)"
    assert (
        stats.difference_text({"value": 0.5, "low": -0.1, "high": 0.8})
        == "+50.0 points [-10.0, +80.0]"
    )
    assert stats.from_accuracy(0.25, 4) == stats.proportion(1, 4)


def test_mean_std_over_seeds():
    assert stats.mean_std([0.7, 0.8, 0.9]) == {
        "mean": pytest.approx(0.8),
        "std": pytest.approx(0.1),
        "n": 3,
    }
    assert stats.mean_std([0.5, None]) == {"mean": 0.5, "std": None, "n": 1}
    assert stats.mean_std([]) == {"mean": None, "std": None, "n": 0}


def test_seed_differences_and_means_over_seeds():
    """Welch's interval is scipy's; runs without spread over seeds fall back to their pooled
    images rather than a zero-width t-interval; one run against several has no interval."""
    from scipy.stats import ttest_ind

    a = {0: stats.proportion(60, 100), 1: stats.proportion(64, 100), 2: stats.proportion(61, 100)}
    b = {5: stats.proportion(50, 100), 6: stats.proportion(55, 100)}
    welch = stats.seed_difference(a, b)
    ci = ttest_ind([0.60, 0.64, 0.61], [0.50, 0.55], equal_var=False).confidence_interval()
    assert welch["test"] == stats.WELCH_TEST and welch["n"] == "3 vs 2 runs"
    assert (welch["low"], welch["high"]) == pytest.approx((ci.low, ci.high))
    flat_a = {0: stats.proportion(60, 100), 1: stats.proportion(60, 100)}
    flat_b = {0: stats.proportion(50, 100), 1: stats.proportion(50, 100)}
    pooled = stats.seed_difference(flat_a, flat_b)
    by_hand = stats.difference(stats.proportion(120, 200), stats.proportion(100, 200))
    assert pooled["value"] == pytest.approx(0.1) and pooled["n"] == "200 vs 200 images"
    assert (pooled["low"], pooled["high"]) == pytest.approx((by_hand["low"], by_hand["high"]))
    assert "no spread over seeds" in pooled["test"] and pooled["low"] < pooled["high"]
    lone = stats.seed_difference({0: stats.proportion(60, 100)}, b)
    assert lone["low"] is None and stats.verdict(lone, "a", "b").startswith("the data cannot")
    mean = stats.seed_mean(list(a.values()))
    half = 4.302653 * np.std([0.60, 0.64, 0.61], ddof=1) / np.sqrt(3)  # t(0.975, 2 df)
    assert (mean["low"], mean["high"]) == pytest.approx((0.6167 - half, 0.6167 + half), abs=1e-4)
    assert stats.seed_mean([stats.proportion(3, 4)]) == {
        **stats.proportion(3, 4),
        "test": stats.INTERVAL_NAME,
    }
    flat = stats.seed_mean(list(flat_a.values()))
    assert flat["n"] == 200 and flat["low"] < 0.6 < flat["high"]
