"""How a robustness report is shown: the Markdown table (one checkpoint against others, then the
difference of every pair of training configurations with its interval and verdict), the bar plot,
and the three files ``nsneg-eval robustness`` writes (robustness.md, .json, .png)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nsneg.trainer.eval import compare, stats
from nsneg.trainer.eval.configurations import configuration, differing, group_runs
from nsneg.trainer.eval.corruptions import CORRUPTIONS
from nsneg.trainer.eval.outputs import claim
from nsneg.trainer.eval.report import (
    figure,
    interval_bars,
    markdown_table,
    percent,
    save_png,
    write_report,
)
from nsneg.trainer.eval.robustness import SET_TITLES


def _pct(value: float | None) -> str:
    return percent(value, digits=2, missing="n/a", suffix="")


def _cell(top1: float | None, images: int) -> str:
    """``"58.33 [31.9, 80.7]"``: top-1 (%) and its Wilson interval; ``n/a`` without images."""
    if top1 is None:
        return "n/a"
    return f"{_pct(top1)} {stats.interval_text(stats.from_accuracy(top1, images))}"


def _rows(report: dict[str, Any]) -> dict[str, tuple[float | None, int]]:
    """Comparison rows of a report: title -> (top-1, distinct images behind it)."""
    rows = {
        SET_TITLES[key]: (result["top1"], result["images"])
        for key, result in report["sets"].items()
    }
    c = report.get("imagenet_c")
    if c:
        variants = [r for e in c["corruptions"].values() for r in e["severities"].values()]
        rows["ImageNet-C mean"] = (c["mean"], max(r["images"] for r in variants))
        for name in CORRUPTIONS:
            if name in c["corruptions"]:
                entry = c["corruptions"][name]
                rows[f"C: {name}"] = (
                    entry["mean"],
                    max(r["images"] for r in entry["severities"].values()),
                )
    return rows


def _row_order(reports: Sequence[dict[str, Any]]) -> list[str]:
    seen = [title for report in reports for title in _rows(report)]
    canonical = [*SET_TITLES.values(), "ImageNet-C mean", *(f"C: {name}" for name in CORRUPTIONS)]
    return [title for title in canonical if title in seen]


def _span(values: Iterable[int]) -> str:
    values = list(values)
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def _chance(report: dict[str, Any]) -> float:
    return report.get("chance") or 1 / report["head_classes"]


def _c_names(report: dict[str, Any]) -> list[str]:
    return list((report.get("imagenet_c") or {}).get("corruptions", {}))


def differences(reports: Sequence[dict[str, Any]]) -> list[str]:
    """What differs between the reports besides the checkpoint, one sentence each: the head's
    classes, image size, architecture, the sets and their image counts, the corruptions, the
    severities, ImageNet-C's source and the per-class cap."""
    if len(reports) < 2:
        return []

    def c_field(report: dict[str, Any], get) -> Any:
        return get(report["imagenet_c"]) if report.get("imagenet_c") else "none"

    fields = [
        ("head classes", [r["head_classes"] for r in reports]),
        ("image size (px)", [r["image_size"] for r in reports]),
        ("architecture", [r["arch"] for r in reports]),
        ("images per class capped at", [r.get("max_per_class") for r in reports]),
        *(
            (
                title,
                [
                    "not evaluated"
                    if key not in r["sets"]
                    else f"{r['sets'][key]['images']} images of {r['sets'][key]['classes']} classes"
                    for r in reports
                ],
            )
            for key, title in SET_TITLES.items()
        ),
        (
            "ImageNet-C corruptions",
            [", ".join(c for c in CORRUPTIONS if c in _c_names(r)) or "none" for r in reports],
        ),
        (
            "ImageNet-C severities",
            [c_field(r, lambda c: ",".join(map(str, c["severities"]))) for r in reports],
        ),
        ("ImageNet-C source", [c_field(r, lambda c: c["source"]) for r in reports]),
        (
            "ImageNet-C images per variant",
            [
                c_field(
                    r,
                    lambda c: _span(
                        v["images"]
                        for e in c["corruptions"].values()
                        for v in e["severities"].values()
                    ),
                )
                for r in reports
            ],
        ),
    ]
    found = compare.differences([r["name"] for r in reports], fields)
    subjects = [r.get("evaluated") for r in reports]
    repeated = sorted({s for s in subjects if s is not None and subjects.count(s) > 1})
    found += [
        f"the same checkpoint ({s}) is in several columns: "
        + ", ".join(r["name"] for r in reports if r.get("evaluated") == s)
        for s in repeated
    ]
    found += [
        f"the linear head of {r['name']} was trained on features of {r['head_checkpoint']}, "
        f"not of {r['checkpoint']}"
        for r in reports
        if r.get("head_checkpoint")
        and Path(r["head_checkpoint"]).resolve() != Path(r["checkpoint"]).resolve()
    ]
    return found


def markdown(reports: Sequence[dict[str, Any]]) -> str:
    """The first report against the others (top-1 % with its Wilson 95% interval), chance, what
    differs between them, then the first report's counts and its ImageNet-C per severity."""
    report = reports[0]
    per_report = [_rows(r) for r in reports]
    comparison = []
    for title in _row_order(reports):
        cells = [rows.get(title) for rows in per_report]
        sizes = {cell[1] for cell in cells if cell is not None}
        mark = " *" if len(sizes) > 1 else ""
        comparison.append(
            [title + mark, *("–" if cell is None else _cell(*cell) for cell in cells)]
        )
    comparison.append(["chance (1 / head classes)", *(_pct(_chance(r)) for r in reports)])
    lines = [
        f"# Robustness of {report['name']}",
        "",
        f"Linear head on frozen {report['arch']} features at {report['image_size']} px, "
        f"{report['head_classes']} classes. Top-1 (%) [{stats.INTERVAL_NAME} interval]:",
        "",
        markdown_table(["Set", *(r["name"] for r in reports)], comparison),
    ]
    differ = differences(reports)
    if len(reports) > 1:
        lines += [
            "",
            "\\* measured on different numbers of images for different checkpoints."
            if any(row[0].endswith(" *") for row in comparison)
            else "Each row is measured on the same number of images for every checkpoint that has it.",
        ]
        lines += (
            [
                "",
                "What differs between the checkpoints' evaluations:",
                "",
                *(f"* {d}" for d in differ),
            ]
            if differ
            else ["", "The evaluations differ only in the checkpoint."]
        )
        groups = configuration_groups(reports)
        titles = {t: t for t in _row_order(reports)}
        if len(groups) > 1:
            lines += ["", *compare.pairwise_markdown(compare.pairwise(groups, titles), titles)]
            settings = [k for k in differing([g["configuration"] for g in groups]) if k != "report"]
            lines += [
                "",
                "Settings that differ between the configurations, as the trainer used them:",
                "",
            ]
            lines += [
                f"* {g['label']}: "
                + (
                    ", ".join(
                        f"{k}={g['configuration'][k]}" for k in settings if k in g["configuration"]
                    )
                    or "no training config recorded"
                )
                for g in groups
            ]
        else:
            lines += ["", "All checkpoints are runs of one configuration: nothing to compare."]
    if report.get("skipped_sets"):
        lines += [
            "",
            "Skipped (no class shared with the head): "
            + ", ".join(SET_TITLES[k] for k in report["skipped_sets"])
            + ".",
        ]
    counts = [
        [
            f"{SET_TITLES[key]} ({r['path']})",
            str(r["classes"]),
            str(r["images"]),
            _cell(r["top1"], r["images"]),
        ]
        for key, r in report["sets"].items()
    ]
    counts.append(["chance (1 / head classes)", "", "", _pct(_chance(report))])
    lines += [
        "",
        f"## Sets of {report['name']}",
        "",
        markdown_table(["Set", "Classes", "Images", "Top-1 (%) [95%]"], counts),
    ]
    c = report.get("imagenet_c")
    if c:
        rows = []
        for name in CORRUPTIONS:
            if name in c["corruptions"]:
                entry = c["corruptions"][name]
                rows.append(
                    [
                        name,
                        *(_pct(entry["severities"][str(s)]["top1"]) for s in c["severities"]),
                        _pct(entry["mean"]),
                    ]
                )
        variants = [r for entry in c["corruptions"].values() for r in entry["severities"].values()]
        images = max(r["images"] for r in variants)
        rows.append(["**mean**", *[""] * len(c["severities"]), f"**{_cell(c['mean'], images)}**"])
        rows.append(["chance", *[""] * len(c["severities"]), _pct(_chance(report))])
        lines += [
            "",
            f"## ImageNet-C of {report['name']} ({c['source']}), top-1 (%)",
            "",
            f"Classes per variant: {_span(r['classes'] for r in variants)}; "
            f"images per variant: {_span(r['images'] for r in variants)}. The mean's interval "
            f"takes the {images} distinct images as n (conservative: they recur in every variant).",
            "",
            markdown_table(["Corruption", *map(str, c["severities"]), "Mean"], rows),
        ]
    return "\n".join(lines) + "\n"


def plot(reports: Sequence[dict[str, Any]], path: Path) -> None:
    """Grouped bars, one colour per checkpoint, each with its Wilson 95% interval: the sets and
    ImageNet-C mean on top, each corruption below."""
    per_report = [_rows(r) for r in reports]
    titles = _row_order(reports)
    panels = [
        t
        for t in [
            [t for t in titles if not t.startswith("C: ")],
            [t for t in titles if t.startswith("C: ")],
        ]
        if t
    ]
    fig = figure(max(6.0, 0.45 * len(reports) * max(map(len, panels)) + 2), 3.6 * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False)
    chance = 100 * _chance(reports[0])
    for ax, panel in zip(axes[:, 0], panels):
        interval_bars(
            ax,
            [t.removeprefix("C: ") for t in panel],
            [
                {
                    "label": report["name"],
                    "estimates": [
                        stats.from_accuracy(*rows[t]) if t in rows else None for t in panel
                    ],
                    "bar_labels": "%.1f",
                }
                for report, rows in zip(reports, per_report)
            ],
            chance=chance,
            chance_label=f"chance ({chance:.1f}%)",
            rotation=30,
        )
        ax.set_ylabel("top-1 (%), 95% interval")
        ax.set_ylim(0, 108)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(f"Robustness: linear head top-1, {reports[0]['head_classes']} classes")
    axes[0, 0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    save_png(fig, path, dpi=120)


def configuration_groups(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reports grouped by the training configuration of their checkpoints (seeds of one
    configuration together, labelled by it; a report that records no config, or the only one of
    its configuration, is a group of its own labelled by its name), each run with its rows as
    ``proportion`` estimates, for ``compare.pairwise``."""
    runs = [
        {
            "name": r["name"],
            "seed": r.get("seed"),
            "configuration": configuration(r["config"])
            if r.get("config")
            else {"report": r["name"]},
            "columns": {t: stats.from_accuracy(*cell) for t, cell in _rows(r).items()},
        }
        for r in reports
    ]
    groups = group_runs(runs)
    for group in groups:  # one checkpoint: its report's name says more than its configuration
        if len(group["runs"]) == 1:
            group["label"] = group["runs"][0]["name"]
    return groups


def write(out_dir: Path, report: dict[str, Any], others: Sequence[dict[str, Any]] = ()) -> str:
    """robustness.json (``report``), robustness.md and robustness.png (``report`` against ``others``)
    in ``out_dir``; returns the Markdown."""
    reports = compare.unique_names([report, *others])
    text = markdown(reports)
    claim(out_dir, "robustness", report["evaluated"])
    write_report(out_dir, "robustness", report, text)
    plot(reports, Path(out_dir) / "robustness.png")
    return text
