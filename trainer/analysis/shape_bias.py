"""``shape-bias``: the cue-conflict protocol of Geirhos et al. (ICLR 2019).

Images whose shape comes from one category and texture from another; shape bias is the
fraction of shape decisions among the decisions that follow either cue. It reads the
texture-vs-shape stimuli, or makes a crude cue-conflict set from our own shards
(``cue_conflict.cue_conflict_from_shards``) when those stimuli are not at hand.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from nsneg.datasets_manifest.format.skip_log import DEFAULT_MAX_SKIP_FRACTION, SkipLog
from nsneg.trainer.analysis.categories import GEIRHOS_CATEGORIES, covered_categories
from nsneg.trainer.analysis.cue_conflict import (
    CueImage,
    cue_conflict_from_shards,
    read_cue_conflict_dir,
)
from nsneg.trainer.eval import compare, outputs, stats
from nsneg.trainer.eval.features import backbone_from_checkpoint, dataset_features, eval_transform
from nsneg.trainer.eval.probes import load_linear_head
from nsneg.trainer.eval.report import (
    figure,
    markdown_table,
    save_png,
    text_table,
    write_report,
)


class ImageList(Dataset):
    """Images (paths or PIL images) in a given order; the target is the position in the list."""

    def __init__(self, images: Sequence[Path | Image.Image], transform: Callable):
        self.images, self.transform = list(images), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.images[i]
        if not isinstance(image, Image.Image):
            with Image.open(image) as f:
                image = f.convert("RGB")
        return self.transform(image), i


def category_decisions(probabilities: torch.Tensor, covered: dict[str, list[int]]) -> list[str]:
    """Geirhos et al.'s decision: each category's probability is the mean of its classes' softmax
    probabilities (only the classes the head has), and the decision is the most probable category."""
    names = list(covered)
    scores = torch.stack([probabilities[:, covered[n]].mean(dim=1) for n in names], dim=1)
    return [names[i] for i in scores.argmax(dim=1).tolist()]


def cue_outcome(decision: str, shape: str, texture: str, covered: Sequence[str]) -> str:
    """``shape``, ``texture``, ``other``, or ``uncovered`` when the head cannot name one of the two cues
    (such an image could only ever follow the other cue, which would bias the count)."""
    if shape not in covered or texture not in covered:
        return "uncovered"
    return "shape" if decision == shape else "texture" if decision == texture else "other"


def shape_bias(outcomes: Sequence[str]) -> float | None:
    """Shape decisions / (shape + texture decisions); None when no decision followed either cue."""
    shape, texture = outcomes.count("shape"), outcomes.count("texture")
    return shape / (shape + texture) if shape + texture else None


def _estimate(report: dict[str, Any]) -> dict[str, Any]:
    """A report's shape bias with its Wilson interval (recomputed from the counts, so reports
    written before intervals were recorded compare too)."""
    counts = report["counts"]
    return stats.proportion(counts["shape"], counts["shape"] + counts["texture"])


def plot_shape_bias(reports: Sequence[dict[str, Any]], path: Path) -> None:
    """Decision counts, and shape bias with its 95% interval per shape category (Geirhos et al.'s
    per-category view), of the first report; with others, a third panel of every report's shape
    bias. Chance (random decisions among the covered categories) is 50% shape bias."""
    report = reports[0]
    counts, per_category = report["counts"], report["per_shape_category"]
    panels = 3 if len(reports) > 1 else 2
    fig = figure(5 * panels, 4)
    left, right = fig.add_subplot(1, panels, 1), fig.add_subplot(1, panels, 2)
    names = ["shape", "texture", "other", "uncovered"]
    left.bar(
        names, [counts[n] for n in names], color=["tab:blue", "tab:orange", "tab:grey", "lightgrey"]
    )
    left.set_ylabel("images")
    left.set_title(
        f"decisions of {report['name']}\n(shape bias {stats.estimate_text(_estimate(report))})"
    )
    cats = [c for c, v in per_category.items() if v["shape_bias"] is not None]
    estimates = [
        stats.proportion(
            per_category[c]["shape"], per_category[c]["shape"] + per_category[c]["texture"]
        )
        for c in cats
    ]
    values = [100 * e["value"] for e in estimates]
    right.barh(
        cats,
        values,
        xerr=[
            [v - 100 * e["low"] for v, e in zip(values, estimates)],
            [100 * e["high"] - v for v, e in zip(values, estimates)],
        ],
        capsize=2,
        color="tab:blue",
    )
    right.set_xlim(0, 100)
    right.axvline(50, color="grey", linestyle="--", linewidth=1, label="chance (50%)")
    right.set_xlabel("shape bias (%) by shape category, 95% interval")
    right.legend(fontsize="small")
    if len(reports) > 1:
        ax = fig.add_subplot(1, panels, 3)
        found = [_estimate(r) for r in reports]
        values = [math.nan if e["value"] is None else 100 * e["value"] for e in found]
        ax.bar(
            range(len(reports)),
            values,
            yerr=[
                [0 if e["low"] is None else v - 100 * e["low"] for v, e in zip(values, found)],
                [0 if e["high"] is None else 100 * e["high"] - v for v, e in zip(values, found)],
            ],
            capsize=3,
            color="tab:blue",
        )
        ax.set_xticks(range(len(reports)), [r["name"] for r in reports], rotation=30, ha="right")
        ax.axhline(50, color="grey", linestyle="--", linewidth=1, label="chance (50%)")
        ax.set_ylim(0, 100)
        ax.set_ylabel("shape bias (%), 95% interval")
        ax.set_title("compared")
        ax.legend(fontsize="small")
    save_png(fig, path)


def _shape_summary(report: dict[str, Any]) -> list[list[Any]]:
    counts = report["counts"]
    return [
        [f"shape bias [{stats.INTERVAL_NAME}]", stats.estimate_text(_estimate(report))],
        ["chance (random decisions)", "50.0% shape bias"],
        ["shape decisions", counts["shape"]],
        ["texture decisions", counts["texture"]],
        ["other decisions", counts["other"]],
        ["uncovered (left out)", counts["uncovered"]],
        ["same category (skipped)", report["left_out"].get("same category", 0)],
        ["categories covered", f"{report['categories_covered']} / {report['categories_total']}"],
    ]


def _comparison(reports: Sequence[dict[str, Any]]) -> list[str]:
    """The Markdown section that puts the first report's shape bias beside the others'."""
    first = _estimate(reports[0])
    rows = []
    for r in reports:
        e = _estimate(r)
        rows.append(
            [
                r["name"],
                stats.estimate_text(e),
                r["counts"]["shape"],
                r["counts"]["texture"],
                r["counts"]["other"],
                f"{r['categories_covered']} / {r['categories_total']}",
                "" if r is reports[0] else stats.difference_text(stats.difference(e, first)),
            ]
        )
    names = [r["name"] for r in reports]
    differ = compare.differences(
        names,
        [
            ("images", [r.get("stimuli", r["source"]) for r in reports]),
            ("categories", [r["mode"] for r in reports]),
            ("categories covered", [r["categories_covered"] for r in reports]),
            ("images scored", [r["images"] for r in reports]),
            ("image size (px)", [r["image_size"] for r in reports]),
            ("head classes", [r["head_classes"] for r in reports]),
        ],
    )
    return [
        "## Compared",
        "",
        f"Shape bias [{stats.INTERVAL_NAME}]; the difference to {reports[0]['name']} with "
        f"{stats.DIFFERENCE_INTERVAL_NAME} (independent samples: conservative on the same images). "
        "Chance: 50%.",
        "",
        markdown_table(
            [
                "model",
                "shape bias",
                "shape",
                "texture",
                "other",
                "categories",
                f"vs {reports[0]['name']}",
            ],
            rows,
        ),
        "",
        *compare.differences_markdown(differ),
        "",
    ]


def _shape_markdown(reports: Sequence[dict[str, Any]]) -> str:
    report = reports[0]
    covered = [[c, " ".join(w)] for c, w in report["covered_categories"].items()]
    per_category = [
        [
            c,
            v["images"],
            v["shape"],
            v["texture"],
            stats.estimate_text(stats.proportion(v["shape"], v["shape"] + v["texture"])),
        ]
        for c, v in report["per_shape_category"].items()
    ]
    md = [
        f"# Shape bias (cue conflict) of {report['name']}",
        "",
        *(_comparison(reports) if len(reports) > 1 else []),
        f"* images: {report['source']}",
        f"* checkpoint `{report['checkpoint']}`, head `{report['linear_head']}` ({report['head_classes']} classes), "
        f"image size {report['image_size']}",
        f"* categories: {report['category_source']}",
        "",
        markdown_table(["", "value"], _shape_summary(report)),
        "",
        "## Covered categories",
        "",
        markdown_table(["category", "head classes"], covered),
        "",
        "## By shape category",
        "",
        markdown_table(
            ["shape category", "images", "shape", "texture", "shape bias [95%]"], per_category
        ),
    ]
    if report["warnings"]:
        md += ["", "## Warnings", "", *[f"* {w}" for w in report["warnings"]]]
    return "\n".join(md)


def summary_table(report: dict[str, Any], others: Sequence[dict[str, Any]] = ()) -> str:
    """What ``nsneg-analyze shape-bias`` prints: the summary rows as a terminal table, then the
    comparison with ``others`` when there are any."""
    text = text_table(["", "value"], _shape_summary(report))
    if others:
        reports = compare.unique_names([report, *others])
        text += "\n\n" + "\n".join(_comparison(reports)).rstrip()
    return text


def load_report(path: Path) -> dict[str, Any]:
    """An earlier shape-bias.json (for ``--compare``); ValueError when it is not one."""
    report = compare.load_report(path, "analysis", "shape-bias", "nsneg-analyze shape-bias")
    return {"name": outputs.run_name(Path(report["checkpoint"])), **report}


# --------------------------------------------------------------------------- the analysis


def analyse(
    checkpoint_path: Path,
    head_path: Path,
    cue_dir: Path | None,
    shards: Path | None,
    split: str,
    n_pairs: int,
    seed: int,
    image_size: int | None,
    batch_size: int,
    workers: int,
    device: torch.device,
    out_dir: Path,
    max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION,
    name: str | None = None,
    others: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Score cue-conflict images (``cue_dir``, or ``n_pairs`` made from ``shards``) with the checkpoint's
    backbone and its linear head; write shape-bias.{md,json,png} into ``out_dir`` (the Markdown
    and plot beside ``others``, earlier shape-bias reports); return the report. ``out_dir`` must not
    hold another checkpoint's report (``outputs.claim``)."""
    outputs.claim(out_dir, "shape-bias", outputs.evaluated(checkpoint_path))
    if (cue_dir is None) == (shards is None):
        raise ValueError("give exactly one of cue_dir (--cue-conflict) or shards (--from-shards)")
    head, head_info = load_linear_head(head_path)
    backbone, config = backbone_from_checkpoint(checkpoint_path)
    size = image_size or int(head_info.get("image_size") or config.get("image_size", 224))
    head_classes: list[str] = list(head_info["classes"])
    with torch.no_grad():
        feature_dim = backbone(torch.zeros(1, 3, size, size)).shape[1]
    if feature_dim != head.in_features:
        raise ValueError(
            f"the head takes {head.in_features} features, the backbone gives {feature_dim}: "
            "was it trained on another checkpoint's architecture?"
        )

    skips = SkipLog(max_skip_fraction)
    if cue_dir is not None:
        mode, categories = "geirhos-16", GEIRHOS_CATEGORIES
        images, left_out = read_cue_conflict_dir(cue_dir, list(categories))
        made: list[dict[str, Any]] = []
        source = stimuli = str(cue_dir)
    else:
        mode, categories = "shard-classes", {wnid: (wnid,) for wnid in head_classes}
        made_dir = out_dir / "cue-conflict-from-shards"
        images, made = cue_conflict_from_shards(
            shards, split, head_classes, n_pairs, seed, made_dir, skips
        )
        left_out = {"same category": []}
        stimuli = f"{n_pairs} images made from {shards} (split {split}, seed {seed})"
        source = f"{stimuli} in {made_dir}"
    if not images:
        raise ValueError(
            f"no cue-conflict images to score in {cue_dir} (left out: "
            f"{ {k: len(v) for k, v in left_out.items()} })"
        )
    covered = covered_categories(head_classes, categories)
    if not covered:
        raise ValueError(
            f"the head's {len(head_classes)} classes cover none of the {mode} categories"
        )

    dataset = ImageList([im.image for im in images], eval_transform(size))
    features, _ = dataset_features(
        backbone, dataset, batch_size, workers, device, "cue-conflict images"
    )
    head = head.to(device)
    with torch.no_grad():
        probabilities = head(features.to(device)).softmax(dim=1).cpu()  # [N, C]
    decisions = category_decisions(probabilities, covered)
    outcomes = [
        cue_outcome(d, im.shape, im.texture, list(covered)) for d, im in zip(decisions, images)
    ]
    counts = {k: outcomes.count(k) for k in ("shape", "texture", "other", "uncovered")}
    bias = shape_bias(outcomes)
    per_category = _per_shape_category(images, outcomes)
    warnings = _warnings(mode, covered, len(categories), counts["shape"] + counts["texture"])
    decided = counts["shape"] + counts["texture"]
    report = {
        "analysis": "shape-bias",
        "name": name or outputs.run_name(checkpoint_path),
        "evaluated": outputs.evaluated(checkpoint_path),
        "mode": mode,
        "source": source,
        "stimuli": stimuli,
        "checkpoint": str(checkpoint_path),
        "linear_head": str(head_path),
        "image_size": size,
        "head_classes": len(head_classes),
        "shape_bias": bias,
        "shape_bias_estimate": stats.proportion(counts["shape"], decided),
        "interval_method": stats.INTERVAL_NAME,
        # Decisions at random among the covered categories: shape and texture equally likely.
        "chance": {"shape_bias": 0.5, "follows_a_cue": min(1.0, 2 / len(covered))},
        "counts": counts,
        "images": len(images),
        "left_out": {k: len(v) for k, v in left_out.items()},
        "covered_categories": {
            name: [head_classes[i] for i in idx] for name, idx in covered.items()
        },
        "categories_covered": len(covered),
        "categories_total": len(categories),
        "category_source": (
            "Geirhos et al. 2019, rgeirhos/texture-vs-shape code/helper/human_categories.py "
            "(<category>_indices), mean probability per category"
            if mode == "geirhos-16"
            else "the linear head's own classes"
        ),
        "per_shape_category": per_category,
        "warnings": warnings,
        "bad_samples": skips.finish() if shards is not None else None,
        "decisions": [
            {"file": im.name, "shape": im.shape, "texture": im.texture, "decision": d, "outcome": o}
            for im, d, o in zip(images, decisions, outcomes)
        ],
        "made": made,
        "outputs": {name: str(out_dir / f"shape-bias.{name}") for name in ("md", "json", "png")},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = compare.unique_names([report, *others])
    plot_shape_bias(reports, out_dir / "shape-bias.png")
    write_report(out_dir, "shape-bias", report, _shape_markdown(reports))
    return report


def _per_shape_category(
    images: Sequence[CueImage], outcomes: Sequence[str]
) -> dict[str, dict[str, Any]]:
    per_category = {}
    for name in sorted({im.shape for im in images}):
        own = [o for o, im in zip(outcomes, images) if im.shape == name]
        per_category[name] = {
            "images": len(own),
            "shape": own.count("shape"),
            "texture": own.count("texture"),
            "shape_bias": shape_bias(own),
            "shape_bias_estimate": stats.proportion(
                own.count("shape"), own.count("shape") + own.count("texture")
            ),
        }
    return per_category


def _warnings(
    mode: str, covered: dict[str, list[int]], total_categories: int, decided: int
) -> list[str]:
    warnings = []
    if mode == "geirhos-16" and len(covered) < total_categories:
        warnings.append(
            f"the head covers only {len(covered)} of the 16 categories ({', '.join(covered)}): decisions "
            "are among those only, images with an uncovered cue are left out, and few categories make "
            "this shape bias a weak number (Geirhos et al.'s models cover all 16)"
        )
    if decided < 20:
        warnings.append(f"only {decided} decisions followed either cue: the number is noisy")
    return warnings
