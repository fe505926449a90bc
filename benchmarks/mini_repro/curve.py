"""The learning curve: the transfer readings of one run's kept backbones against the views it had seen.

The runs of ``Protocol.curve_rows`` x ``curve_seeds`` keep their backbone at each of
``curve_views`` (``mini_repro.pretrain``): checkpoints along one run, its cosine schedule over
the whole run, so no view is trained twice. Each is probed like a finished run (``probe``:
in domain, out of domain, shape bias); the untrained network of the same seed stands at 0 views.
The table and plot show how the baseline drifts and whether the negatives change the drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mini_repro.pretrain import curve_checkpoint, probe
from mini_repro.protocol import UNTRAINED, Protocol
from mini_repro.report import measure_of, paired_interval
from nsneg.datasets_manifest.format import files
from nsneg.trainer import checkpoint as checkpoints
from nsneg.trainer.eval.report import figure, markdown_table, save_png

#: Readings on the curve: (measure, title, points or fraction).
READINGS = (
    ("shape_bias", "shape bias", False),
    ("cue_conflict", "cue conflict top-1 %", True),
    ("unseen_textures", "unseen textures top-1 %", True),
    ("test", "in domain top-1 %", True),
)
CURVE_JSON = "curve.json"


def probe_run(
    run_dir: Path, data: Path, protocol: Protocol, seed: int, device: str, key: str
) -> list[dict[str, Any]]:
    """The probes of one run's kept backbones, one per curve view (kept in ``run_dir/curve.json``
    under ``key``: a stopped job does not probe them again)."""
    cached = Path(run_dir) / CURVE_JSON
    if cached.exists():
        kept = json.loads(cached.read_text())
        if kept.get("fingerprint") == key and [p["views"] for p in kept["points"]] == list(
            protocol.curve_views
        ):
            return kept["points"]
    points = []
    for views in protocol.curve_views:
        backbone, _ = checkpoints.load_backbone(curve_checkpoint(run_dir, views))
        points.append({"views": views, **probe(backbone, data, protocol, seed, device)})
    files.atomic_write_json(cached, {"fingerprint": key, "points": points})
    return points


def points_of(curves: list[dict[str, Any]], runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every curve point as {variant, seed, views, top1, shape_bias}, the untrained network of
    each curve seed at 0 views."""
    seeds = {c["seed"] for c in curves}
    untrained = [{**r, "views": 0} for r in runs if r["kind"] == UNTRAINED and r["seed"] in seeds]
    out = [
        {"variant": c["variant"], "kind": c["kind"], "seed": c["seed"], **p}
        for c in curves
        for p in c["points"]
    ]
    return untrained + out


def _fmt(x: float | None, points: bool) -> str:
    if x is None:
        return "n/a"
    return f"{x:.1f}" if points else f"{x:.2f}"


def table(points: list[dict[str, Any]], rows: tuple[str, ...], baseline: str) -> list[str]:
    """Markdown: per row and views, the mean over seeds of each reading, and each NS row's mean
    paired difference to the baseline at the same views (with its 95 % interval where n > 1)."""
    by = {(p["variant"], p["views"], p["seed"]): p for p in points}
    views = sorted({p["views"] for p in points if p["views"] > 0})
    lines = []
    body = []
    for row in rows:
        for v in views:
            here = [p for (r, vv, _), p in by.items() if r == row and vv == v]
            if not here:
                continue
            cells = []
            for measure, _, pts in READINGS:
                values = [measure_of(p, measure) for p in here]
                values = [x for x in values if x is not None]
                cell = _fmt(float(np.mean(values)), pts) if values else "n/a"
                if row != baseline:
                    d = [
                        measure_of(p, measure) - measure_of(by[(baseline, v, p["seed"])], measure)
                        for p in here
                        if (baseline, v, p["seed"]) in by
                        and measure_of(p, measure) is not None
                        and measure_of(by[(baseline, v, p["seed"])], measure) is not None
                    ]
                    ci = paired_interval(d)
                    if d:
                        cell += f" ({float(np.mean(d)):+{'.1f' if pts else '.2f'}}"
                        cell += f" [{_fmt(ci[0], pts)}, {_fmt(ci[1], pts)}])" if ci else ")"
                cells.append(cell)
            body.append([row, f"{v:,}", str(len(here)), *cells])
    untrained = [p for p in points if p["views"] == 0]
    if untrained:
        body.insert(
            0,
            ["untrained", "0", str(len(untrained))]
            + [
                _fmt(float(np.mean([measure_of(p, m) for p in untrained])), pts)
                if all(measure_of(p, m) is not None for p in untrained)
                else "n/a"
                for m, _, pts in READINGS
            ],
        )
    lines += [
        markdown_table(["row", "views", "seeds", *(t for _, t, _ in READINGS)], body),
        "",
        f"Each cell: the mean over seeds; in brackets, for a row other than `{baseline}`, its mean "
        f"difference to `{baseline}` at the same views, paired by seed [95 % t-interval].",
    ]
    return lines


def plot(points: list[dict[str, Any]], rows: tuple[str, ...], title: str, path: Path) -> None:
    """One panel per reading: each row's mean over seeds against views (thin: each seed), the
    untrained network's mean as a dashed line -> a PNG at ``path``."""
    fig = figure(14.0, 3.6)
    axes = fig.subplots(1, len(READINGS))
    colours = dict(zip(rows, ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple")))
    untrained = [p for p in points if p["views"] == 0]
    for ax, (measure, name, _) in zip(axes, READINGS):
        for row in rows:
            mine = [p for p in points if p["variant"] == row and p["views"] > 0]
            views = sorted({p["views"] for p in mine})
            for seed in sorted({p["seed"] for p in mine}):
                line = [(p["views"], measure_of(p, measure)) for p in mine if p["seed"] == seed]
                line = sorted((v, y) for v, y in line if y is not None)
                if line:
                    ax.plot(*zip(*line), color=colours[row], linewidth=0.6, alpha=0.4)
            means = []
            for v in views:
                ys = [measure_of(p, measure) for p in mine if p["views"] == v]
                ys = [y for y in ys if y is not None]
                means.append(np.mean(ys) if ys else np.nan)
            ax.plot(views, means, "o-", color=colours[row], label=row, markersize=3)
        values = [measure_of(p, measure) for p in untrained]
        if values and all(v is not None for v in values):
            ax.axhline(
                np.mean(values), color="grey", linestyle="--", linewidth=1, label="untrained"
            )
        ax.set_xscale("log")
        ax.minorticks_off()  # the budgets read, labelled
        budgets = sorted({p["views"] for p in points if p["views"] > 0})
        ax.set_xticks(budgets, [f"{v:,}" for v in budgets])
        ax.set_xlabel("views seen")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_png(fig, path, dpi=110)
