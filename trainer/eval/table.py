"""The paper's Table 1 for your own runs (``nsneg-eval table``): several checkpoints, grouped by
run configuration (read from each checkpoint, seeds pooled), each evaluated once (cached), and
one table of mean ± std over seeds, the difference of every pair of configurations with its
interval, and the paper's numbers in a table (and plot panel) of their own.

Per checkpoint: a linear probe on ``train`` (``probes.train_linear``), then ``robustness``'s
top-1 on ``val`` (IN-100), ImageNet-C (mean over corruptions and severities), -Sketch,
Stylized-ImageNet and -R; optionally the shape bias on cue-conflict stimuli and the held-out
texture top-1 of ``texture-classes``. Results go to ``<out>/runs/<run>-<hash>/evaluation.json``
with a key over the checkpoint's bytes and every option that changes a number; a rerun with the
same key reads the file instead of computing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from nsneg.trainer.eval import compare, outputs, paper, probes, stats, table_report
from nsneg.trainer.eval import robustness as robust
from nsneg.trainer.eval.configurations import (
    configuration,
    differing,
    group_runs,
)
from nsneg.trainer.eval.features import backbone_from_checkpoint, probe_features
from nsneg.trainer.eval.report import write_json, write_report

TABLE_FORMAT = "nsneg-table"
CACHE_FORMAT = "nsneg-table-run"
CACHE_VERSION = 1

#: Table 1's columns: key -> title.
COLUMNS = {
    "in100": "IN-100",
    "imagenet_c": "IN-C",
    "sketch": "Sketch",
    "stylized": "Stylized",
    "rendition": "R",
}
EXTRA_COLUMNS = {"shape_bias": "Shape bias", "texture": "Texture held-out"}

# --------------------------------------------------------------------------- one run, cached


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def cache_dir(out_dir: Path, checkpoint_path: Path) -> Path:
    """``<out>/runs/<run name>-<8 hex of the resolved path>``: two runs of one name stay apart."""
    tag = hashlib.sha256(outputs.evaluated(checkpoint_path).encode()).hexdigest()[:8]
    return Path(out_dir) / "runs" / f"{outputs.run_name(checkpoint_path)}-{tag}"


def _summary(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A robustness report's Table 1 columns: top-1 with its count and Wilson interval."""
    sets = result["sets"]
    found = {}
    for key, source in (
        ("in100", "val"),
        ("sketch", "sketch"),
        ("stylized", "stylized"),
        ("rendition", "rendition"),
    ):
        if source in sets:
            found[key] = stats.from_accuracy(sets[source]["top1"], sets[source]["images"])
    c = result.get("imagenet_c")
    if c:
        found["imagenet_c"] = stats.from_accuracy(c["mean"], c["images"])
    return found


def evaluate_run(
    checkpoint_path: Path,
    params: dict[str, Any],
    out_dir: Path,
    device: torch.device,
    batch_size: int,
    workers: int,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """One checkpoint's Table 1 numbers: read from its cache when the key (checkpoint bytes +
    ``params``) matches, else computed and cached. ``params``: train, val, train_split, val_split,
    image_size, epochs, lr, seed, sketch, rendition, stylized, imagenet_c, corruptions,
    severities, max_per_class, cue_conflict, texture_shards, texture_holdout."""
    folder = cache_dir(out_dir, checkpoint_path)
    key = hashlib.sha256(
        json.dumps(
            {"checkpoint": file_digest(checkpoint_path), "batch_size": batch_size, **params},
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    cached = folder / "evaluation.json"
    if cached.is_file():
        try:
            previous = json.loads(cached.read_text())
        except ValueError:
            previous = {}
        if previous.get("format") == CACHE_FORMAT and previous.get("key") == key:
            say(f"{checkpoint_path}: reused {cached}")
            return {**previous, "reused": True}
    say(f"{checkpoint_path}: evaluating into {folder}")
    _, config = backbone_from_checkpoint(checkpoint_path)
    sets = probe_features(
        device,
        checkpoint_path,
        Path(params["train"]),
        Path(params["val"]),
        params["train_split"],
        params["val_split"],
        params["image_size"],
        batch_size,
        workers,
    )
    head = probes.train_linear(
        sets.train_features.to(device),
        sets.train_labels,
        len(sets.classes),
        epochs=params["epochs"],
        lr=params["lr"],
        batch_size=batch_size,
        seed=params["seed"],
    )
    head_path = folder / "linear-head.pt"
    probes.save_linear_head(
        head_path,
        head,
        sets.classes,
        sets.info["arch"],
        sets.info["image_size"],
        str(checkpoint_path),
    )
    ood = {key: Path(params[key]) for key in robust.OOD_SETS if params.get(key)}
    result = robust.evaluate_checkpoint(
        checkpoint_path,
        head_path,
        Path(params["val"]),
        device,
        ood,
        Path(params["imagenet_c"]) if params.get("imagenet_c") else None,
        params["corruptions"],
        params["severities"],
        max_per_class=params["max_per_class"],
        batch_size=batch_size,
        workers=workers,
    )
    write_json(folder / "robustness.json", result)
    columns = _summary(result)
    if params.get("cue_conflict"):
        from nsneg.trainer.analysis import shape_bias

        report = shape_bias.analyse(
            checkpoint_path=checkpoint_path,
            head_path=head_path,
            cue_dir=Path(params["cue_conflict"]),
            shards=None,
            split="train",
            n_pairs=0,
            seed=0,
            image_size=params["image_size"],
            batch_size=batch_size,
            workers=workers,
            device=device,
            out_dir=folder / "shape-bias",
        )
        columns["shape_bias"] = report["shape_bias_estimate"]
    if params.get("texture_shards"):
        from nsneg.trainer.analysis import texture_classes

        report = texture_classes.analyse(
            shards=Path(params["texture_shards"]),
            split="train",
            val_dir=None,
            val_split="val",
            checkpoint_path=checkpoint_path,
            holdout=params["texture_holdout"],
            epochs=params["epochs"],
            lr=params["lr"],
            seed=params["seed"],
            top=10,
            image_size=params["image_size"],
            batch_size=batch_size,
            workers=workers,
            device=device,
            out_dir=folder / "texture-classes",
            say=lambda _: None,
        )
        columns["texture"] = report["top1"]["texture_held_out_estimate"]
    evaluation = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "key": key,
        "checkpoint": str(checkpoint_path),
        "evaluated": outputs.evaluated(checkpoint_path),
        "name": outputs.run_name(checkpoint_path),
        "config": config,
        "configuration": configuration(config),
        "seed": config.get("seed"),
        "classes": len(sets.classes),
        "chance": 1 / len(sets.classes),
        "image_size": sets.info["image_size"],
        "probe": {
            "epochs": params["epochs"],
            "lr": params["lr"],
            "seed": params["seed"],
            "batch_size": min(batch_size, len(sets.train_labels)),
            "train_images": len(sets.train_labels),
        },
        "skipped_sets": result["skipped_sets"],
        "columns": columns,
    }
    write_json(cached, evaluation)
    return {**evaluation, "reused": False}


# --------------------------------------------------------------------------- the table


def build_table(evaluations: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rows of mean ± std (top-1 %, sample std over seeds) per configuration with the interval of
    each mean (``stats.seed_mean``), the difference of every pair of configurations
    (``compare.pairwise``), chance, and the paper's reference rows."""
    evaluations = [{**e, "configuration": configuration(e["config"])} for e in evaluations]
    groups = group_runs(evaluations)
    columns = list(COLUMNS) + [
        k for k in EXTRA_COLUMNS if any(k in e["columns"] for e in evaluations)
    ]
    titles = {key: {**COLUMNS, **EXTRA_COLUMNS}[key] for key in columns}
    rows = []
    for group in groups:
        runs = group["runs"]
        rows.append(
            {
                "label": group["label"],
                "configuration": group["configuration"],
                "seeds": [run["seed"] for run in runs],
                "checkpoints": [run["checkpoint"] for run in runs],
                "cells": {
                    key: stats.mean_std(
                        [
                            None
                            if run["columns"].get(key) is None
                            else _percent(run["columns"][key]["value"])
                            for run in runs
                        ]
                    )
                    for key in columns
                },
                "intervals": {
                    key: stats.seed_mean([run["columns"].get(key) for run in runs])
                    for key in columns
                },
            }
        )
    chances = {e["chance"] for e in evaluations}
    chance = {key: 100 * next(iter(chances)) for key in COLUMNS} if len(chances) == 1 else {}
    if "shape_bias" in columns:
        chance["shape_bias"] = 50.0
    return {
        "columns": titles,
        "rows": rows,
        "comparisons": compare.pairwise(groups, titles),
        "differing_settings": differing([g["configuration"] for g in groups]),
        "chance": chance,
        "chance_note": "1 / classes"
        if len(chances) == 1
        else "differs between runs (different class counts)",
        "paper": {
            "source": paper.PAPER_SOURCE,
            "rows": [
                {
                    "label": row["label"],
                    "cells": {
                        k: {"mean": m, "std": s, "n": 3} for k, (m, s) in row["values"].items()
                    },
                }
                for row in paper.PAPER_ROWS
            ],
        },
        "runs": [{k: v for k, v in e.items() if k != "reused"} for e in evaluations],
    }


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def subject(checkpoints: Sequence[Path]) -> str:
    """What a table evaluated: its checkpoints, resolved, one per line."""
    return "\n".join(sorted(outputs.evaluated(p) for p in checkpoints))


def make_table(
    checkpoints: Sequence[Path],
    params: dict[str, Any],
    out_dir: Path,
    device: torch.device,
    batch_size: int,
    workers: int,
    say: Callable[[str], None] = print,
) -> tuple[dict[str, Any], str]:
    """Evaluate (or reuse) every checkpoint, write table.{md,json,png} into ``out_dir``; returns
    the table and its Markdown. ``out_dir`` must not hold another set of checkpoints' table."""
    if not checkpoints:
        raise ValueError("give at least one --checkpoint")
    evaluated = subject(checkpoints)
    outputs.claim(out_dir, "table", evaluated)
    evaluations = [
        evaluate_run(Path(p), params, out_dir, device, batch_size, workers, say)
        for p in checkpoints
    ]
    table = {
        "format": TABLE_FORMAT,
        "evaluated": evaluated,
        "parameters": params,
        "interval_method": stats.INTERVAL_NAME,
        **build_table(evaluations),
        "reused": [e["checkpoint"] for e in evaluations if e["reused"]],
    }
    text = table_report.markdown(table)
    write_report(out_dir, "table", table, text)
    table_report.plot(table, Path(out_dir) / "table.png")
    return table, text
