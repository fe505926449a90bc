"""Intervals against published worked examples (Newcombe 1998, Statistics in Medicine 17:
"Two-sided confidence intervals for the single proportion", Table I, and "Interval estimation for
the difference between independent proportions", Table II, method 10), and the verdict rule."""

import pytest

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


@pytest.mark.parametrize(
    "a, b, low, high",
    [((56, 70), (48, 80), 0.0524, 0.3339), ((9, 10), (3, 10), 0.1705, 0.8090)],
)
def test_difference_is_newcombes_hybrid_score_interval(a, b, low, high):
    diff = stats.difference(stats.proportion(*a), stats.proportion(*b))
    assert diff["value"] == pytest.approx(a[0] / a[1] - b[0] / b[1])
    assert (diff["low"], diff["high"]) == pytest.approx((low, high), abs=5e-5)


def test_a_perfect_score_on_two_images_concludes_nothing():
    """The case that prompted the rule: 2 / 2 against 2 / 4 is +50 points, and the data cannot tell."""
    one_class = stats.proportion(2, 2)
    assert one_class["low"] == pytest.approx(0.3424, abs=5e-5) and one_class["high"] == 1.0
    diff = stats.difference(one_class, stats.proportion(2, 4))
    assert diff["value"] == pytest.approx(0.5) and diff["low"] < 0 < diff["high"]
    assert not stats.excludes_zero(diff)
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
