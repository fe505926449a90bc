"""Uncertainty of the reported numbers: binomial intervals of accuracies, intervals of their
differences, and mean ± std over seeds.

* An accuracy ``k / n`` gets the Wilson score interval (``scipy.stats.binomtest(k, n)
  .proportion_ci(method="wilson")``): unlike the normal approximation it stays inside [0, 1]
  and is not of zero width at 0 / n or n / n.
* A difference of two accuracies ``k1 / n1 - k2 / n2`` gets the Agresti-Caffo interval
  (Agresti & Caffo 2000, The American Statistician 54: "Simple and effective confidence
  intervals for proportions and differences of proportions result from adding two successes
  and two failures"): the Wald interval after adding one success and one failure to each
  side. Its coverage stays near 95% down to a handful of images (Fagerland, Lydersen & Laake
  2011 recommend it for small samples), where Newcombe's hybrid score interval concludes from
  0 / 1 against 3 / 3. It treats the two samples as independent; on the same images (two
  models on one test set) it is conservative, as the per-image agreement is not used.
* Over seeds (several runs of each configuration), a difference of mean accuracies gets a
  t-interval: on the per-seed differences when both sides ran the same seeds (paired, ``scipy.stats
  .ttest_rel``), else Welch's unequal-variance interval (``scipy.stats.ttest_ind(equal_var=False)``);
  one run on each side falls back to the Agresti-Caffo interval of the two image counts
  (``seed_difference`` names the test it used).
* A conclusion ("A is more X than B") is drawn only when the interval of the difference
  excludes zero (``verdict``); otherwise the report says the data cannot tell.

Every estimate is a JSON-ready dict: ``{"value", "correct", "n", "low", "high"}``.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Sequence
from functools import partial
from typing import Any

from scipy.stats import binomtest, norm, ttest_1samp, ttest_ind, ttest_rel

#: Confidence level of every interval in the reports.
CONFIDENCE = 0.95
INTERVAL_NAME = "Wilson 95%"
DIFFERENCE_INTERVAL_NAME = "Agresti-Caffo 95%"
PAIRED_TEST = "paired t over seeds"
WELCH_TEST = "Welch t"


def wilson(correct: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The Wilson score interval of ``correct / n``; None when ``n`` is 0."""
    if n == 0:
        return None
    if not 0 <= correct <= n:
        raise ValueError(f"{correct} correct out of {n} is not a count")
    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def proportion(correct: int, n: int, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """``correct / n`` with its Wilson interval (value, low and high None when ``n`` is 0)."""
    ci = wilson(correct, n, confidence)
    return {
        "value": correct / n if n else None,
        "correct": int(correct),
        "n": int(n),
        "low": None if ci is None else ci[0],
        "high": None if ci is None else ci[1],
    }


def from_accuracy(accuracy: float | None, n: int) -> dict[str, Any]:
    """``proportion`` of an accuracy reported with its image count (``correct = round(acc * n)``)."""
    if accuracy is None or n == 0:
        return proportion(0, 0)
    return proportion(round(accuracy * n), n)


def difference(
    a: dict[str, Any], b: dict[str, Any], confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """``a - b`` of two ``proportion`` estimates with the Agresti-Caffo interval (clipped to
    [-1, 1]); value, low and high are None when either side has no images."""
    if not a["n"] or not b["n"]:
        return {"value": None, "low": None, "high": None}
    z = float(norm.ppf(0.5 + confidence / 2))
    p1, p2 = (a["correct"] + 1) / (a["n"] + 2), (b["correct"] + 1) / (b["n"] + 2)
    half = z * math.sqrt(p1 * (1 - p1) / (a["n"] + 2) + p2 * (1 - p2) / (b["n"] + 2))
    return {
        "value": a["correct"] / a["n"] - b["correct"] / b["n"],
        "low": max(-1.0, p1 - p2 - half),
        "high": min(1.0, p1 - p2 + half),
    }


def _t_interval(test: Any, *samples: Any, confidence: float) -> tuple[float, float] | None:
    """The interval of scipy's t-test ``test(*samples)``; None when the samples have no spread
    (scipy warns and gives NaN: a t-interval of zero width would claim certainty)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ci = test(*samples).confidence_interval(confidence_level=confidence)
    low, high = float(ci.low), float(ci.high)
    return None if math.isnan(low) or math.isnan(high) or low == high else (low, high)


def _pooled(estimates: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The runs' images as one sample: ``proportion`` of the summed counts."""
    return proportion(sum(e["correct"] for e in estimates), sum(e["n"] for e in estimates))


#: The fallback when per-seed values have no spread: their images pooled.
POOLED = "no spread over seeds: images pooled"


def seed_difference(
    a: dict[Any, dict[str, Any]], b: dict[Any, dict[str, Any]], confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """Mean of ``a`` minus mean of ``b``, two configurations' estimates by seed (seed ->
    ``proportion``), with an interval and the ``test`` that made it: paired t when both ran the
    same two or more seeds, Welch t when both have two or more runs otherwise, Agresti-Caffo on
    the image counts with one run each, and on the pooled images when the per-seed values have no
    spread; no interval (low, high None) with one run against several.
    ``n``: the pairs, the runs per side, or the images per side."""
    a = {s: e for s, e in a.items() if e is not None and e.get("value") is not None}
    b = {s: e for s, e in b.items() if e is not None and e.get("value") is not None}
    if not a or not b:
        return {"value": None, "low": None, "high": None, "test": None, "n": None}
    xs, ys = [e["value"] for e in a.values()], [e["value"] for e in b.values()]
    value = statistics.fmean(xs) - statistics.fmean(ys)
    if len(a) == 1 and len(b) == 1:
        (ea,), (eb,) = a.values(), b.values()
        return {
            **difference(ea, eb, confidence),
            "test": DIFFERENCE_INTERVAL_NAME,
            "n": f"{ea['n']} vs {eb['n']} images",
        }
    if set(a) == set(b) and None not in a:
        seeds = sorted(a)
        found = _t_interval(
            ttest_rel,
            [a[s]["value"] for s in seeds],
            [b[s]["value"] for s in seeds],
            confidence=confidence,
        )
        test, n = PAIRED_TEST, f"{len(seeds)} seeds"
    elif len(a) >= 2 and len(b) >= 2:
        found = _t_interval(partial(ttest_ind, equal_var=False), xs, ys, confidence=confidence)
        test, n = WELCH_TEST, f"{len(a)} vs {len(b)} runs"
    else:
        return {
            "value": value,
            "low": None,
            "high": None,
            "test": f"none (one run against {max(len(a), len(b))}: no interval)",
            "n": f"{len(a)} vs {len(b)} runs",
        }
    if found is not None:
        return {"value": value, "low": found[0], "high": found[1], "test": test, "n": n}
    pa, pb = _pooled(list(a.values())), _pooled(list(b.values()))
    pooled = difference(pa, pb, confidence)
    return {
        "value": value,
        "low": pooled["low"],
        "high": pooled["high"],
        "test": f"{DIFFERENCE_INTERVAL_NAME} ({POOLED})",
        "n": f"{pa['n']} vs {pb['n']} images",
    }


def seed_mean(
    estimates: Sequence[dict[str, Any] | None], confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """The mean of one configuration's runs (``proportion`` estimates, one per seed) with a
    t-interval of the mean over seeds; one run: its own Wilson interval; none: value None."""
    present = [e for e in estimates if e is not None and e.get("value") is not None]
    if len(present) == 1:
        return {**present[0], "test": INTERVAL_NAME}
    if not present:
        return {"value": None, "low": None, "high": None, "n": 0, "test": None}
    values = [e["value"] for e in present]
    value = statistics.fmean(values)
    found = _t_interval(partial(ttest_1samp, popmean=0.0), values, confidence=confidence)
    if found is None:
        pooled = _pooled(present)
        return {**pooled, "value": value, "test": f"{INTERVAL_NAME} ({POOLED})"}
    return {
        "value": value,
        "low": found[0],
        "high": found[1],
        "n": len(values),
        "test": "t over seeds",
    }


def excludes_zero(diff: dict[str, Any]) -> bool:
    """Whether an interval of a difference lies wholly on one side of zero."""
    return diff["low"] is not None and (diff["low"] > 0 or diff["high"] < 0)


def verdict(diff: dict[str, Any], more: str, less: str) -> str:
    """``more`` when the interval of the difference lies above zero, ``less`` below it, else the
    sentence that the data cannot tell."""
    if diff["value"] is None:
        return "not comparable (no images on one side)"
    if diff["low"] is None:
        return "the data cannot tell (no interval)"
    if diff["low"] > 0:
        return more
    if diff["high"] < 0:
        return less
    return "the data cannot tell (the interval includes zero)"


def interval_text(estimate: dict[str, Any], digits: int = 1, scale: float = 100.0) -> str:
    """``"[12.3, 45.6]"`` for an estimate's interval (in percent by default); ``"-"`` without one."""
    if estimate.get("low") is None:
        return "-"
    return f"[{scale * estimate['low']:.{digits}f}, {scale * estimate['high']:.{digits}f}]"


def estimate_text(estimate: dict[str, Any], digits: int = 1) -> str:
    """``"45.0% [23.1, 68.5] (n=20)"``: the value, its interval and its count."""
    if estimate["value"] is None:
        return f"- (n={estimate['n']})"
    return f"{100 * estimate['value']:.{digits}f}% {interval_text(estimate, digits)} (n={estimate['n']})"


def difference_text(diff: dict[str, Any], digits: int = 1) -> str:
    """``"+12.3 points [-4.0, +28.1]"``; ``"-"`` when not comparable, no brackets without an
    interval."""
    if diff["value"] is None:
        return "-"
    if diff["low"] is None:
        return f"{100 * diff['value']:+.{digits}f} points"
    return (
        f"{100 * diff['value']:+.{digits}f} points "
        f"[{100 * diff['low']:+.{digits}f}, {100 * diff['high']:+.{digits}f}]"
    )


def mean_std(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (n - 1) of the values that are present, with their
    count; std is None with fewer than two values, mean None with none."""
    present = [float(v) for v in values if v is not None]
    return {
        "mean": statistics.fmean(present) if present else None,
        "std": statistics.stdev(present) if len(present) > 1 else None,
        "n": len(present),
    }
