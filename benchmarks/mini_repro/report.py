"""Numbers -> results.json, results.md, results.png: per-variant mean ± std over seeds, and each
variant's difference to the MoCo baseline with a 95 % t-interval over seeds.

The differences are *paired* by seed: a seed fixes the initial weights, the pre-training
images' order and crops, so variant and baseline of one seed differ in the negatives alone.
With n seeds the interval is mean(d) ± t(0.975, n - 1) · sd(d) / √n of the per-seed
differences d (``scipy.stats.t``); it is left out (None) with fewer than two seeds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mini_repro.protocol import (
    BASELINE,
    GATE_MIN_IN_DOMAIN,
    MEASURES,
    Protocol,
    chance,
)
from nsneg.trainer.eval.report import figure, markdown_table, save_png

#: Column titles of the tables, in order.
TITLES = {
    "test": "in domain",
    "sketch": "sketch",
    "unseen_textures": "unseen textures",
    "cue_conflict": "cue conflict",
    "shape_bias": "shape bias",
}


def measure_of(run: dict[str, Any], measure: str) -> float:
    return run["shape_bias"] if measure == "shape_bias" else run["top1"][measure]


def paired_interval(
    differences: list[float], confidence: float = 0.95
) -> tuple[float, float] | None:
    """t-interval of the mean of paired differences; None with fewer than two pairs."""
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    if len(d) < 2:
        return None
    half = stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)


def summarise(runs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """variant -> measure -> {mean, std, n, diff, ci95}; diff and ci95 against the baseline, paired by seed."""
    by_variant = {name: {r["seed"]: r for r in runs if r["variant"] == name} for name in names}
    base = by_variant.get(BASELINE, {})
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        rows = by_variant[name]
        table[name] = {}
        for measure in MEASURES:
            values = np.array([measure_of(r, measure) for r in rows.values()], dtype=float)
            cell: dict[str, Any] = {
                "mean": float(values.mean()),
                "n": len(values),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            }
            if name != BASELINE:
                seeds = sorted(set(rows) & set(base))
                d = [measure_of(rows[s], measure) - measure_of(base[s], measure) for s in seeds]
                cell["diff"] = float(np.mean(d)) if d else None
                cell["ci95"] = paired_interval(d)
                cell["paired_seeds"] = seeds
            table[name][measure] = cell
    return table


def _fmt(x: float, measure: str) -> str:
    return f"{x:.2f}" if measure == "shape_bias" else f"{x:.1f}"


def markdown(report: dict[str, Any], protocol: Protocol) -> str:
    summary, gate = report["summary"], report["gate"]
    stopped_at_gate = protocol.enforce_gate and not gate["passed"]
    quick = protocol.name == "quick"
    titles = [TITLES[m] for m in MEASURES]
    lines = [
        f"# Mini reproduction: shape vs texture{' (--quick: plumbing only, not a result)' if quick else ''}",
        "",
        f"Protocol `{protocol.name}` on {report['machine']}; wall time {report['wall_s'] / 60:.1f} min. "
        f"Top-1 % of a linear probe (shape classes) on frozen features, chance {chance():.1f} %; shape bias = "
        "shape decisions / (shape + texture decisions) on cue conflict. Mean ± std over "
        f"{len(protocol.seeds)} pre-training seed(s).",
        "",
        *(
            []
            if report.get("complete", True)
            else [
                f"**Stopped at the gate: {len(report['runs'])} of "
                f"{len(protocol.variants) * len(protocol.seeds)} runs made** (the baseline's; the "
                "variants are not trained when it fails, by design).",
                "",
            ]
            if stopped_at_gate
            else [
                f"**Partial: {len(report['runs'])} of {len(protocol.variants) * len(protocol.seeds)} runs finished** "
                "(the job was stopped or is still running; rerunning it resumes).",
                "",
            ]
        ),
        f"**Sanity gate (checked first, on the MoCo baseline): {'PASSED' if gate['passed'] else 'FAILED'}** — "
        + gate["reading"],
        "",
        markdown_table(
            ["variant", *titles],
            [
                [name] + [f"{_fmt(row[m]['mean'], m)} ± {_fmt(row[m]['std'], m)}" for m in MEASURES]
                for name, row in summary.items()
            ],
        ),
    ]
    others = [n for n in summary if n != BASELINE]
    if others:
        lines += ["", f"Difference to `{BASELINE}` (paired by seed), mean [95 % t-interval]:", ""]
        rows = []
        for name in others:
            cells = []
            for m in MEASURES:
                cell = summary[name][m]
                ci = cell.get("ci95")
                diff = cell.get("diff")
                text = "n/a" if diff is None else f"{diff:+{'.2f' if m == 'shape_bias' else '.1f'}}"
                if ci:
                    text += f" [{_fmt(ci[0], m)}, {_fmt(ci[1], m)}]"
                cells.append(text)
            rows.append([name, *cells])
        lines.append(markdown_table(["variant", *titles], rows))
    load = report.get("load_average_before")
    if load:
        lines += [
            "",
            f"Machine load (1/5/15-min load average) when the train stage started: {load}; at the last "
            f"report: {report.get('load_average_now')} (on {report['machine']}).",
        ]
    tex = report.get("textures", {})
    lines += [
        "",
        "## Protocol (fixed in `benchmarks/mini_repro/protocol.py` before the full run)",
        "",
        protocol.describe(),
    ]
    if tex.get("noise_ratio") is not None:
        lines += [
            "",
            f"Texture negatives: {tex['images']} made by the real Ray job in {tex['seconds']} s, "
            f"steps {tuple(tex['synthesis']['steps'])} at {tuple(tex['synthesis']['sizes'])} px; "
            f"noise ratio (pipeline/quality.py, mean over {tex['quality_images']} textures) "
            f"{tex['noise_ratio']:.3f}"
            + (
                " (the engine's default schedule, generator "
                f"{tex['synthesis'].get('version', '?')})."
                if tex.get("default_schedule")
                else " (not the default schedule: plumbing only)."
            ),
        ]
    search = report.get("gate_search") or []
    if search:
        lines += [
            "",
            "## How the world and budget were chosen (baseline only, read on train and test only)",
            "",
            markdown_table(
                ["#", "change", "baseline in-domain top-1", "note"],
                [[i, s["change"], s["test"], s["note"]] for i, s in enumerate(search, 1)],
            ),
        ]
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, dict[str, dict[str, Any]]], title: str, path: Path) -> None:
    """Top-1 per set (left) and shape bias (right), mean ± std over seeds -> a PNG at ``path``."""
    names = list(summary)
    sets = [m for m in MEASURES if m != "shape_bias"]
    fig = figure(max(8.0, 1.3 * len(names) + 5), 4.2)
    ax, bx = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1.2]})
    width = 0.8 / len(sets)
    x = np.arange(len(names))
    for i, split in enumerate(sets):
        ax.bar(
            x + (i - (len(sets) - 1) / 2) * width,
            [summary[n][split]["mean"] for n in names],
            width,
            yerr=[summary[n][split]["std"] for n in names],
            label=TITLES[split],
            capsize=2,
        )
    ax.axhline(chance(), color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("linear-probe top-1 (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, ncol=3)
    bx.bar(
        x,
        [summary[n]["shape_bias"]["mean"] for n in names],
        0.6,
        yerr=[summary[n]["shape_bias"]["std"] for n in names],
        capsize=2,
        color="tab:purple",
    )
    bx.set_xticks(x, names, rotation=30, ha="right")
    bx.set_ylim(0, 1)
    bx.set_ylabel("shape bias (cue conflict)")
    fig.suptitle(title, fontsize=9)
    save_png(fig, path, dpi=120)


def plot_gate_search(search: list[dict[str, Any]], path: Path) -> None:
    """The gate search as bars: the baseline's in-domain top-1 per row and, where that row's world
    was also read untrained, the untrained network's; the gate's threshold as a line."""
    rows = [(i, s) for i, s in enumerate(search, 1) if s.get("top1") or s.get("untrained")]
    fig = figure(9.0, 0.42 * len(rows) + 1.6)
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    for key, offset, label, colour in (
        ("top1", 0.18, "MoCo baseline (seed 0)", "tab:blue"),
        ("untrained", -0.18, "same world, untrained", "tab:grey"),
    ):
        bars = [(yy + offset, s[key]) for yy, (_, s) in zip(y, rows) if s.get(key)]
        ax.barh([b for b, _ in bars], [v for _, v in bars], 0.36, color=colour, label=label)
    ax.axvline(GATE_MIN_IN_DOMAIN, color="tab:red", linestyle="--", linewidth=1, label="gate")
    ax.axvline(chance(), color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_yticks(y, [f"{i}. {s['short']}" for i, s in rows], fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_xlabel("in-domain top-1 % (probe on train, read on test)")
    ax.legend(fontsize=7, loc="upper right")  # the first rows are the lowest
    fig.suptitle(
        "mini reproduction: search for a world and budget where MoCo learns shape", fontsize=9
    )
    save_png(fig, path, dpi=120)
