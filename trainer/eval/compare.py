"""Putting reports side by side (``--compare``, ``table``): reading an earlier report, labelling
the columns apart, saying what differs between the evaluations besides the model, and the
difference of every pair of configurations with its interval and a verdict where it concludes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nsneg.trainer.eval import stats
from nsneg.trainer.eval.report import markdown_table


def load_report(path: Path, key: str, value: str, written_by: str) -> dict[str, Any]:
    """An earlier report (JSON) whose ``key`` is ``value``; ValueError naming ``written_by`` when it
    is not one."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is not readable JSON ({e})") from None
    if not isinstance(report, dict) or report.get(key) != value:
        raise ValueError(f"{path} is not a {value} report written by {written_by}")
    return report


def unique_names(reports: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Column labels must differ: a repeated name gets ' (2)', ' (3)', ..."""
    seen: dict[str, int] = {}
    out = []
    for report in reports:
        n = seen[report["name"]] = seen.get(report["name"], 0) + 1
        out.append(report if n == 1 else {**report, "name": f"{report['name']} ({n})"})
    return out


def differences(names: Sequence[str], fields: Sequence[tuple[str, Sequence[Any]]]) -> list[str]:
    """One sentence per field whose values are not all equal: ``"<label>: a 32, b 64"``."""
    found = []
    for label, values in fields:
        if len({repr(v) for v in values}) > 1:
            found.append(f"{label}: " + ", ".join(f"{n} {v}" for n, v in zip(names, values)))
    return found


def differences_markdown(differ: Sequence[str], what: str = "checkpoints") -> list[str]:
    """The Markdown lines that list ``differ`` (or say the evaluations differ only in the model)."""
    if not differ:
        return [f"The evaluations differ only in the {what}' weights."]
    return [f"What differs between the {what}' evaluations:", "", *(f"* {d}" for d in differ)]


def pairwise(groups: Sequence[dict[str, Any]], columns: dict[str, str]) -> list[dict[str, Any]]:
    """For every pair of configurations (first-seen order, ``a`` before ``b``), ``a - b`` per
    column with its interval and test (``stats.seed_difference``). ``groups``: ``{"label",
    "runs": [{"seed", "columns": {column: proportion estimate}}]}``."""
    found = []
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            found.append(
                {
                    "a": a["label"],
                    "b": b["label"],
                    "differences": {
                        key: stats.seed_difference(
                            {r["seed"]: r["columns"].get(key) for r in a["runs"]},
                            {r["seed"]: r["columns"].get(key) for r in b["runs"]},
                        )
                        for key in columns
                    },
                }
            )
    return found


def verdicts(comparisons: Sequence[dict[str, Any]], columns: dict[str, str]) -> list[str]:
    """One line per pair and column whose interval excludes zero, saying which is higher."""
    lines = []
    for pair in comparisons:
        for key, title in columns.items():
            diff = pair["differences"][key]
            if stats.excludes_zero(diff):
                higher = pair["a"] if diff["low"] > 0 else pair["b"]
                lines.append(
                    f"{title}: {pair['a']} − {pair['b']} = {stats.difference_text(diff)} "
                    f"({diff['test']}, {diff['n']}): {higher} is higher."
                )
    return lines


def pairwise_markdown(comparisons: Sequence[dict[str, Any]], columns: dict[str, str]) -> list[str]:
    """The Markdown section of ``pairwise``: a table of differences (percentage points, 95%
    interval) with the test of each pair, then the verdict lines."""
    if not comparisons:
        return []
    rows = [
        [
            f"{pair['a']} − {pair['b']}",
            *(stats.difference_text(pair["differences"][k]) for k in columns),
            "; ".join(
                sorted(
                    {
                        f"{d['test']} ({d['n']})"
                        for d in pair["differences"].values()
                        if d["test"] is not None
                    }
                )
            ),
        ]
        for pair in comparisons
    ]
    found = verdicts(comparisons, columns)
    return [
        "## Differences between configurations",
        "",
        f"Top-1 difference in percentage points with its {100 * stats.CONFIDENCE:.0f}% interval: "
        f"{stats.PAIRED_TEST} where both ran the same seeds, else {stats.WELCH_TEST} "
        f"(unequal variances); one run each: {stats.DIFFERENCE_INTERVAL_NAME} on the image counts.",
        "",
        markdown_table(["pair", *columns.values(), "test (n)"], rows),
        "",
        *(
            [f"* {line}" for line in found]
            if found
            else ["No interval excludes zero: these runs cannot tell the configurations apart."]
        ),
    ]
