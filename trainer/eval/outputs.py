"""Where reports go, for ``nsneg-eval`` and ``nsneg-analyze`` alike: beside the evaluated
checkpoint, one folder per command (``runs/x/robustness``, ``runs/x/shape-bias``; a file not named
``checkpoint.pt`` or a ``--name``: ``<its folder>/<command>-<name>``), ``<command>/<name>`` under
the working folder for checkpoint-free features; a folder is never reused for another model's
report.

A report records what it evaluated (``evaluated``: the resolved checkpoint path, or a
description of checkpoint-free features); ``claim`` refuses a folder whose report is of
something else, so two runs that share a name (``a/run1/checkpoint.pt`` and
``b/run1/checkpoint.pt``) cannot overwrite each other's results.
"""

from __future__ import annotations

import json
from pathlib import Path


def run_name(checkpoint_path: Path) -> str:
    """A checkpoint's label: its run directory for ``runs/<name>/checkpoint*.pt``, else its file
    name without the suffix."""
    checkpoint_path = Path(checkpoint_path)
    name = checkpoint_path.name
    for suffix in (".pth.tar", ".tar", ".pth", ".pt"):
        name = name.removesuffix(suffix)
    return checkpoint_path.resolve().parent.name if name.startswith("checkpoint") else name


def evaluated(checkpoint_path: Path) -> str:
    """What a report records as its subject: the checkpoint's resolved path."""
    return str(Path(checkpoint_path).resolve())


def default_out_dir(command: str, checkpoint_path: Path | None, name: str | None = None) -> Path:
    """The run's own folder: ``<checkpoint's folder>/<command>`` for a ``checkpoint.pt``,
    ``<checkpoint's folder>/<command>-<name or file stem>`` for another file or a given ``name``;
    without a checkpoint, ``<command>/<name>`` under the working directory."""
    if checkpoint_path is None:
        return Path(command) / (name or command)
    checkpoint_path = Path(checkpoint_path).resolve()
    stem = checkpoint_path.name
    for suffix in (".pth.tar", ".tar", ".pth", ".pt"):
        stem = stem.removesuffix(suffix)
    if name is None and stem == "checkpoint":
        return checkpoint_path.parent / command
    return checkpoint_path.parent / f"{command}-{name or stem}"


def claim(out_dir: Path, stem: str, subject: str) -> None:
    """Refuse ``out_dir`` when ``out_dir/<stem>.json`` is the report of another subject (a
    ValueError that says whose it is); a report of the same subject is simply replaced."""
    existing = Path(out_dir) / f"{stem}.json"
    if not existing.is_file():
        return
    try:
        previous = json.loads(existing.read_text()).get("evaluated")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous is None:
        raise ValueError(
            f"{existing} exists and does not say what it evaluated: give another --out-dir "
            "(or --name), or remove it"
        )
    if previous != subject:
        raise ValueError(
            f"{existing} is the report of {previous}, not of {subject}: give another --out-dir "
            "(or --name), or remove it"
        )
