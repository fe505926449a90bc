"""``nsneg-analyze``: texture-classes and shape-bias. The commands parse options, choose the output
folder (``nsneg.trainer.eval.outputs``), call
``texture_classes.analyse`` / ``shape_bias.analyse`` and print; the option bundles are
``nsneg.trainer.eval.cli_options``'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import torch

from nsneg.datasets_manifest.cli import max_skip_option
from nsneg.trainer.analysis import shape_bias, texture_classes, texture_classes_report
from nsneg.trainer.eval import outputs
from nsneg.trainer.eval.cli_options import (
    checkpoint_option,
    click_errors,
    echo_skips,
    existing_folder,
    feature_options,
    linear_head_option,
    options,
    parsed_option,
)
from nsneg.trainer.eval.probes import LINEAR_LR


def _analysis_options(command: str):
    return options(
        feature_options("the checkpoint's (or head's) training size, else 224"),
        click.option(
            "--name",
            default=None,
            help="this model's label [default: its run directory or file name]",
        ),
        click.option(
            "--out-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help=f"where the Markdown, JSON and PNG go [default: {command}/ beside the checkpoint "
            f"({command}-<name> with --name or a file not named checkpoint.pt); without a "
            f"checkpoint {command}/<name>]; never a folder holding another model's report",
        ),
        click.option(
            "--compare",
            multiple=True,
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help=f"{command}.json of another model to show alongside (repeatable)",
        ),
        max_skip_option,
    )


@click.group()
def main() -> None:
    """What a representation relies on: texture-recognisable classes and cue-conflict shape bias."""


@main.command("texture-classes")
@click.option(
    "--shards",
    "shards",
    required=True,
    type=existing_folder,
    help="ImageNet-Texture shard directory",
)
@click.option("--split", default="train", show_default=True, help="shard split to read")
@click.option(
    "--val",
    "val_dir",
    type=existing_folder,
    help="real images: an ImageFolder tree DIR/<wnid>/<image> or a shard directory [default: the shards' "
    "own source photos of the held-out keys]",
)
@click.option(
    "--val-split",
    default="val",
    show_default=True,
    help="split read when --val is a shard directory",
)
@checkpoint_option(
    required=False,
    help="features: this checkpoint's frozen backbone (nsneg or released MoCo .pth.tar)",
)
@click.option(
    "--features",
    "feature_kind",
    type=click.Choice(["pixels"]),
    default=None,
    help="features without a checkpoint (the default then): colour and gradient statistics, no weights",
)
@click.option(
    "--holdout",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.2,
    show_default=True,
    help="fraction of textures held out of probe training (by key hash)",
)
@click.option("--epochs", type=click.IntRange(1), default=60, show_default=True)
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=LINEAR_LR, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="probe seed")
@click.option(
    "--top",
    type=click.IntRange(1),
    default=10,
    show_default=True,
    help="classes in the most/least lists",
)
@_analysis_options("texture-classes")
def texture_classes_command(
    feature_kind: str | None,
    top: int,
    name: str | None,
    out_dir: Path | None,
    compare: tuple[Path, ...],
    **options: Any,
) -> None:
    """Per-class accuracy of a linear probe trained on textures: on held-out textures and on real images."""
    if options["checkpoint_path"] is not None and feature_kind is not None:
        raise click.UsageError("give --checkpoint or --features pixels, not both")
    others = [parsed_option(texture_classes.load_report, path, "--compare") for path in compare]
    out_dir = out_dir or outputs.default_out_dir(
        "texture-classes",
        options["checkpoint_path"],
        name
        or (
            None
            if options["checkpoint_path"]
            else texture_classes.default_name(None, options["shards"])
        ),
    )
    name = name or texture_classes.default_name(options["checkpoint_path"], options["shards"])
    with click_errors():
        report = texture_classes.analyse(
            top=top, say=click.echo, name=name, out_dir=out_dir, others=others, **options
        )
    click.echo(texture_classes_report.terminal_summary(report, top, others))
    echo_skips(report["bad_samples"])


@main.command("shape-bias")
@checkpoint_option(help="nsneg checkpoint or released MoCo .pth.tar")
@linear_head_option("its linear head over ImageNet wnids (nsneg-eval linear --out)")
@click.option(
    "--cue-conflict",
    "cue_dir",
    type=existing_folder,
    help="texture-vs-shape stimuli: DIR/<shape>/<shape><n>-<texture><m>.png over the 16 categories",
)
@click.option(
    "--from-shards",
    "shards",
    type=existing_folder,
    help="make a cue-conflict set from this shard directory instead (shape: a photo, texture: another "
    "class's texture); classes are the head's own",
)
@click.option(
    "--split", default="train", show_default=True, help="shard split read by --from-shards"
)
@click.option(
    "--n",
    "n_pairs",
    type=click.IntRange(1),
    default=200,
    show_default=True,
    help="images made by --from-shards",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="pair sampling of --from-shards"
)
@_analysis_options("shape-bias")
def shape_bias_command(
    cue_dir: Path | None,
    shards: Path | None,
    device: torch.device,
    name: str | None,
    out_dir: Path | None,
    compare: tuple[Path, ...],
    **options: Any,
) -> None:
    """Shape bias on cue-conflict images: shape decisions / (shape + texture decisions)."""
    if (cue_dir is None) == (shards is None):
        raise click.UsageError("give exactly one of --cue-conflict DIR or --from-shards DIR")
    others = [parsed_option(shape_bias.load_report, path, "--compare") for path in compare]
    out_dir = out_dir or outputs.default_out_dir("shape-bias", options["checkpoint_path"], name)
    name = name or outputs.run_name(options["checkpoint_path"])
    with click_errors():
        report = shape_bias.analyse(
            cue_dir=cue_dir,
            shards=shards,
            device=device,
            name=name,
            out_dir=out_dir,
            others=others,
            **options,
        )
    click.echo(shape_bias.summary_table(report, others))
    if report["bad_samples"] is not None:
        echo_skips({"shards": report["bad_samples"]})
    for warning in report["warnings"]:
        click.echo(f"warning: {warning}")
    click.echo(f"wrote {report['outputs']['md']}, .json, .png")
