"""``nsneg-eval``: knn, linear, robustness and table. The commands parse options, call the library and
print; library errors (``FileNotFoundError``, ``ValueError``) become click errors here.

The option bundles shared with ``nsneg-analyze`` (checkpoint, feature and loader options) are
in ``nsneg.trainer.eval.cli_options``. Reports go beside the evaluated checkpoints by default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
import torch

from nsneg.datasets_manifest.cli import max_skip_option  # the sample policy's threshold
from nsneg.trainer.eval import outputs, probes, report, robustness_report, stats
from nsneg.trainer.eval import robustness as robust
from nsneg.trainer.eval import table as tables
from nsneg.trainer.eval.cli_options import (
    checkpoint_option,
    click_errors,
    echo_skips,
    existing_folder,
    feature_options,
    linear_head_option,
    loader_options,
    options,
    parsed_option,
)
from nsneg.trainer.eval.features import probe_features

# --------------------------------------------------------------------------- knn and linear

_probe_options = options(
    checkpoint_option(),
    *(
        click.option(f"--{side}", f"{side}_dir", required=True, type=existing_folder, help=help)
        for side, help in [
            (
                "train",
                "ImageFolder tree DIR/<class>/<image>, or a shard directory (its source photos)",
            ),
            ("val", "as --train; classes are matched to train's by name"),
        ]
    ),
    *(
        click.option(
            f"--{side}-split",
            default=side,
            show_default=True,
            help=f"split read when --{side} is a shard directory",
        )
        for side in ("train", "val")
    ),
    feature_options("the checkpoint's training size, else 224"),
    max_skip_option,
    click.option(
        "--json",
        "json_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="also write the result here",
    ),
)


@click.group()
def main() -> None:
    """Evaluate frozen backbones: weighted kNN, a linear probe, robustness, and the paper's Table 1."""


@main.command()
@_probe_options
@click.option("--k", type=click.IntRange(1), default=200, show_default=True, help="neighbours")
@click.option(
    "--t",
    "temperature",
    type=click.FloatRange(0, min_open=True),
    default=0.07,
    show_default=True,
    help="temperature of the exp(sim / T) vote weights",
)
def knn(
    k: int, temperature: float, json_path: Path | None, device: torch.device, **data: Any
) -> None:
    """Weighted kNN top-1 of val images against train images (the InstDisc / MoCo monitor)."""
    with click_errors():
        sets = probe_features(device, **data)
    k_used = min(k, len(sets.train_labels))
    acc = probes.knn_accuracy(
        sets.train_features.to(device),
        sets.train_labels,
        sets.val_features,
        sets.val_labels,
        k=k,
        T=temperature,
        num_classes=len(sets.classes),
    )
    estimate = stats.from_accuracy(acc, len(sets.val_labels))
    chance = 1 / len(sets.classes)
    if k_used < k:
        click.echo(f"note: k={k} asked, {k_used} used: there are only {k_used} training images")
    shards = (data["train_dir"] / "manifest.json").is_file()  # else the splits are not read
    if data["train_dir"].resolve() == data["val_dir"].resolve() and (
        not shards or data["train_split"] == data["val_split"]
    ):
        click.echo(
            "note: val is the training set: each image finds itself, so this checks plumbing only",
            err=True,
        )
    click.echo(
        f"knn top-1: {stats.estimate_text(estimate, 2)} ({stats.INTERVAL_NAME}), chance "
        f"{100 * chance:.2f}% ({len(sets.classes)} classes); k={k_used}, T={temperature}, "
        f"{len(sets.train_labels)} train images"
    )
    echo_skips(sets.info["skipped"])
    if json_path is not None:
        report.write_json(
            json_path,
            {
                "metric": "knn",
                "top1": acc,
                "top1_interval": [estimate["low"], estimate["high"]],
                "interval_method": stats.INTERVAL_NAME,
                "chance": chance,
                "k": k_used,
                "k_requested": k,
                "t": temperature,
                **sets.info,
            },
        )


@main.command()
@_probe_options
@click.option("--epochs", type=click.IntRange(1), default=60, show_default=True)
@click.option(
    "--lr",
    type=click.FloatRange(0, min_open=True),
    default=probes.LINEAR_LR,
    show_default=True,
    help="peak learning rate (features are standardised, so it does not depend on the checkpoint)",
)
@click.option("--weight-decay", type=click.FloatRange(0), default=0.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out",
    "out_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="where to save the trained head (see load_linear_head)",
)
def linear(
    epochs: int,
    lr: float,
    weight_decay: float,
    seed: int,
    out_path: Path,
    json_path: Path | None,
    device: torch.device,
    **data: Any,
) -> None:
    """Train a linear probe on frozen centre-crop features; report val top-1 and save the head."""
    with click_errors():
        sets = probe_features(device, **data)
    train_x = sets.train_features.to(device)
    head = probes.train_linear(
        train_x,
        sets.train_labels,
        len(sets.classes),
        epochs=epochs,
        lr=lr,
        batch_size=data["batch_size"],
        weight_decay=weight_decay,
        seed=seed,
    )
    acc, train_acc = (
        probes.top1(head, sets.val_features, sets.val_labels),
        probes.top1(head, train_x, sets.train_labels),
    )
    probes.save_linear_head(
        out_path,
        head,
        sets.classes,
        sets.info["arch"],
        sets.info["image_size"],
        sets.info["checkpoint"],
    )
    estimate = stats.from_accuracy(acc, len(sets.val_labels))
    chance = 1 / len(sets.classes)
    batch_used = min(data["batch_size"], len(sets.train_labels))
    if batch_used < data["batch_size"]:
        click.echo(
            f"note: batch size {data['batch_size']} asked, {batch_used} used: there are only "
            f"{batch_used} training images"
        )
    click.echo(
        f"linear top-1: {stats.estimate_text(estimate, 2)} ({stats.INTERVAL_NAME}), chance "
        f"{100 * chance:.2f}% ({len(sets.classes)} classes); train {100 * train_acc:.2f}% of "
        f"{len(sets.train_labels)} images, {epochs} epochs, lr {lr}, batch {batch_used}; "
        f"head saved to {out_path}"
    )
    echo_skips(sets.info["skipped"])
    if json_path is not None:
        report.write_json(
            json_path,
            {
                "metric": "linear",
                "top1": acc,
                "top1_interval": [estimate["low"], estimate["high"]],
                "interval_method": stats.INTERVAL_NAME,
                "chance": chance,
                "train_top1": train_acc,
                "epochs": epochs,
                "lr": lr,
                "batch_size": batch_used,
                "batch_size_requested": data["batch_size"],
                "weight_decay": weight_decay,
                "seed": seed,
                "head": str(out_path),
                **sets.info,
            },
        )


# --------------------------------------------------------------------------- robustness


@main.command()
@checkpoint_option()
@linear_head_option(
    "head saved by `nsneg-eval linear` for this checkpoint (its classes are the ones evaluated)"
)
@click.option(
    "--imagenet-val",
    required=True,
    type=existing_folder,
    help="ImageNet(-100) val as DIR/<wnid>/<image>",
)
@click.option(
    "--imagenet-c",
    type=existing_folder,
    help="released ImageNet-C tree DIR/<corruption>/<severity>/<wnid>/* [default: generate from val]",
)
@click.option("--sketch", type=existing_folder, help="ImageNet-Sketch DIR/<wnid>/*")
@click.option("--rendition", type=existing_folder, help="ImageNet-R DIR/<wnid>/*")
@click.option("--stylized", type=existing_folder, help="Stylized-ImageNet val DIR/<wnid>/*")
@click.option(
    "--corruptions",
    default="all",
    show_default=True,
    help="all, none, or names separated by commas",
)
@click.option("--severities", default="1,2,3,4,5", show_default=True)
@click.option(
    "--max-per-class",
    type=click.IntRange(1),
    default=None,
    help="at most N images per class and set",
)
@click.option(
    "--compare",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="robustness.json of another checkpoint to show alongside (repeatable)",
)
@click.option(
    "--name", default=None, help="this checkpoint's label [default: its run directory or file name]"
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where robustness.{md,json,png} go [default: robustness/ beside the checkpoint; "
    "robustness-<name> with --name or a file not named checkpoint.pt]",
)
@loader_options
def robustness(
    checkpoint_path: Path,
    head_path: Path,
    imagenet_val: Path,
    imagenet_c: Path | None,
    sketch: Path | None,
    rendition: Path | None,
    stylized: Path | None,
    corruptions: str,
    severities: str,
    max_per_class: int | None,
    compare: tuple[Path, ...],
    name: str | None,
    out_dir: Path | None,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> None:
    """Top-1 of the frozen encoder + linear head on ImageNet val, ImageNet-C, -Sketch, -R and Stylized-ImageNet."""
    names = parsed_option(robust.parse_corruptions, corruptions, "--corruptions")
    levels = parsed_option(robust.parse_severities, severities, "--severities")
    others = [parsed_option(robust.load_report, path, "--compare") for path in compare]
    ood = {
        key: root
        for key, root in (("sketch", sketch), ("rendition", rendition), ("stylized", stylized))
        if root is not None
    }
    out_dir = out_dir or outputs.default_out_dir("robustness", checkpoint_path, name)
    name = name or outputs.run_name(checkpoint_path)
    with click_errors():
        outputs.claim(out_dir, "robustness", outputs.evaluated(checkpoint_path))
        result = robust.evaluate_checkpoint(
            checkpoint_path,
            head_path,
            imagenet_val,
            device,
            ood,
            imagenet_c,
            names,
            levels,
            name=name,
            max_per_class=max_per_class,
            batch_size=batch_size,
            workers=workers,
        )
    with click_errors():
        click.echo(robustness_report.write(out_dir, result, others))
    for key in result["skipped_sets"]:
        click.echo(
            f"note: {robust.SET_TITLES[key]} ({result['sets'][key]['path']}) shares no class "
            "with the head: skipped (recorded in robustness.json as skipped_sets)",
            err=True,
        )
    click.echo(f"wrote {out_dir / 'robustness.md'}, robustness.json and robustness.png")


# --------------------------------------------------------------------------- table


@main.command()
@click.option(
    "--checkpoint",
    "checkpoints",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="a run's checkpoint (repeatable); seeds of one configuration become one row",
)
@click.option(
    "--train",
    "train_dir",
    required=True,
    type=existing_folder,
    help="linear-probe training images: ImageNet(-100) train as DIR/<wnid>/<image>, or a shard directory",
)
@click.option(
    "--val",
    "val_dir",
    required=True,
    type=existing_folder,
    help="ImageNet(-100) val as DIR/<wnid>/<image> (the IN-100 column; ImageNet-C is made from it)",
)
@click.option("--train-split", default="train", show_default=True)
@click.option("--sketch", type=existing_folder, help="ImageNet-Sketch DIR/<wnid>/*")
@click.option("--rendition", type=existing_folder, help="ImageNet-R DIR/<wnid>/*")
@click.option("--stylized", type=existing_folder, help="Stylized-ImageNet val DIR/<wnid>/*")
@click.option(
    "--imagenet-c",
    type=existing_folder,
    help="released ImageNet-C tree [default: generate from val]",
)
@click.option("--corruptions", default="all", show_default=True)
@click.option("--severities", default="1,2,3,4,5", show_default=True)
@click.option("--max-per-class", type=click.IntRange(1), default=None)
@click.option(
    "--cue-conflict",
    type=existing_folder,
    help="texture-vs-shape stimuli: adds a shape-bias column",
)
@click.option(
    "--texture-shards",
    type=existing_folder,
    help="ImageNet-Texture shard directory: adds a held-out texture top-1 column (texture-classes)",
)
@click.option(
    "--texture-holdout",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="fraction of textures held out of the texture probe (texture-classes --holdout)",
)
@click.option(
    "--epochs", type=click.IntRange(1), default=60, show_default=True, help="probe epochs"
)
@click.option(
    "--lr", type=click.FloatRange(0, min_open=True), default=probes.LINEAR_LR, show_default=True
)
@click.option("--seed", type=int, default=0, show_default=True, help="probe seed")
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="table.{md,json,png} and the cached evaluations (runs/) [default: table/ in the folder "
    "that holds the checkpoints' run folders]; never another set of checkpoints' folder",
)
@feature_options("the checkpoint's training size, else 224")
def table(
    checkpoints: tuple[Path, ...],
    train_dir: Path,
    val_dir: Path,
    train_split: str,
    corruptions: str,
    severities: str,
    out_dir: Path | None,
    batch_size: int,
    workers: int,
    device: torch.device,
    **options: Any,
) -> None:
    """The paper's Table 1 for these checkpoints: IN-100, IN-C, Sketch, Stylized, R as mean ± std over
    seeds, with the paper's rows beside; evaluations are cached and reused."""
    if out_dir is None:  # beside the runs: runs/a/checkpoint.pt, runs/b/checkpoint.pt -> runs/table
        folders = sorted({str(Path(p).resolve().parent) for p in checkpoints})
        out_dir = Path(os.path.commonpath(folders)) / "table"
    params = {
        "train": str(train_dir.resolve()),
        "val": str(val_dir.resolve()),
        "train_split": train_split,
        "val_split": "val",
        "corruptions": parsed_option(robust.parse_corruptions, corruptions, "--corruptions"),
        "severities": parsed_option(robust.parse_severities, severities, "--severities"),
        **{
            key: str(value.resolve()) if isinstance(value, Path) else value
            for key, value in options.items()
        },
    }
    with click_errors():
        found, text = tables.make_table(
            list(checkpoints), params, out_dir, device, batch_size, workers, say=click.echo
        )
    click.echo(text)
    click.echo(
        f"wrote {out_dir / 'table.md'}, table.json and table.png "
        f"({len(found['reused'])} of {len(checkpoints)} evaluations reused)"
    )
