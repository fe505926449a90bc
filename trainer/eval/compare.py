"""Putting reports side by side (``--compare``): reading an earlier report, labelling the columns
apart, and saying what differs between the evaluations besides the model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


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
