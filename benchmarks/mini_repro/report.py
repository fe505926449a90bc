"""Numbers -> results.json, results.md, results.png: each row's paired difference to the row it
is compared with (a 95 % t-interval over seeds), the findings those intervals allow, and every
row's mean ± std.

The differences are *paired* by seed: a seed fixes the initial weights, the pre-training
images' order and crops, so a row and the row it is compared with differ in what the row
changes alone. With n seeds the interval is mean(d) ± t(0.975, n - 1) · sd(d) / √n of the
per-seed differences d (``scipy.stats.t``); it is left out (None) with fewer than two seeds.
A finding is stated only where the interval excludes zero, in either direction.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from mini_repro.protocol import (
    CONTROLS,
    MEASURES,
    REPRESENTATION,
    TRANSFER,
    Protocol,
    Variant,
    chance,
)
from nsneg.trainer.eval.report import figure, interval_bars, markdown_table, save_png

#: Column titles, in order, and the unit a difference is stated in.
TITLES = {
    "test": "in domain",
    "sketch": "sketch",
    "unseen_textures": "unseen textures",
    "cue_conflict": "cue conflict",
    "shape_bias": "shape bias",
    "positive_margin": "positive view",
    "texture_margin": "own texture",
    "shuffle_margin": "shuffled view",
    "blended_shuffle_margin": "seam-blended shuffled view",
    "shuffled_vs_intact": "probe: shuffled vs intact",
    "blended_shuffled_vs_intact": "probe: blended shuffled vs intact",
    "texture_vs_photo": "probe: texture vs photo",
}
UNITS = {m: "points" for m in TRANSFER + CONTROLS} | {
    m: "" for m in REPRESENTATION + ("shape_bias",)
}
GROUPS = (
    ("Transfer (linear probe top-1 %, shape bias)", TRANSFER),
    (
        "Representation, held-out images (cosine similarity to the view minus to another image)",
        REPRESENTATION,
    ),
    ("Shortcut controls, unseen classes (probe top-1 %, chance 50 %)", CONTROLS),
)


def measure_of(run: dict[str, Any], measure: str) -> float | None:
    if measure == "shape_bias":
        return run["shape_bias"]
    if measure in run["top1"]:
        return run["top1"][measure]
    return run["readings"][measure]


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


def summarise(
    runs: list[dict[str, Any]], names: list[str], variants: tuple[Variant, ...]
) -> dict[str, dict[str, dict[str, Any]]]:
    """row -> measure -> {mean, std, n[, compared_to, diff, ci95, paired_seeds]}: differences to
    the row's ``compared_to``, paired by seed; a reading that is None on a seed leaves that seed out."""
    compared = {v.name: v.compared_to for v in variants}
    by_variant = {
        name: {r["seed"]: r for r in runs if r["variant"] == name}
        for name in set(names) | {c for c in compared.values() if c}
    }
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for name in names:
        rows, reference = by_variant[name], compared.get(name)
        table[name] = {}
        for measure in MEASURES:
            values = [measure_of(r, measure) for r in rows.values()]
            values = np.array([v for v in values if v is not None], dtype=float)
            cell: dict[str, Any] = {
                "mean": float(values.mean()) if len(values) else None,
                "n": len(values),
                "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            }
            if reference:
                base = by_variant[reference]
                pairs = [
                    (s, measure_of(rows[s], measure), measure_of(base[s], measure))
                    for s in sorted(set(rows) & set(base))
                ]
                pairs = [(s, a, b) for s, a, b in pairs if a is not None and b is not None]
                d = [a - b for _, a, b in pairs]
                cell["compared_to"] = reference
                cell["diff"] = float(np.mean(d)) if d else None
                cell["ci95"] = paired_interval(d)
                cell["paired_seeds"] = [s for s, _, _ in pairs]
            table[name][measure] = cell
    return table


def _fmt(x: float | None, measure: str, sign: str = "") -> str:
    if x is None:
        return "n/a"
    return f"{x:{sign}.1f}" if UNITS[measure] == "points" else f"{x:{sign}.2f}"


def findings(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    """One sentence per difference whose 95 % interval excludes zero, in either direction."""
    out = []
    for name, row in summary.items():
        for measure in MEASURES:
            cell = row[measure]
            ci = cell.get("ci95")
            if not ci or (ci[0] <= 0 <= ci[1]):
                continue
            unit = f" {UNITS[measure]}" if UNITS[measure] else ""
            verb = "raises" if cell["diff"] > 0 else "lowers"
            out.append(
                f"`{name}` {verb} {TITLES[measure]} by {_fmt(abs(cell['diff']), measure)}{unit} "
                f"against `{cell['compared_to']}` [{_fmt(ci[0], measure)}, {_fmt(ci[1], measure)}], "
                f"{len(cell['paired_seeds'])} seeds."
            )
    return out


def effect_tables(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    compared = [n for n, row in summary.items() if "compared_to" in row[MEASURES[0]]]
    lines: list[str] = []
    for title, measures in GROUPS:
        rows = []
        for name in compared:
            cells = []
            for m in measures:
                cell = summary[name][m]
                text = _fmt(cell["diff"], m, "+")
                if cell["ci95"]:
                    text += f" [{_fmt(cell['ci95'][0], m)}, {_fmt(cell['ci95'][1], m)}]"
                cells.append(text)
            rows.append([f"{name} − {summary[name][measures[0]]['compared_to']}", *cells])
        lines += [
            f"**{title}**",
            "",
            markdown_table(["difference", *(TITLES[m] for m in measures)], rows),
            "",
        ]
    return lines


def level_tables(summary: dict[str, dict[str, dict[str, Any]]]) -> list[str]:
    lines: list[str] = []
    for title, measures in GROUPS:
        rows = [
            [name]
            + [
                f"{_fmt(row[m]['mean'], m)} ± {_fmt(row[m]['std'], m)}"
                if row[m]["mean"] is not None
                else "n/a"
                for m in measures
            ]
            for name, row in summary.items()
        ]
        lines += [
            f"**{title}**",
            "",
            markdown_table(["row", *(TITLES[m] for m in measures)], rows),
            "",
        ]
    return lines


def markdown(report: dict[str, Any], protocol: Protocol) -> str:
    summary, sanity = report["summary"], report["sanity"]
    quick = protocol.name == "quick"
    total = len(protocol.variants) * len(protocol.seeds)
    seeds = len(protocol.seeds)
    lines = [
        f"# Mini reproduction: shape vs texture{' (--quick: plumbing only, not a result)' if quick else ''}",
        "",
        f"Protocol `{protocol.name}` (meant for {protocol.budget}) on {report['machine']}, device "
        f"`{report['device']}`; {protocol.views_per_run} views per run at {protocol.image_size} px, "
        f"{seeds} seed(s); wall time {report['wall_s'] / 60:.1f} min.",
        "",
    ]
    if not report.get("complete", True):
        lines += [
            f"**Partial: {len(report['runs'])} of {total} runs finished** (the job was stopped or "
            "is still running; rerunning it resumes).",
            "",
        ]
    found = findings(summary)
    lines += [
        "## Effects (paired by seed: mean difference [95 % t-interval])",
        "",
        *(
            [f"- {f}" for f in found]
            if found
            else [
                "No effect detectable at this budget: no interval excludes zero."
                if seeds > 1
                else "No intervals with one seed: nothing can be concluded."
            ]
        ),
        "",
        *effect_tables(summary),
        "Plot: `results.png` (each difference with its 95 % interval, per reading).",
        "",
        "## Sanity readings (facts about the baseline, not gates)",
        "",
        *[f"- **{f['label']}: {f['answer']}** — {f['detail']}" for f in sanity.get("facts", [])],
        "",
        *[f"Consequence: {c}" for c in sanity.get("consequences", [])],
        "",
        f"## Every row, mean ± std over seeds (chance {chance():.1f} % on the shape sets)",
        "",
        *level_tables(summary),
    ]
    load = report.get("load_average_before")
    if load:
        lines += [
            f"Machine load (1/5/15-min load average) when the train stage started: {load}; at the "
            f"last report: {report.get('load_average_now')} (on {report['machine']}).",
            "",
        ]
    lines += [
        "## Protocol (fixed in `benchmarks/mini_repro/protocol.py` before the full run)",
        "",
        protocol.describe(),
        "",
        "How the views per run were chosen: `--stage search` (`gate-search.json`: the baseline "
        "and the untrained network only) and `docs/mini-repro/budget.json` (the cost estimate).",
    ]
    for folder, tex in (report.get("texture_sets") or {"shards": report.get("textures")}).items():
        if tex and tex.get("noise_ratio") is not None:
            lines += [
                "",
                f"Textures in `{folder}`: {tex['images']} made by the real Ray job in {tex['seconds']} s, "
                f"steps {tuple(tex['synthesis']['steps'])} at {tuple(tex['synthesis']['sizes'])} px; "
                f"noise ratio (pipeline/quality.py, mean over {tex['quality_images']} textures) "
                f"{tex['noise_ratio']:.3f}"
                + (
                    " (the engine's default schedule, generator "
                    f"{tex['synthesis'].get('version', '?')})."
                    if tex.get("default_schedule")
                    else f"; on {tex['default_schedule_images']} of the same images "
                    f"{tex['this_schedule_noise_ratio_same_images']:.3f} against the default "
                    f"schedule's {tex['default_schedule_noise_ratio']:.3f} (generator "
                    f"{tex['synthesis'].get('version', '?')})."
                    if "default_schedule_noise_ratio" in tex
                    else " (not the default schedule)."
                ),
            ]
    return "\n".join(lines) + "\n"


def plot_effects(summary: dict[str, dict[str, dict[str, Any]]], title: str, path: Path) -> None:
    """One panel per reading: every compared row's mean paired difference with its 95 % interval
    (a point alone where there is none), zero marked -> a PNG at ``path``."""
    names = [n for n, row in summary.items() if "compared_to" in row[MEASURES[0]]]
    columns = 4
    panels = math.ceil(len(MEASURES) / columns)
    fig = figure(16.0, 0.32 * max(len(names), 3) * panels + 1.2 * panels + 0.6)
    axes = np.atleast_1d(fig.subplots(panels, columns, sharey=True)).ravel()
    labels = [f"{n} − {summary[n][MEASURES[0]]['compared_to']}" for n in names][::-1]
    for ax, measure in zip(axes, MEASURES):
        cells = [summary[name][measure] for name in names][::-1]  # the first row on top
        estimates = [
            None
            if cell["diff"] is None
            else {
                "value": cell["diff"],
                "low": cell["ci95"][0] if cell["ci95"] else None,
                "high": cell["ci95"][1] if cell["ci95"] else None,
            }
            for cell in cells
        ]
        interval_bars(
            ax,
            labels,
            [
                {
                    "estimates": estimates,
                    "color": [
                        "tab:red"
                        if bool(cell["ci95"]) and not cell["ci95"][0] <= 0 <= cell["ci95"][1]
                        else "tab:blue"
                        for cell in cells
                    ],
                }
            ],
            horizontal=True,
            points=True,
            scale=1.0,
        )
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_title(TITLES[measure], fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(MEASURES) :]:
        ax.axis("off")
    fig.suptitle(title + " (red: interval excludes zero)", fontsize=9)
    save_png(fig, path, dpi=110)


def plot_gate_search(search: dict[str, Any], path: Path) -> None:
    """gate-search.json as bars: the baseline's in-domain top-1 per row and, where that row's world
    was also read untrained, the untrained network's; the search's threshold as a line."""
    rows = [(i, s) for i, s in enumerate(search["rows"], 1) if s.get("top1") or s.get("untrained")]
    fig = figure(9.0, 0.42 * len(rows) + 1.6)
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    for key, offset, label, colour in (
        ("top1", 0.18, "MoCo baseline (seed 0)", "tab:blue"),
        ("untrained", -0.18, "same world, untrained", "tab:grey"),
    ):
        bars = [(yy + offset, s[key]) for yy, (_, s) in zip(y, rows) if s.get(key)]
        ax.barh([b for b, _ in bars], [v for _, v in bars], 0.36, color=colour, label=label)
    ax.axvline(
        search["threshold_in_domain"],
        color="tab:red",
        linestyle="--",
        linewidth=1,
        label="threshold searched for",
    )
    ax.axvline(chance(), color="grey", linestyle=":", linewidth=1, label="chance")
    ax.set_yticks(y, [f"{i}. {s['short']}" for i, s in rows], fontsize=7)
    ax.set_xlim(0, 100)
    ax.set_xlabel("in-domain top-1 % (probe on train, read on test)")
    ax.legend(fontsize=7, loc="upper right")  # the first rows are the lowest
    fig.suptitle(
        "mini reproduction: search for a world and budget where MoCo learns shape", fontsize=9
    )
    save_png(fig, path, dpi=120)
