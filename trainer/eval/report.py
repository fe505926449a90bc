"""How results are written: terminal and Markdown tables, PNG plots, JSON and Markdown files.

One matplotlib policy: figures are ``matplotlib.figure.Figure`` objects drawn with the Agg
canvas, so no command touches pyplot's global backend or needs a display; every bar plot with
intervals is drawn by ``interval_bars``. Every file is written atomically
(``nsneg.datasets_manifest.format.files``). Used by ``nsneg-eval``, ``nsneg-analyze``, and
anything else that reports a table or a plot.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nsneg.datasets_manifest.format import files


def mean_of_present(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def percent(value: float | None, digits: int = 1, missing: str = "-", suffix: str = "%") -> str:
    """A fraction as a percentage cell: ``percent(0.1234) == "12.3%"``; ``missing`` for None."""
    return missing if value is None else f"{100 * value:.{digits}f}{suffix}"


def text_table(headers: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A plain aligned table for the terminal."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(headers: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; a ``|`` inside a cell is escaped."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def figure(width: float, height: float):
    """A matplotlib figure drawn with Agg, without touching pyplot's global backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: Path, dpi: float | None = None) -> None:
    """Lay out ``fig`` and write it to ``path`` as a PNG, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with files.atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=dpi)


def write_json(path: Path, report: dict[str, Any]) -> None:
    """``report`` as indented JSON at ``path`` (its folder made if needed), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write_json(path, report)


def write_report(out_dir: Path, stem: str, report: dict[str, Any], markdown: str) -> None:
    """``out_dir/<stem>.json`` and ``out_dir/<stem>.md``, atomically."""
    write_json(Path(out_dir) / f"{stem}.json", report)
    files.atomic_write_text(Path(out_dir) / f"{stem}.md", markdown.rstrip() + "\n")


def interval_bars(
    ax,
    categories: Sequence[str],
    series: Sequence[dict[str, Any]],
    *,
    horizontal: bool = False,
    points: bool = False,
    scale: float = 100.0,
    width: float = 0.8,
    chance: float | None = None,
    chance_label: str = "chance",
    rotation: float = 0,
) -> None:
    """Grouped bars (or points) with interval whiskers on ``ax``: one group per category, one
    bar per series in it. A series is ``{"label", "estimates": [estimate or None per category],
    "color" (one, or one per category), "bar_labels" (a format or one text per category)}``; an
    estimate is ``{"value", "low", "high"}`` (``stats``' dicts; low/high None: no whisker),
    drawn times ``scale``. ``points``: markers instead of bars. The categories label the ticks
    (``rotation`` degrees); ``chance`` draws a dashed line at that (already scaled) value."""
    positions = list(range(len(categories)))
    step = width / max(1, len(series))
    for i, one in enumerate(series):
        offset = (i - (len(series) - 1) / 2) * step
        at = [p + offset for p in positions]
        found = [
            e if e is not None and e.get("value") is not None else None for e in one["estimates"]
        ]
        values = [math.nan if e is None else scale * e["value"] for e in found]
        errors = [
            [
                0.0 if e is None or e.get("low") is None else max(0.0, v - scale * e["low"])
                for v, e in zip(values, found)
            ],
            [
                0.0 if e is None or e.get("high") is None else max(0.0, scale * e["high"] - v)
                for v, e in zip(values, found)
            ],
        ]
        colors = one.get("color")
        if points:
            for j, (x, v) in enumerate(zip(at, values)):
                if math.isnan(v):
                    continue
                err = [[errors[0][j]], [errors[1][j]]]
                ax.errorbar(
                    *((v, x) if horizontal else (x, v)),
                    **{"xerr" if horizontal else "yerr": err},
                    fmt="o",
                    color=colors[j] if isinstance(colors, list) else colors,
                    capsize=2,
                    markersize=4,
                    label=one.get("label") if j == 0 else None,
                )
            continue
        draw = ax.barh if horizontal else ax.bar
        bars = draw(
            at,
            values,
            step,
            **{"xerr" if horizontal else "yerr": errors},
            capsize=2,
            error_kw={"linewidth": 0.8},
            color=colors,
            label=one.get("label"),
        )
        labels = one.get("bar_labels")
        if isinstance(labels, str):
            ax.bar_label(bars, fmt=labels, fontsize=7)
        elif labels is not None:
            ax.bar_label(bars, labels, fontsize=6, padding=1)
    if horizontal:
        ax.set_yticks(positions, categories)
    else:
        ax.set_xticks(
            positions, categories, rotation=rotation, ha="right" if rotation else "center"
        )
    if chance is not None:
        line = ax.axvline if horizontal else ax.axhline
        line(chance, color="grey", linestyle="--", linewidth=1, label=chance_label)
