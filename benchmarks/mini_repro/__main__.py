"""``python -m mini_repro``: the command line of the mini reproduction."""

from __future__ import annotations

import os
from pathlib import Path

import click

from mini_repro.protocol import PROTOCOLS


@click.command()
@click.option(
    "--protocol",
    "name",
    type=click.Choice(sorted(PROTOCOLS)),
    default="full",
    show_default=True,
    help="full: 2 CPU cores, <= 45 min; gpu: pre-training and readings on one GPU (after "
    "--stage prepare on a CPU machine); quick: the smoke test",
)
@click.option("--quick", is_flag=True, help="same as --protocol quick")
@click.option(
    "--stage",
    type=click.Choice(["all", "prepare", "train"]),
    default="all",
    show_default=True,
    help="prepare: world + textures (CPU, Ray) into --out; train: pre-training, probes and readings "
    "on a prepared --out (CPU or CUDA, no Ray)",
)
@click.option(
    "--device", default="cpu", show_default=True, help="cpu or cuda[:N], for the train stage"
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="[default: runs/mini-repro-<protocol>]",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option(
    "--estimate-budget",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write the protocol's cost estimate (FLOPs per view against the reference machines) "
    "to this JSON file and exit; trains nothing",
)
def main(
    name: str,
    quick: bool,
    stage: str,
    device: str,
    out: Path | None,
    progress: bool,
    estimate_budget: Path | None,
) -> None:
    """Shape vs texture, in miniature: MoCo v2 and BYOL with and without non-semantic negatives."""
    from mini_repro import run

    protocol = PROTOCOLS["quick" if quick else name]
    if estimate_budget:
        from mini_repro import budget
        from nsneg.datasets_manifest.format.files import atomic_write_json

        estimate = budget.estimate(protocol)
        atomic_write_json(estimate_budget, estimate, sort_keys=False)
        click.echo(budget.summary_line(estimate))
        return
    out = out or Path(f"runs/mini-repro-{protocol.name}")
    if (
        not progress
    ):  # the evaluation's own bars too (tqdm reads TQDM_* defaults from the environment)
        os.environ["TQDM_DISABLE"] = "1"
    try:
        if stage in ("all", "prepare"):
            run.prepare(out, protocol, log=click.echo, show_progress=progress)
        if stage in ("all", "train"):
            run.train(out, protocol, device=device, log=click.echo, show_progress=progress)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None


if __name__ == "__main__":
    main()
