"""The paper's Table 1 for your own runs (``nsneg-eval table``): several checkpoints, grouped by
run configuration (read from each checkpoint, seeds pooled), each evaluated once (cached), and
one table of mean ± std over seeds with the paper's numbers beside as reference rows.

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

from nsneg.trainer.eval import outputs, probes, stats
from nsneg.trainer.eval import robustness as robust
from nsneg.trainer.eval.features import backbone_from_checkpoint, probe_features
from nsneg.trainer.eval.report import figure, markdown_table, save_png, write_json, write_report

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

#: Ge et al. 2021 (NeurIPS), top-1 % mean ± std over 3 seeds, ResNet-50, 200 epochs on
#: ImageNet-100, linear probe 60 epochs. Source: the official repository's README,
#: github.com/SongweiGe/Contrastive-Learning-with-Non-Semantic-Negatives (commit 5fbdc4d8),
#: "Pre-trained Models" table, rows with k = 16384 (its linear-evaluation section names these
#: models as those "reported in Table 1"). The README's columns: ImageNet100, Corruption
#: (ImageNet-C top-1), Sketch, Stylized, Rendition. Its k = 8192 and IFM-hyperparameter rows
#: are other settings and are not listed here.
PAPER_SOURCE = (
    "Ge et al. 2021, Table 1 models as listed in github.com/SongweiGe/"
    "Contrastive-Learning-with-Non-Semantic-Negatives README (commit 5fbdc4d8), k = 16384, "
    "ResNet-50, 200 epochs, mean ± std over 3 seeds"
)
PAPER_ROWS: list[dict[str, Any]] = [
    {
        "label": "MoCo v2",
        "values": {
            "in100": (77.88, 0.28),
            "imagenet_c": (43.08, 0.27),
            "sketch": (28.24, 0.58),
            "stylized": (16.20, 0.55),
            "rendition": (32.92, 0.12),
        },
    },
    {
        "label": "+Texture, α = 2",
        "values": {
            "in100": (77.76, 0.17),
            "imagenet_c": (43.58, 0.33),
            "sketch": (29.11, 0.39),
            "stylized": (16.59, 0.17),
            "rendition": (33.36, 0.15),
        },
    },
    {
        "label": "+Patch, α = 2",
        "values": {
            "in100": (79.35, 0.12),
            "imagenet_c": (45.13, 0.35),
            "sketch": (31.76, 0.88),
            "stylized": (17.37, 0.19),
            "rendition": (34.78, 0.15),
        },
    },
    {
        "label": "+Patch, α = 3",
        "values": {
            "in100": (75.58, 0.52),
            "imagenet_c": (44.45, 0.15),
            "sketch": (34.03, 0.58),
            "stylized": (18.60, 0.26),
            "rendition": (36.89, 0.11),
        },
    },
]

#: Config fields that do not change what a run learns (paths, logging, speed): not part of the
#: configuration that groups seeds.
BOOKKEEPING = frozenset(
    {
        "seed",
        "out",
        "negatives",
        "manifest_dirs",
        "workers",
        "log_every",
        "checkpoint_every",
        "compile",
        "compile_backend",
        "channels_last",
        "bf16",
        "shuffle_buffer",
        "max_skip_fraction",
    }
)


# --------------------------------------------------------------------------- configurations


def configuration(config: dict[str, Any]) -> dict[str, Any]:
    """What a run's config says about what it learns: every field but ``BOOKKEEPING``, and
    ``method`` (``moco`` when the checkpoint predates other methods)."""
    found = {k: v for k, v in config.items() if k not in BOOKKEEPING}
    found.setdefault("method", "moco")
    return dict(sorted(found.items()))


def configuration_label(conf: dict[str, Any]) -> str:
    """``MoCo``, ``MoCo +Texture α=2``, ``MoCo +Patch α=3``, ... from a configuration."""
    method = conf.get("method", "moco")
    base = {"moco": "MoCo"}.get(method, method)
    kind = conf.get("negatives_kind")
    if kind in (None, "none"):
        return base
    names = {"texture": "+Texture", "patch": "+Patch", "texture+patch": "+Texture+Patch"}
    return f"{base} {names.get(kind, '+' + str(kind))} α={conf.get('alpha', '?')}"


def group_runs(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of equal configuration in one group, in first-seen order; groups whose labels
    coincide get the fields that tell them apart appended."""
    groups: dict[str, dict[str, Any]] = {}
    for run in runs:
        key = json.dumps(run["configuration"], sort_keys=True, default=str)
        groups.setdefault(key, {"configuration": run["configuration"], "runs": []})["runs"].append(
            run
        )
    found = list(groups.values())
    for group in found:
        group["label"] = configuration_label(group["configuration"])
    for group in found:
        twins = [g for g in found if g["label"] == group["label"] and g is not group]
        if twins:
            fields = {
                k
                for other in twins
                for k in {*group["configuration"], *other["configuration"]}
                if group["configuration"].get(k) != other["configuration"].get(k)
            }
            group["label_suffix"] = ", ".join(
                f"{k}={group['configuration'].get(k)}" for k in sorted(fields)
            )
    for group in found:
        if group.get("label_suffix"):
            group["label"] = f"{group['label']} ({group.pop('label_suffix')})"
    return found


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


def _cell(summary: dict[str, Any] | None, digits: int = 1) -> str:
    if summary is None or summary["mean"] is None:
        return "–"
    mean = f"{summary['mean']:.{digits}f}"
    return mean + (f" ± {summary['std']:.{digits}f}" if summary["std"] is not None else " (1 seed)")


def build_table(evaluations: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rows of mean ± std (top-1 %, sample std over seeds) per configuration, the chance row and
    the paper's reference rows."""
    groups = group_runs(evaluations)
    columns = list(COLUMNS) + [
        k for k in EXTRA_COLUMNS if any(k in e["columns"] for e in evaluations)
    ]
    rows = []
    for group in groups:
        cells = {}
        for key in columns:
            values = [
                None
                if key not in run["columns"] or run["columns"][key]["value"] is None
                else 100 * run["columns"][key]["value"]
                for run in group["runs"]
            ]
            cells[key] = stats.mean_std(values)
        rows.append(
            {
                "label": group["label"],
                "configuration": group["configuration"],
                "seeds": [run["seed"] for run in group["runs"]],
                "checkpoints": [run["checkpoint"] for run in group["runs"]],
                "cells": cells,
            }
        )
    chances = {e["chance"] for e in evaluations}
    chance = {key: 100 * next(iter(chances)) for key in COLUMNS} if len(chances) == 1 else {}
    if "shape_bias" in columns:
        chance["shape_bias"] = 50.0
    return {
        "columns": {key: {**COLUMNS, **EXTRA_COLUMNS}[key] for key in columns},
        "rows": rows,
        "chance": chance,
        "chance_note": "1 / classes"
        if len(chances) == 1
        else "differs between runs (different class counts)",
        "paper": {
            "source": PAPER_SOURCE,
            "rows": [
                {
                    "label": row["label"],
                    "cells": {
                        k: {"mean": m, "std": s, "n": 3} for k, (m, s) in row["values"].items()
                    },
                }
                for row in PAPER_ROWS
            ],
        },
        "runs": [{k: v for k, v in e.items() if k != "reused"} for e in evaluations],
    }


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
    rows.append([f"**reference: {PAPER_SOURCE}**", "", *[""] * len(columns)])
    rows += [
        [
            f"{row['label']} (paper)",
            3,
            *(_cell(row["cells"].get(k), 2) for k in columns),
        ]
        for row in table["paper"]["rows"]
    ]
    lines = [
        "# Table 1 of your runs",
        "",
        "Top-1 (%) of a linear probe on frozen features, mean ± sample std over seeds (runs "
        "grouped by the configuration stored in their checkpoints). Paper rows: ResNet-50, 200 "
        "epochs on ImageNet-100 with the paper's linear-probe protocol; rows of a different "
        "protocol are not comparable number for number.",
        "",
        markdown_table(headers, rows),
        "",
        "## Runs",
        "",
    ]
    run_rows = []
    for run in table["runs"]:
        run_rows.append(
            [
                run["name"],
                configuration_label(run["configuration"]),
                run["seed"] if run["seed"] is not None else "-",
                *(
                    stats.estimate_text(run["columns"][k]) if k in run["columns"] else "–"
                    for k in columns
                ),
            ]
        )
    lines += [
        f"Each number with its {stats.INTERVAL_NAME} interval and n (images; decisions for shape "
        "bias). IN-C: mean over corruptions and severities, n = distinct images.",
        "",
        markdown_table(["run", "configuration", "seed", *columns.values()], run_rows),
        "",
        "## Configurations",
        "",
    ]
    for row in table["rows"]:
        conf = ", ".join(f"{k}={v}" for k, v in row["configuration"].items())
        lines.append(f"* **{row['label']}**: {conf}; checkpoints: {', '.join(row['checkpoints'])}")
    skipped = sorted({(r["name"], s) for r in table["runs"] for s in r["skipped_sets"]})
    if skipped:
        lines += ["", "Skipped (no class shared with the head): "]
        lines += [f"* {name}: {robust.SET_TITLES[key]}" for name, key in skipped]
    return "\n".join(lines) + "\n"


def plot(table: dict[str, Any], path: Path) -> None:
    """Grouped bars per column (one colour per configuration, std over seeds as error bars), the
    paper's rows as black markers with their std, chance as a dashed line."""
    columns = list(table["columns"])
    groups = table["rows"]
    fig = figure(max(7.0, 1.3 * len(columns) * max(1, len(groups)) / 2 + 3), 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(groups))
    for i, row in enumerate(groups):
        xs = [j + (i - (len(groups) - 1) / 2) * width for j in range(len(columns))]
        means = [row["cells"][k]["mean"] for k in columns]
        stds = [row["cells"][k]["std"] or 0 for k in columns]
        ax.bar(
            xs,
            [float("nan") if m is None else m for m in means],
            width,
            yerr=stds,
            capsize=3,
            label=f"{row['label']} ({len(row['seeds'])} seed{'s' if len(row['seeds']) > 1 else ''})",
        )
    markers = ["o", "s", "^", "D", "v", "P"]
    for i, row in enumerate(table["paper"]["rows"]):
        xs = [j for j, k in enumerate(columns) if k in row["cells"]]
        ax.errorbar(
            [x + 0.06 * (i - 1.5) for x in xs],
            [row["cells"][columns[x]]["mean"] for x in xs],
            yerr=[row["cells"][columns[x]]["std"] for x in xs],
            fmt=markers[i % len(markers)],
            color="black",
            markerfacecolor="none",
            markersize=5,
            linewidth=0.8,
            label=f"paper: {row['label']}",
        )
    for j, key in enumerate(columns):
        if key in table["chance"]:
            ax.hlines(
                table["chance"][key],
                j - 0.45,
                j + 0.45,
                colors="grey",
                linestyles="--",
                linewidth=1,
                label="chance" if j == 0 else None,
            )
    ax.set_xticks(range(len(columns)), [table["columns"][k] for k in columns])
    ax.set_ylabel("top-1 (%), mean ± std over seeds")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Table 1: your runs and the paper's")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1))
    save_png(fig, path, dpi=120)


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
    text = markdown(table)
    write_report(out_dir, "table", table, text)
    plot(table, Path(out_dir) / "table.png")
    return table, text
