"""How ``nsneg-eval table`` shows its table (``table.build_table``'s dict): table.md (your
configurations, the differences between them with intervals and verdicts, the settings that
differ, every run, then the paper's rows in a table of their own) and table.png (your runs and
the paper's on separate axes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nsneg.trainer.eval import compare, paper, stats
from nsneg.trainer.eval.configurations import configuration_label
from nsneg.trainer.eval.report import figure, interval_bars, markdown_table, save_png
from nsneg.trainer.eval.robustness import SET_TITLES


def _cell(summary: dict[str, Any] | None, digits: int = 1) -> str:
    if summary is None or summary["mean"] is None:
        return "–"
    mean = f"{summary['mean']:.{digits}f}"
    return mean + (f" ± {summary['std']:.{digits}f}" if summary["std"] is not None else " (1 seed)")


def _settings_lines(table: dict[str, Any]) -> list[str]:
    """Per configuration, the settings that differ between configurations (as the trainer used
    them); with one configuration, its settings."""
    differ = table["differing_settings"]
    lines = []
    for row in table["rows"]:
        shown = differ if len(table["rows"]) > 1 else list(row["configuration"])
        conf = ", ".join(
            f"{k}={row['configuration'][k]}" for k in shown if k in row["configuration"]
        )
        lines.append(
            f"* **{row['label']}**: {conf or 'no setting differs'}; "
            f"checkpoints: {', '.join(row['checkpoints'])}"
        )
    return lines


def markdown(table: dict[str, Any]) -> str:
    columns = table["columns"]
    headers = ["Model", "seeds", *columns.values()]
    rows = [
        [row["label"], len(row["seeds"]), *(_cell(row["cells"][k]) for k in columns)]
        for row in table["rows"]
    ]
    rows.append(
        [
            f"chance ({table['chance_note']})",
            "",
            *(f"{table['chance'][k]:.1f}" if k in table["chance"] else "–" for k in columns),
        ]
    )
    paper_rows = [
        [row["label"], 3, *(_cell(row["cells"].get(k), 2) for k in columns)]
        for row in table["paper"]["rows"]
    ]
    run_rows = [
        [
            run["name"],
            configuration_label(run["configuration"]),
            run["seed"] if run["seed"] is not None else "-",
            *(
                stats.estimate_text(run["columns"][k]) if k in run["columns"] else "–"
                for k in columns
            ),
        ]
        for run in table["runs"]
    ]
    lines = [
        "# Table 1 of your runs",
        "",
        "Top-1 (%) of a linear probe on frozen features, mean ± sample std over seeds (runs "
        "grouped by the configuration stored in their checkpoints).",
        "",
        markdown_table(headers, rows),
        "",
        *compare.pairwise_markdown(table["comparisons"], columns),
        "",
        "## Configurations",
        "",
        "Settings that differ between the configurations, as the trainer used them:"
        if len(table["rows"]) > 1
        else "Settings as the trainer used them:",
        "",
        *_settings_lines(table),
        "",
        "## Runs",
        "",
        f"Each number with its {stats.INTERVAL_NAME} interval and n (images; decisions for shape "
        "bias). IN-C: mean over corruptions and severities, n = distinct images.",
        "",
        markdown_table(["run", "configuration", "seed", *columns.values()], run_rows),
        "",
        "## The paper's Table 1 (reference, another protocol)",
        "",
        f"{table['paper']['source']}. ResNet-50, 200 epochs on ImageNet-100 (chance 1 %) with the "
        "paper's linear-probe protocol: not comparable number for number with the rows above.",
        "",
        markdown_table(headers, paper_rows),
    ]
    skipped = sorted({(r["name"], s) for r in table["runs"] for s in r["skipped_sets"]})
    if skipped:
        lines += ["", "Skipped (no class shared with the head): "]
        lines += [f"* {name}: {SET_TITLES[key]}" for name, key in skipped]
    return "\n".join(lines) + "\n"


def plot(table: dict[str, Any], path: Path) -> None:
    """Two panels: your configurations as grouped bars (mean over seeds with its 95% interval,
    chance dashed), and the paper's rows on their own axes (mean ± std over 3 seeds)."""
    columns = list(table["columns"])
    titles = [table["columns"][k] for k in columns]
    fig = figure(max(10.0, 1.1 * len(columns) * max(1, len(table["rows"])) / 2 + 7), 4.4)
    ours, theirs = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    interval_bars(
        ours,
        titles,
        [
            {
                "label": f"{row['label']} ({len(row['seeds'])} seed"
                f"{'s' if len(row['seeds']) > 1 else ''})",
                "estimates": [row["intervals"][k] for k in columns],
            }
            for row in table["rows"]
        ],
    )
    for j, key in enumerate(columns):
        if key in table["chance"]:
            ours.hlines(
                table["chance"][key],
                j - 0.45,
                j + 0.45,
                colors="grey",
                linestyles="--",
                linewidth=1,
                label="chance" if j == 0 else None,
            )
    ours.set_ylabel("top-1 (%), mean over seeds, 95% interval")
    ours.set_title("your runs (1 seed: Wilson interval on its images)", fontsize=9)
    paper_columns = [k for k in columns if k in paper.PAPER_ROWS[0]["values"]]
    interval_bars(
        theirs,
        [table["columns"][k] for k in paper_columns],
        [
            {
                "label": row["label"],
                "estimates": [
                    {"value": m, "low": m - s, "high": m + s}
                    for m, s in (row["values"][k] for k in paper_columns)
                ],
                "color": "0.3" if i == 0 else None,
            }
            for i, row in enumerate(paper.PAPER_ROWS)
        ],
        scale=1.0,
    )
    theirs.set_ylabel("top-1 (%), mean ± std over 3 seeds")
    theirs.set_title("paper (ResNet-50, ImageNet-100, another protocol)", fontsize=9)
    for ax in (ours, theirs):
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize="x-small", loc="upper right")
    save_png(fig, path, dpi=120)
