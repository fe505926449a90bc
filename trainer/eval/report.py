"""How results are written: terminal and Markdown tables, PNG plots, JSON and Markdown files.

One matplotlib policy: figures are ``matplotlib.figure.Figure`` objects drawn with the Agg
canvas, so no command touches pyplot's global backend or needs a display. Every file is
written atomically (``nsneg.datasets_manifest.format.files``). Used by ``nsneg-eval``, ``nsneg-analyze``, and
anything else that reports a table or a plot.
"""

from __future__ import annotations

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
