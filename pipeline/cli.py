"""``nsneg-textures``: build ImageNet-Texture shards (``make texture-shards`` calls ``build``)."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from nsneg.datasets_manifest.format.manifest import ManifestError, load_manifest
from nsneg.datasets_manifest.format.naming import MANIFEST_NAME
from nsneg.datasets_manifest.format.skip_log import DEFAULT_MAX_SKIP_FRACTION, TooManyBadSamples
from nsneg.pipeline.dispatch import NoActorAvailable
from nsneg.pipeline.images import RESIZE_SHORT
from nsneg.pipeline.job import ACTOR_WAIT_S
from nsneg.pipeline.pool_plan import CPU_THREADS_PER_ACTOR, PoolRequestError
from nsneg.pipeline.synthesis import CPU_BATCH_SIZE, SynthesisConfig

DEFAULTS = SynthesisConfig()


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


@click.group()
def main() -> None:
    """ImageNet-Texture: non-semantic negatives made by neural texture synthesis."""


@main.command()
@click.option(
    "--imagenet",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="ImageNet root with <split>/<wnid>/* folders. Default: the embedded demo photos.",
)
@click.option("--split", default="train", show_default=True)
@click.option(
    "--subset", type=click.Choice(["all", "imagenet100"]), default="all", show_default=True
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("shards"),
    show_default=True,
)
@click.option(
    "--encoder",
    type=click.Choice(["random", "vgg19"]),
    default="random",
    show_default=True,
    help="vgg19: torchvision's ImageNet weights, downloaded into the torch hub cache when missing "
    "(or --weights FILE).",
)
@click.option("--weights", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--offline",
    is_flag=True,
    help="never download: vgg19 weights must be in the torch hub cache or --weights "
    "(also NSNEG_OFFLINE=1)",
)
@click.option(
    "--sizes",
    default=",".join(map(str, DEFAULTS.sizes)),
    show_default=True,
    help="coarse-to-fine resolutions",
)
@click.option(
    "--steps",
    default=",".join(map(str, DEFAULTS.steps)),
    show_default=True,
    help="Adam steps per resolution",
)
@click.option("--lr", type=float, default=DEFAULTS.lr, show_default=True)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help=f"images synthesised together [default: {CPU_BATCH_SIZE} on a CPU, chosen for the GPU's memory]",
)
@click.option(
    "--accelerated/--no-accelerated",
    default=None,
    help="channels_last + bf16 autocast [default: on GPUs only]",
)
@click.option(
    "--shard-size", type=int, default=None, help="images per shard [default: 1000; 4 for the demo]"
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="synthesis actors [default: planned per node: one per GPU; on CPU-only clusters "
    f"one per {CPU_THREADS_PER_ACTOR} CPUs of a node]",
)
@click.option(
    "--cpus-per-worker",
    type=float,
    default=None,
    help="CPUs of each actor (its torch threads) [default: its node's share]",
)
@click.option(
    "--gpus-per-worker",
    type=float,
    default=None,
    help="GPUs of each actor (0.5: two actors share one) [default: 1 where there are GPUs]",
)
@click.option(
    "--cpu-nodes",
    is_flag=True,
    help="on a cluster with GPUs, put CPU actors on its CPU-only nodes too",
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu"]),
    default="auto",
    show_default=True,
    help="synthesis device: auto is an actor's GPU when it holds one; cpu even then",
)
@click.option(
    "--actor-wait",
    type=float,
    default=ACTOR_WAIT_S,
    show_default=True,
    help="seconds shards may wait with no actor running (none placeable) before the job stops",
)
@click.option("--no-source", is_flag=True, help="omit source pixels (for sets to be published)")
@click.option("--resize-short", type=int, default=RESIZE_SHORT, show_default=True)
@click.option(
    "--max-skip-fraction",
    type=float,
    default=DEFAULT_MAX_SKIP_FRACTION,
    show_default=True,
    help="fail when more than this fraction of images is unusable",
)
@click.option(
    "--preview",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="contact sheet PNG [default: OUT/preview-SPLIT.png]",
)
@click.option("--quiet", is_flag=True, help="no progress bar")
@click.option("--verbose", is_flag=True, help="Ray's own messages too (start-up, workers' output)")
def build(
    imagenet,
    split,
    subset,
    out,
    encoder,
    weights,
    offline,
    sizes,
    steps,
    lr,
    batch_size,
    accelerated,
    shard_size,
    seed,
    workers,
    cpus_per_worker,
    gpus_per_worker,
    cpu_nodes,
    device,
    actor_wait,
    no_source,
    resize_short,
    max_skip_fraction,
    preview,
    quiet,
    verbose,
) -> None:
    """Synthesise one texture per source image into WebDataset shards with a manifest.

    Resumable: rerun the same command after an interruption and finished shards are kept.
    """
    from nsneg.pipeline import job
    from nsneg.pipeline import preview as preview_mod
    from nsneg.pipeline.encoders import OFFLINE_ENV, WeightsNotFound, load_vgg19_state_dict
    from nsneg.pipeline.sources import embedded_listing, folder_listing

    try:
        if offline:
            os.environ[OFFLINE_ENV] = "1"  # the workers, started after this, inherit it
        if encoder == "vgg19":  # fetched (or refused) here, before any worker starts
            load_vgg19_state_dict(weights, progress=not quiet)
        listing = (
            embedded_listing() if imagenet is None else folder_listing(imagenet, split, subset)
        )
        synthesis = SynthesisConfig(
            encoder=encoder,
            weights=str(weights) if weights else None,
            sizes=_ints(sizes),
            steps=_ints(steps),
            lr=lr,
            batch_size=batch_size,
            accelerated=accelerated,
        )
    except (WeightsNotFound, FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    config = job.JobConfig(
        out=out,
        split=split,
        synthesis=synthesis,
        seed=seed,
        shard_size=shard_size or (4 if imagenet is None else 1000),
        include_source=not no_source,
        resize_short=resize_short,
        max_skip_fraction=max_skip_fraction,
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
        cpu_nodes=cpu_nodes,
        device=None if device == "auto" else device,
        actor_wait_s=actor_wait,
    )
    try:
        summary = job.run(config, listing, show_progress=not quiet, verbose=verbose)
    except NoActorAvailable as e:
        rerun = shlex.join(["nsneg-textures", *sys.argv[1:]])
        raise click.ClickException(f"{e} ({rerun})") from None
    except (PoolRequestError, TooManyBadSamples, RuntimeError, ManifestError) as e:
        raise click.ClickException(str(e)) from None
    preview_path = preview or out / f"preview-{split}.png"
    manifest = load_manifest(out)
    if manifest["splits"][split]["samples"]:
        preview_mod.contact_sheet(out, split, preview_path)
    click.echo(f"images     {summary.images} ({len(listing.classes)} classes)")
    click.echo(
        f"shards     {summary.shards} ({summary.shards_written} written now, "
        f"{summary.shards - summary.shards_written - len(summary.failed_shards)} already done)"
    )
    click.echo(
        f"textures/s {summary.textures_per_second:.2f} ({summary.textures_written} in {summary.seconds:.1f} s)"
    )
    if summary.pool:
        click.echo(
            f"actors     {summary.pool}; {summary.actors_started} started on "
            f"{summary.nodes_used} node{'' if summary.nodes_used == 1 else 's'}, "
            f"{summary.actors_lost} lost"
        )
    click.echo(f"skipped    {len(summary.skipped)}")
    for s in summary.skipped[:10]:
        click.echo(f"  {s['path']}: {s['reason']}")
    click.echo(f"manifest   {out / MANIFEST_NAME}")
    if manifest["splits"][split]["samples"]:
        click.echo(f"preview    {preview_path}")
    if summary.failed_shards:
        click.echo(
            f"FAILED     {len(summary.failed_shards)} shards after retries; rerun to resume:",
            err=True,
        )
        for f in summary.failed_shards:
            click.echo(f"  {f}", err=True)
        sys.exit(1)


def _required_folder(name: str, help: str):
    return click.option(
        name, type=click.Path(file_okay=False, path_type=Path), required=True, help=help
    )


@main.command()
@_required_folder(
    "--textures", "texture-only shard set (built with --no-source, e.g. a published one)"
)
@_required_folder("--imagenet", "local ImageNet root with <split>/<wnid>/<file> folders")
@_required_folder("--out", "where the paired shards and manifest go")
@click.option("--split", default="train", show_default=True)
@click.option("--quiet", is_flag=True, help="no progress bar")
def pair(textures, imagenet, out, split, quiet) -> None:
    """Add the ImageNet source pixels to a texture-only shard set, for training.

    Resumable: rerun the same command after an interruption and finished shards are kept.
    """
    from nsneg.pipeline import pair as pairing

    try:
        summary = pairing.run(textures, imagenet, out, split, show_progress=not quiet)
    except (pairing.PairError, RuntimeError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"textures   {summary.samples} samples in {summary.shards} shards ({split})")
    click.echo(f"paired     {summary.paired}")
    click.echo(
        f"shards     {summary.shards} ({summary.shards_written} written now, "
        f"{summary.shards - summary.shards_written} already done)"
    )
    click.echo(
        f"missing    {len(summary.missing)} texture samples without their ImageNet file (skipped)"
    )
    for s in summary.missing[:10]:
        click.echo(f"  {s['path']}: {s['reason']}")
    click.echo(
        f"skipped    {summary.previously_skipped} by the texture job (still listed as skipped)"
    )
    click.echo(f"unpaired   {summary.unpaired} ImageNet files of these classes have no texture")
    for path in summary.unpaired_examples[:10]:
        click.echo(f"  {path}")
    click.echo(f"manifest   {out / MANIFEST_NAME}")


if __name__ == "__main__":
    main()
