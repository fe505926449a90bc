"""The texture-classes report: per-class rows, the fine-vs-rest verdict, Markdown, the plot and the
terminal summary (``nsneg.trainer.analysis.texture_classes`` computes what they show)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nsneg.trainer.analysis.categories import FINE_GROUPS, fine_group
from nsneg.trainer.eval.report import (
    figure,
    markdown_table,
    mean_of_present,
    percent,
    save_png,
    text_table,
)


def _ratio(correct: int, total: int) -> float | None:
    return correct / total if total else None


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
        }
        if real is not None:
            correct, total = int(real[0][i]), int(real[1][i])
            row.update(real_correct=correct, real_n=total, real_acc=_ratio(correct, total))
        rows.append(row)
    tested = [r for r in rows if r["texture_acc"] is not None]
    most = sorted(tested, key=lambda r: (-r["texture_acc"], r["wnid"]))[:top]
    least = sorted(tested, key=lambda r: (r["texture_acc"], r["wnid"]))[:top]
    groups = {}
    for name in [*FINE_GROUPS, "rest"]:
        members = [r for r in rows if r["group"] == name]
        texture_mean = mean_of_present([r["texture_acc"] for r in members])
        real_mean = mean_of_present([r.get("real_acc") for r in members])
        groups[name] = {
            "classes": len(members),
            "tested": sum(r["texture_acc"] is not None for r in members),
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


def fine_verdict(groups: dict[str, dict[str, Any]]) -> str:
    """One sentence per fine group: its mean texture accuracy against the rest's, or why there is none."""
    rest = groups["rest"]
    sentences = []
    for name, (ancestor, _) in FINE_GROUPS.items():
        fine = groups[name]
        if fine["mean_texture_acc"] is None or rest["mean_texture_acc"] is None:
            sentences.append(
                f"{name} ({ancestor}) vs rest: not comparable ({fine['tested']} {name} and "
                f"{rest['tested']} other classes with held-out textures)."
            )
            continue
        diff = fine["mean_texture_acc"] - rest["mean_texture_acc"]
        sentences.append(
            f"{name} ({ancestor}): mean texture accuracy {percent(fine['mean_texture_acc'])} over {fine['tested']} "
            f"class(es) vs {percent(rest['mean_texture_acc'])} over {rest['tested']} other class(es) "
            f"({100 * diff:+.1f} points: "
            f"{name} are {'more' if diff > 0 else 'less' if diff < 0 else 'as'} recognisable from texture"
            f"{' than' if diff else ' as'} the rest)."
        )
    return " ".join(sentences)


def plot_texture_classes(rows: list[dict[str, Any]], chance: float, path: Path) -> None:
    """Sorted bars of per-class held-out texture accuracy, fine-group classes in their own colour."""
    tested = sorted(
        (r for r in rows if r["texture_acc"] is not None),
        key=lambda r: (-r["texture_acc"], r["wnid"]),
    )
    fig = figure(max(6.0, min(24.0, 0.25 * len(tested) + 2)), 4.5)
    ax = fig.add_subplot()
    colours = ["tab:orange" if r["group"] != "rest" else "tab:blue" for r in tested]
    ax.bar(range(len(tested)), [100 * r["texture_acc"] for r in tested], color=colours, width=0.85)
    ax.axhline(
        100 * chance,
        color="grey",
        linestyle="--",
        linewidth=1,
        label=f"chance ({100 * chance:.1f}%)",
    )
    if len(tested) <= 60:
        ax.set_xticks(range(len(tested)), [r["wnid"] for r in tested], rotation=90, fontsize=7)
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
    ax.set_ylabel("held-out texture accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("How much of each class is recognisable from texture alone")
    save_png(fig, path)


def class_table(rows: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Headers and cells of per-class rows (real-image columns only when there were real images)."""
    has_real = bool(rows) and "real_acc" in rows[0]
    headers = ["class", "group", "train", "texture held-out", "n"] + (
        ["real", "n"] if has_real else []
    )
    cells = [
        [r["wnid"], r["group"], r["train"], percent(r["texture_acc"]), r["texture_n"]]
        + ([percent(r["real_acc"]), r["real_n"]] if has_real else [])
        for r in rows
    ]
    return headers, cells


def texture_markdown(report: dict[str, Any]) -> str:
    rows, has_real = report["classes"], report["real"]["source"] is not None
    by_wnid = {r["wnid"]: r for r in rows}
    most, least = (
        [by_wnid[w] for w in report["most_recognisable"]],
        [by_wnid[w] for w in report["least_recognisable"]],
    )
    top1s = report["top1"]
    md = [
        "# Texture recognisability per class",
        "",
        f"* features: {report['features']['description']}",
        f"* shards: `{report['shards']}` split `{report['split']}`; {report['texture_train']} textures train the "
        "probe, "
        f"{report['texture_held_out']} are held out (sha256 of the key < {report['holdout']})",
        f"* real images: {report['real']['source'] or 'none (the shards hold no source photos and no --val was given)'}"
        + (f", {report['real']['samples']} images" if has_real else ""),
        f"* top-1: held-out textures {percent(top1s['texture_held_out'])}, real {percent(top1s['real'])}, "
        f"chance {percent(top1s['chance'])} ({len(rows)} classes)",
        "",
        "## Fine-grained classes vs the rest",
        "",
        report["fine_vs_rest"],
        "",
        markdown_table(
            ["group", "classes", "tested", "mean texture acc", "mean real acc", "texture / real"],
            [
                [
                    name,
                    g["classes"],
                    g["tested"],
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


def terminal_summary(report: dict[str, Any], top: int) -> str:
    """What ``nsneg-analyze texture-classes`` prints: top-1s, the per-class table (or the most and
    least recognisable classes), the fine-vs-rest verdict and where the files went."""
    rows, chance = report["classes"], report["top1"]["chance"]
    lines = [
        f"top-1: held-out textures {percent(report['top1']['texture_held_out'])} "
        f"({report['texture_held_out']}), real {percent(report['top1']['real'])} ({report['real']['samples']}), "
        f"chance {percent(chance)}; probe trained on {report['texture_train']} textures"
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
    lines.append(
        f"wrote {report['outputs']['md']}, .json, .png and the probe {report['outputs']['probe']}"
    )
    return "\n".join(lines)
