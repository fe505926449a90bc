"""The texture-classes report: per-class rows, the fine-vs-rest verdict, Markdown, the plot and the
terminal summary (``nsneg.trainer.analysis.texture_classes`` computes what they show)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nsneg.trainer.analysis.categories import FINE_GROUPS, fine_group
from nsneg.trainer.eval import compare, stats
from nsneg.trainer.eval.report import (
    figure,
    interval_bars,
    markdown_table,
    mean_of_present,
    percent,
    save_png,
    text_table,
)


def _ratio(correct: int, total: int) -> float | None:
    return correct / total if total else None


def _interval(correct: int, total: int) -> list[float] | None:
    ci = stats.wilson(correct, total)
    return None if ci is None else list(ci)


# --------------------------------------------------------------------------- the report


Counts = tuple[np.ndarray, np.ndarray]  # (correct, total) per class index


def texture_class_report(
    classes: list[str], texture: Counts, real: Counts | None, train_counts: np.ndarray, top: int
) -> dict[str, Any]:
    """Per-class rows, the most/least recognisable classes and the fine-vs-rest comparison from
    per-class (correct, total) counts. Class means are macro averages over classes with test images."""
    rows = []
    for i, wnid in enumerate(classes):
        row = {
            "index": i,
            "wnid": wnid,
            "group": fine_group(wnid) or "rest",
            "train": int(train_counts[i]),
            "texture_correct": int(texture[0][i]),
            "texture_n": int(texture[1][i]),
            "texture_acc": _ratio(int(texture[0][i]), int(texture[1][i])),
            "texture_interval": _interval(int(texture[0][i]), int(texture[1][i])),
        }
        if real is not None:
            correct, total = int(real[0][i]), int(real[1][i])
            row.update(
                real_correct=correct,
                real_n=total,
                real_acc=_ratio(correct, total),
                real_interval=_interval(correct, total),
            )
        rows.append(row)
    tested = [r for r in rows if r["texture_acc"] is not None]
    most = sorted(tested, key=lambda r: (-r["texture_acc"], r["wnid"]))[:top]
    least = sorted(tested, key=lambda r: (r["texture_acc"], r["wnid"]))[:top]
    groups = {}
    for name in [*FINE_GROUPS, "rest"]:
        members = [r for r in rows if r["group"] == name]
        texture_mean = mean_of_present([r["texture_acc"] for r in members])
        real_mean = mean_of_present([r.get("real_acc") for r in members])
        texture_pooled = stats.proportion(
            sum(r["texture_correct"] for r in members), sum(r["texture_n"] for r in members)
        )
        groups[name] = {
            "classes": len(members),
            "tested": sum(r["texture_acc"] is not None for r in members),
            "texture_held_out": texture_pooled,
            "mean_texture_acc": texture_mean,
            "mean_real_acc": real_mean,
            "texture_over_real": texture_mean / real_mean
            if texture_mean is not None and real_mean
            else None,
        }
    return {
        "classes": rows,
        "most_recognisable": [r["wnid"] for r in most],
        "least_recognisable": [r["wnid"] for r in least],
        "groups": groups,
    }


def fine_comparison(groups: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per fine group: its held-out texture accuracy against the rest's (all their held-out
    textures pooled), the difference with Newcombe's 95% interval, and the conclusion, which is
    drawn only when the interval excludes zero. The interval treats the textures as independent
    draws; with few classes per group it describes these classes, not the group at large."""
    rest = groups["rest"]["texture_held_out"]
    out = {}
    for name in FINE_GROUPS:
        fine = groups[name]["texture_held_out"]
        diff = stats.difference(fine, rest)
        out[name] = {
            "difference": diff,
            "interval_method": stats.DIFFERENCE_INTERVAL_NAME,
            "conclusive": stats.excludes_zero(diff),
            "conclusion": stats.verdict(
                diff,
                f"{name} are more recognisable from texture than the rest",
                f"{name} are less recognisable from texture than the rest",
            ),
        }
    return out


def fine_verdict(groups: dict[str, dict[str, Any]], comparison: dict[str, dict[str, Any]]) -> str:
    """One sentence per fine group: its held-out texture accuracy against the rest's, each with its
    interval and count, the difference with its interval, and the conclusion or that the data
    cannot tell."""
    rest = groups["rest"]
    sentences = []
    for name, (ancestor, _) in FINE_GROUPS.items():
        fine, found = groups[name], comparison[name]
        if found["difference"]["value"] is None:
            sentences.append(
                f"{name} ({ancestor}) vs rest: not comparable ({fine['tested']} {name} and "
                f"{rest['tested']} other classes with held-out textures)."
            )
            continue
        sentences.append(
            f"{name} ({ancestor}): held-out texture accuracy "
            f"{stats.estimate_text(fine['texture_held_out'])} over {fine['tested']} class(es) vs "
            f"{stats.estimate_text(rest['texture_held_out'])} over {rest['tested']} other class(es): "
            f"{stats.difference_text(found['difference'])} ({stats.DIFFERENCE_INTERVAL_NAME}); "
            f"{found['conclusion']}."
        )
    return " ".join(sentences)


def plot_texture_classes(
    rows: list[dict[str, Any]],
    chance: float,
    path: Path,
    compared: Sequence[dict[str, Any]] = (),
) -> None:
    """Sorted bars of per-class held-out texture accuracy (Wilson 95% error bars, n on each bar),
    fine-group classes in their own colour; with ``compared`` reports (the first is this one), a
    second panel of every model's held-out texture and real-image top-1."""
    tested = sorted(
        (r for r in rows if r["texture_acc"] is not None),
        key=lambda r: (-r["texture_acc"], r["wnid"]),
    )
    width = max(6.0, min(24.0, 0.25 * len(tested) + 2))
    fig = figure(width + (5 if compared else 0), 4.5)
    ax = fig.add_subplot(1, 2, 1) if compared else fig.add_subplot()
    if compared:
        _plot_compared(fig.add_subplot(1, 2, 2), compared, chance)
    labelled = len(tested) <= 60
    interval_bars(
        ax,
        [r["wnid"] for r in tested] if labelled else [""] * len(tested),
        [
            {
                "estimates": [
                    stats.proportion(r["texture_correct"], r["texture_n"]) for r in tested
                ],
                "color": ["tab:orange" if r["group"] != "rest" else "tab:blue" for r in tested],
                "bar_labels": [f"n={r['texture_n']}" for r in tested] if labelled else None,
            }
        ],
        width=0.85,
        chance=100 * chance,
        chance_label=f"chance ({100 * chance:.1f}%)",
        rotation=90,
    )
    if labelled:
        ax.tick_params(axis="x", labelsize=7)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(tested)} classes, sorted")
    from matplotlib.patches import Patch

    ax.legend(
        handles=[
            Patch(color="tab:orange", label=" / ".join(FINE_GROUPS)),
            Patch(color="tab:blue", label="rest"),
            *ax.get_legend_handles_labels()[0],
        ],
        fontsize=8,
        loc="upper right",
    )
    ax.set_ylabel("held-out texture accuracy (%), 95% interval")
    ax.set_ylim(0, 110)
    ax.set_title("How much of each class is recognisable from texture alone")
    save_png(fig, path)


def _with_interval(acc: float | None, interval: list[float] | None) -> str:
    if acc is None:
        return "-"
    return f"{percent(acc)} " + (
        "" if interval is None else f"[{100 * interval[0]:.0f}, {100 * interval[1]:.0f}]"
    )


def _plot_compared(ax, reports: Sequence[dict[str, Any]], chance: float) -> None:
    """Each model's held-out texture and real top-1 with Wilson 95% error bars, chance dashed."""
    interval_bars(
        ax,
        [r["name"] for r in reports],
        [
            {"label": label, "estimates": [_texture_estimate(r, key) for r in reports]}
            for key, label in (("texture", "held-out textures"), ("real", "real images"))
        ],
        chance=100 * chance,
        rotation=30,
    )
    ax.set_ylim(0, 100)
    ax.set_ylabel("top-1 (%), 95% interval")
    ax.set_title("compared")
    ax.legend(fontsize=8)


def class_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Headers and cells of per-class rows (real-image columns only when there were real images);
    each accuracy with its Wilson 95% interval and its count."""
    has_real = bool(rows) and "real_acc" in rows[0]
    headers = ["class", "group", "train", "texture held-out [95%]", "n"] + (
        ["real [95%]", "n"] if has_real else []
    )
    cells = [
        [
            r["wnid"],
            r["group"],
            r["train"],
            _with_interval(r["texture_acc"], r.get("texture_interval")),
            r["texture_n"],
        ]
        + ([_with_interval(r["real_acc"], r.get("real_interval")), r["real_n"]] if has_real else [])
        for r in rows
    ]
    return headers, cells


def _texture_estimate(report: dict[str, Any], key: str) -> dict[str, Any]:
    """A report's pooled top-1 (``texture_held_out`` or ``real``) from its per-class counts."""
    rows = report["classes"]
    if key == "real" and (not rows or "real_n" not in rows[0]):
        return stats.proportion(0, 0)
    return stats.proportion(
        sum(r[f"{key}_correct"] for r in rows), sum(r[f"{key}_n"] for r in rows)
    )


def comparison_lines(reports: Sequence[dict[str, Any]]) -> list[str]:
    """The Markdown section that puts the first report beside the others: top-1 on held-out
    textures and real images (Wilson 95%), the fine-vs-rest difference (Newcombe 95%), the
    difference to the first model, chance, and what differs between the evaluations."""
    first = _texture_estimate(reports[0], "texture")
    rows = []
    for r in reports:
        texture = _texture_estimate(r, "texture")
        fine = (
            fine_comparison(r["groups"])
            if all("texture_held_out" in g for g in r["groups"].values())
            else {}
        )
        rows.append(
            [
                r["name"],
                stats.estimate_text(texture),
                stats.estimate_text(_texture_estimate(r, "real")),
                percent(r["top1"]["chance"]),
                "; ".join(f"{g}: {stats.difference_text(v['difference'])}" for g, v in fine.items())
                or "-",
                "" if r is reports[0] else stats.difference_text(stats.difference(texture, first)),
            ]
        )
    differ = compare.differences(
        [r["name"] for r in reports],
        [
            ("features", [r["features"]["description"] for r in reports]),
            ("image size (px)", [r["features"]["image_size"] for r in reports]),
            ("shards", [f"{r['shards']} split {r['split']}" for r in reports]),
            ("held-out fraction", [r["holdout"] for r in reports]),
            ("classes", [len(r["classes"]) for r in reports]),
            ("held-out textures", [r["texture_held_out"] for r in reports]),
            ("real images", [f"{r['real']['samples']} ({r['real']['source']})" for r in reports]),
            ("probe epochs, lr, seed", [f"{r['epochs']}, {r['lr']}, {r['seed']}" for r in reports]),
        ],
    )
    return [
        "## Compared",
        "",
        markdown_table(
            [
                "model",
                "held-out textures [95%]",
                "real [95%]",
                "chance",
                "fine - rest [95%]",
                f"textures vs {reports[0]['name']}",
            ],
            rows,
        ),
        "",
        *compare.differences_markdown(differ, "models"),
        "",
    ]


def texture_markdown(report: dict[str, Any], others: Sequence[dict[str, Any]] = ()) -> str:
    rows, has_real = report["classes"], report["real"]["source"] is not None
    by_wnid = {r["wnid"]: r for r in rows}
    most, least = (
        [by_wnid[w] for w in report["most_recognisable"]],
        [by_wnid[w] for w in report["least_recognisable"]],
    )
    top1s = report["top1"]
    md = [
        f"# Texture recognisability per class: {report['name']}",
        "",
        *(comparison_lines(compare.unique_names([report, *others])) if others else []),
        f"* features: {report['features']['description']}",
        f"* shards: `{report['shards']}` split `{report['split']}`; {report['texture_train']} textures train the "
        "probe, "
        f"{report['texture_held_out']} are held out (sha256 of the key < {report['holdout']})",
        f"* real images: {report['real']['source'] or 'none (the shards hold no source photos and no --val was given)'}"
        + (f", {report['real']['samples']} images" if has_real else ""),
        f"* top-1 ({stats.INTERVAL_NAME}): held-out textures "
        f"{stats.estimate_text(top1s['texture_held_out_estimate'])}, real "
        f"{stats.estimate_text(top1s['real_estimate'])}, chance {percent(top1s['chance'])} "
        f"({len(rows)} classes)",
        "",
        "## Fine-grained classes vs the rest",
        "",
        report["fine_vs_rest"],
        "",
        markdown_table(
            [
                "group",
                "classes",
                "tested",
                "held-out textures (pooled) [95%]",
                "mean texture acc",
                "mean real acc",
                "texture / real",
            ],
            [
                [
                    name,
                    g["classes"],
                    g["tested"],
                    stats.estimate_text(g["texture_held_out"]),
                    percent(g["mean_texture_acc"]),
                    percent(g["mean_real_acc"]),
                    "-" if g["texture_over_real"] is None else f"{g['texture_over_real']:.3f}",
                ]
                for name, g in report["groups"].items()
            ],
        ),
        "",
        f"## Most recognisable from texture (top {len(most)})",
        "",
        markdown_table(*class_table(most)),
        "",
        f"## Least recognisable from texture (bottom {len(least)})",
        "",
        markdown_table(*class_table(least)),
        "",
        "## All classes",
        "",
        markdown_table(*class_table(rows)),
    ]
    return "\n".join(md)


# --------------------------------------------------------------------------- the analysis


def terminal_summary(
    report: dict[str, Any], top: int, others: Sequence[dict[str, Any]] = ()
) -> str:
    """What ``nsneg-analyze texture-classes`` prints: top-1s, the per-class table (or the most and
    least recognisable classes), the fine-vs-rest verdict and where the files went."""
    rows, chance = report["classes"], report["top1"]["chance"]
    lines = [
        f"top-1 ({stats.INTERVAL_NAME}): held-out textures "
        f"{stats.estimate_text(report['top1']['texture_held_out_estimate'])}, real "
        f"{stats.estimate_text(report['top1']['real_estimate'])}, chance {percent(chance)}; "
        f"probe trained on {report['texture_train']} textures"
    ]
    by_wnid = {r["wnid"]: r for r in rows}
    if len(rows) <= 2 * top:
        ordered = sorted(
            rows, key=lambda r: (r["texture_acc"] is None, -(r["texture_acc"] or 0), r["wnid"])
        )
        lines.append(text_table(*class_table(ordered)))
    else:
        for title, wnids in (
            ("most", report["most_recognisable"]),
            ("least", report["least_recognisable"]),
        ):
            lines.append(
                f"{title} recognisable from texture:\n{text_table(*class_table([by_wnid[w] for w in wnids]))}"
            )
    lines.append(report["fine_vs_rest"])
    if others:
        lines.append("\n".join(comparison_lines(compare.unique_names([report, *others]))).rstrip())
    lines.append(
        f"wrote {report['outputs']['md']}, .json, .png and the probe {report['outputs']['probe']}"
    )
    return "\n".join(lines)
