"""``python -m mini_repro``: the command line of the mini reproduction."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from mini_repro.protocol import PROTOCOLS, Protocol


def smoke(protocol: Protocol, images: int) -> Protocol:
    """``protocol`` with at most ``images`` per class and split, named as a smoke run."""
    return replace(
        protocol,
        name=f"{protocol.name}-smoke{images}",
        per_class={split: min(n, images) for split, n in protocol.per_class.items()},
        budget=f"a smoke run: at most {images} images per class, not a result",
    )


@click.command()
@click.option(
    "--protocol",
    "name",
    type=click.Choice(sorted(PROTOCOLS)),
    default="full",
    show_default=True,
    help="full: the MoCo rows, 2 CPU cores, <= 90 min; byol: the BYOL rows (same world, "
    "<= 90 min); long: full with 4x the views; gpu: every row, 16x the views, on one GPU (after "
    "--stage prepare on a CPU machine); quick: the smoke test",
)
@click.option("--quick", is_flag=True, help="same as --protocol quick")
@click.option(
    "--stage",
    type=click.Choice(["all", "prepare", "train", "search"]),
    default="all",
    show_default=True,
    help="prepare: world + textures (CPU, Ray) into --data; train: pre-training, probes and "
    "readings on a prepared --data (CPU or CUDA, no Ray); all: both; search: prepare, then the "
    "baseline alone at the protocol's searched budgets -> gate-search.json (no NS row)",
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
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="the prepared folder (world + textures) to read or make [default: --out]; protocols "
    "with the same data settings share one (e.g. --protocol byol --data runs/mini-repro-full)",
)
@click.option(
    "--images-per-class",
    type=click.IntRange(min=2),
    default=None,
    help="a smoke run of the protocol's stages: at most this many images per class and split "
    "(not a result; the protocol is named <protocol>-smoke<N>)",
)
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="the runs' and stages' bars (a probe's own short bars show on a terminal only)",
)
@click.option(
    "--estimate-budget",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write the protocol's cost estimate on the AMD EPYC reference (measured per-view costs) "
    "to this JSON file and exit; trains nothing",
)
def main(
    name: str,
    quick: bool,
    stage: str,
    device: str,
    out: Path | None,
    data: Path | None,
    images_per_class: int | None,
    progress: bool,
    estimate_budget: Path | None,
) -> None:
    """Shape vs texture, in miniature: MoCo v2 and BYOL with and without non-semantic negatives."""
    from mini_repro import prepare, run, search

    protocol = PROTOCOLS["quick" if quick else name]
    if images_per_class:
        protocol = smoke(protocol, images_per_class)
    if estimate_budget:
        from mini_repro import budget
        from nsneg.datasets_manifest.format.files import atomic_write_json

        record = budget.record(protocol)
        atomic_write_json(estimate_budget, record, sort_keys=False)
        click.echo(budget.summary_line(record["estimate"]))
        return
    out = out or Path(f"runs/mini-repro-{protocol.name}")
    data = data or out
    try:
        if stage in ("all", "prepare", "search"):
            prepare.prepare(data, protocol, log=click.echo, show_progress=progress)
        if stage in ("all", "train"):
            run.train(out, protocol, device, log=click.echo, show_progress=progress, data=data)
        if stage == "search":
            search.search(out, protocol, device, log=click.echo, show_progress=progress, data=data)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None


if __name__ == "__main__":
    main()
