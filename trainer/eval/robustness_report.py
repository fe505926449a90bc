"""How a robustness report is shown: the Markdown table (one checkpoint against others), the bar
plot, and the three files ``nsneg-eval robustness`` writes (robustness.md, .json, .png)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nsneg.trainer.eval.corruptions import CORRUPTIONS
from nsneg.trainer.eval.report import figure, markdown_table, percent, save_png, write_report
from nsneg.trainer.eval.robustness import SET_TITLES


def _pct(value: float | None) -> str:
    return percent(value, digits=2, missing="n/a", suffix="")


def _rows(report: dict[str, Any]) -> dict[str, tuple[float | None, int]]:
    """Comparison rows of a report: title -> (top-1, images behind it)."""
    rows = {
        SET_TITLES[key]: (result["top1"], result["images"])
        for key, result in report["sets"].items()
    }
    c = report.get("imagenet_c")
    if c:
        total = sum(
            r["images"] for entry in c["corruptions"].values() for r in entry["severities"].values()
        )
        rows["ImageNet-C mean"] = (c["mean"], total)
        for name in CORRUPTIONS:
            if name in c["corruptions"]:
                entry = c["corruptions"][name]
                rows[f"C: {name}"] = (
                    entry["mean"],
                    sum(r["images"] for r in entry["severities"].values()),
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


def markdown(reports: Sequence[dict[str, Any]]) -> str:
    """The first report against the others (top-1 %), then its counts and its ImageNet-C per severity."""
    report = reports[0]
    per_report = [_rows(r) for r in reports]
    comparison, differing = [], False
    for title in _row_order(reports):
        cells = [rows.get(title) for rows in per_report]
        sizes = {cell[1] for cell in cells if cell is not None}
        mark = " *" if len(sizes) > 1 else ""
        differing |= bool(mark)
        comparison.append(
            [title + mark, *("–" if cell is None else _pct(cell[0]) for cell in cells)]
        )
    lines = [
        f"# Robustness of {report['name']}",
        "",
        f"Linear head on frozen {report['arch']} features at {report['image_size']} px, "
        f"{report['head_classes']} classes. Top-1 (%):",
        "",
        markdown_table(["Set", *(r["name"] for r in reports)], comparison),
    ]
    if differing:
        lines += ["", "\\* the checkpoints were evaluated on different numbers of images here."]
    counts = [
        [f"{SET_TITLES[key]} ({r['path']})", str(r["classes"]), str(r["images"]), _pct(r["top1"])]
        for key, r in report["sets"].items()
    ]
    lines += [
        "",
        f"## Sets of {report['name']}",
        "",
        markdown_table(["Set", "Classes", "Images", "Top-1 (%)"], counts),
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
        rows.append(["**mean**", *[""] * len(c["severities"]), f"**{_pct(c['mean'])}**"])
        variants = [r for entry in c["corruptions"].values() for r in entry["severities"].values()]
        lines += [
            "",
            f"## ImageNet-C of {report['name']} ({c['source']}), top-1 (%)",
            "",
            f"Classes per variant: {_span(r['classes'] for r in variants)}; "
            f"images per variant: {_span(r['images'] for r in variants)}.",
            "",
            markdown_table(["Corruption", *map(str, c["severities"]), "Mean"], rows),
        ]
    return "\n".join(lines) + "\n"


def plot(reports: Sequence[dict[str, Any]], path: Path) -> None:
    """Grouped bars, one colour per checkpoint: the sets and ImageNet-C mean on top, each corruption below."""
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
    width = 0.8 / len(reports)
    for ax, panel in zip(axes[:, 0], panels):
        for i, (report, rows) in enumerate(zip(reports, per_report)):
            values = [
                100 * rows[t][0] if t in rows and rows[t][0] is not None else math.nan
                for t in panel
            ]
            bars = ax.bar(
                [j + (i - (len(reports) - 1) / 2) * width for j in range(len(panel))],
                values,
                width,
                label=report["name"],
            )
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(
            range(len(panel)), [t.removeprefix("C: ") for t in panel], rotation=30, ha="right"
        )
        ax.set_ylabel("top-1 (%)")
        ax.set_ylim(0, 108)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(f"Robustness: linear head top-1, {reports[0]['head_classes']} classes")
    axes[0, 0].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    save_png(fig, path, dpi=120)


def unique_names(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Column labels must differ: a repeated name gets ' (2)', ' (3)', ..."""
    seen: dict[str, int] = {}
    out = []
    for report in reports:
        n = seen[report["name"]] = seen.get(report["name"], 0) + 1
        out.append(report if n == 1 else {**report, "name": f"{report['name']} ({n})"})
    return out


def write(out_dir: Path, report: dict[str, Any], others: Sequence[dict[str, Any]] = ()) -> str:
    """robustness.json (``report``), robustness.md and robustness.png (``report`` against ``others``)
    in ``out_dir``; returns the Markdown."""
    reports = unique_names([report, *others])
    text = markdown(reports)
    write_report(out_dir, "robustness", report, text)
    plot(reports, Path(out_dir) / "robustness.png")
    return text
