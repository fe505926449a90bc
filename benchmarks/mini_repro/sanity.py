"""Facts about the baseline, each with what it means for reading the rows' differences; never a stop.

One rule, shared by the report and the protocol search (``mini_repro.search``): *the baseline
learns* where the paired 95 % t-interval of ``baseline - untrained`` (paired by seed) excludes
zero on shape bias or on cue-conflict accuracy, in either direction: pre-training changed what
the network's decisions follow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mini_repro.protocol import SKETCH_P, UNTRAINED, chance
from mini_repro.report import measure_of, paired_interval

#: The readings the rule reads: what a texture-reliant network changes first.
DRIFT_MEASURES = ("shape_bias", "cue_conflict")


def paired(
    runs: list[dict[str, Any]], others: list[dict[str, Any]], measure: str
) -> dict[str, Any]:
    """Mean of ``runs - others`` on ``measure``, paired by seed, with its 95 % t-interval."""
    a = {r["seed"]: measure_of(r, measure) for r in runs}
    b = {r["seed"]: measure_of(r, measure) for r in others}
    seeds = sorted(s for s in set(a) & set(b) if a[s] is not None and b[s] is not None)
    d = [a[s] - b[s] for s in seeds]
    ci = paired_interval(d)
    return {
        "diff": float(np.mean(d)) if d else None,
        "ci95": ci,
        "seeds": seeds,
        "excludes_zero": None if ci is None else not ci[0] <= 0 <= ci[1],
    }


def drift(base: list[dict[str, Any]], untrained: list[dict[str, Any]]) -> dict[str, Any]:
    """The rule: per ``DRIFT_MEASURES`` the paired difference, and ``learns`` (True, False, or
    None with fewer than two paired seeds)."""
    by_measure = {m: paired(base, untrained, m) for m in DRIFT_MEASURES}
    answers = [c["excludes_zero"] for c in by_measure.values()]
    learns = True if any(answers) else (None if None in answers else False)
    return {"measures": by_measure, "learns": learns}


def interval_text(cell: dict[str, Any], points: bool) -> str:
    """``+1.2 [0.3, 2.1]`` of a ``paired`` cell (``n/a`` without pairs)."""
    if cell["diff"] is None:
        return "n/a"
    f = ".1f" if points else ".2f"
    ci = cell["ci95"]
    return f"{cell['diff']:+{f}}" + (f" [{ci[0]:{f}}, {ci[1]:{f}}]" if ci else "")


def sanity(runs: list[dict[str, Any]], eval_sizes: dict[str, int], baseline: str) -> dict[str, Any]:
    """Three facts about ``baseline``: does pre-training move it away from its untrained network
    on shape bias or cue conflict (the rule), does it beat that network in domain, and does it
    transfer shape to outlines (sketch above chance on every seed, one-sided binomial test at
    ``SKETCH_P``). Never a stop."""
    from scipy import stats

    base = [r for r in runs if r["variant"] == baseline]
    untrained = [r for r in runs if r["kind"] == UNTRAINED]
    if not base:
        return {"facts": [], "consequences": []}
    rule = drift(base, untrained)
    in_domain = paired(base, untrained, "test")
    level = float(np.mean([r["top1"]["test"] for r in base]))
    n = eval_sizes["sketch"]
    p_values = [
        float(
            stats.binomtest(
                round(r["top1"]["sketch"] * n / 100), n, chance() / 100, alternative="greater"
            ).pvalue
        )
        for r in base
    ]
    sketch = float(np.mean([r["top1"]["sketch"] for r in base]))
    transfers = all(p < SKETCH_P for p in p_values)
    answer = {True: "yes", False: "no", None: "not known (fewer than two paired seeds)"}
    shape, cue = rule["measures"]["shape_bias"], rule["measures"]["cue_conflict"]
    facts = [
        {
            "label": f"the baseline ({baseline}) learns: its paired interval against its untrained "
            "network excludes zero on shape bias or cue conflict",
            "answer": answer[rule["learns"]],
            "detail": f"shape bias {interval_text(shape, False)}, cue conflict "
            f"{interval_text(cue, True)} points, over seeds {shape['seeds']}",
        },
        {
            "label": "the baseline beats its untrained network in domain",
            "answer": answer[in_domain["excludes_zero"] and in_domain["diff"] > 0]
            if in_domain["excludes_zero"] is not None
            else answer[None],
            "detail": f"in domain {level:.1f} %, difference to untrained "
            f"{interval_text(in_domain, True)}",
        },
        {
            "label": "the baseline transfers shape to outlines",
            "answer": answer[transfers],
            "detail": f"sketch {sketch:.1f} % vs chance {chance():.1f} %, one-sided binomial p per "
            f"seed {', '.join(f'{p:.1g}' for p in p_values)} (yes: each < {SKETCH_P})",
        },
    ]
    consequences = [
        "Pre-training at this budget changes what the baseline decides on: the rows' differences "
        "are differences between networks that learned something."
        if rule["learns"]
        else "Pre-training at this budget moves the baseline on neither shape bias nor cue "
        "conflict by an amount the interval can show: a difference between rows says how the "
        "negatives change a barely trained network, not what it learned to see.",
        "Sketch differences can be read as shape transfer."
        if transfers
        else "Sketch differences cannot be read as shape transfer (the baseline is at chance "
        "there). Shape bias, cue conflict and unseen textures still read how much a network's "
        "decisions follow texture, and the representation reading and the controls do not "
        "depend on outlines.",
    ]
    return {
        "facts": facts,
        "consequences": consequences,
        "baseline": baseline,
        "drift": rule,
        "learns_beyond_untrained": rule["learns"],
        "in_domain": level,
        "in_domain_vs_untrained": {"diff": in_domain["diff"], "ci95": in_domain["ci95"]},
        "sketch": sketch,
        "sketch_p": p_values,
        "transfers_to_outlines": transfers,
    }
