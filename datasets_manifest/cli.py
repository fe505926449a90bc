"""``nsneg-data``: publish, list, fetch, verify, preview and describe ImageNet-Texture shard sets."""

from __future__ import annotations

import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import click

from nsneg.datasets_manifest import registry
from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.manifest import ManifestError, load_manifest
from nsneg.datasets_manifest.format.manifest import verify as verify_shards
from nsneg.datasets_manifest.format.naming import MANIFEST_NAME
from nsneg.datasets_manifest.format.sample_reader import iter_samples
from nsneg.datasets_manifest.format.skip_log import (
    DEFAULT_MAX_SKIP_FRACTION,
    SkipLog,
    TooManyBadSamples,
)

manifest_dir_option = click.option(
    "--manifest-dir",
    "manifest_dirs",
    multiple=True,
    help="more published manifests (<name>-<version>.json), besides the ones shipped with nsneg "
    "and the user's: a folder, or the url of a published set's folder (repeatable)",
)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


#: A shard set's folder (it must exist).
shard_folder = click.Path(exists=True, file_okay=False, path_type=Path)

#: The sample policy's threshold (``SkipLog``), for every command that reads shards.
max_skip_option = click.option(
    "--max-skip-fraction",
    type=click.FloatRange(0, 1),
    default=DEFAULT_MAX_SKIP_FRACTION,
    show_default=True,
    help="stop when more than this fraction of the samples read is bad (each bad sample is "
    "skipped and named with its shard and key)",
)
check_option = click.option(
    "--check-samples/--no-check-samples",
    "check_samples_",
    default=True,
    show_default=True,
    help="read every sample through the sample policy and report the bad ones",
)


def check_samples(directory: Path, splits, max_skip_fraction: float) -> dict[str, dict]:
    """The sample policy over ``splits`` of a local set -> {split: skip report}; one summary line
    per split; past ``max_skip_fraction`` one clear error (exit status 1)."""
    manifest = load_manifest(directory)
    reports = {}
    for split in splits or manifest["splits"]:
        skips = SkipLog(max_skip_fraction)
        try:
            for _ in iter_samples(directory, split, skips):
                pass
            reports[split] = skips.finish()
        except TooManyBadSamples as e:
            raise click.ClickException(f"{directory}/{split}: {e}") from None
        click.echo(f"{split}: {skips.read} good samples, {skips.summary()}")
    return reports


@contextmanager
def manifest_errors():
    """A missing or unreadable manifest -> ``Error: <message>`` and exit status 1."""
    try:
        yield
    except (FileNotFoundError, ManifestError, TooManyBadSamples) as e:
        raise click.ClickException(str(e)) from None


@click.group()
def main() -> None:
    """Published ImageNet-Texture shard sets."""


@main.command()
@click.argument("shards", type=shard_folder)
@click.option(
    "--base-url",
    required=True,
    help="where the shard files will be served: BASE/<split>/<shard>.tar",
)
@click.option("--name", default="imagenet-texture", show_default=True)
@click.option("--version", "version", default="1", show_default=True)
@click.option(
    "--manifest-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="where the published manifest goes [default: $NSNEG_MANIFEST_DIR, else "
    "~/.local/share/nsneg/sets]",
)
def publish(shards, base_url, name, version, manifest_dir) -> None:
    """Write what lets anyone fetch SHARDS by url or NAME@VERSION once the folder is served, as it
    is, under BASE_URL (upload it yourself): SHARDS/NAME-VERSION.json (also into the manifest
    folder), the name and version in SHARDS/manifest.json, and SHARDS/README.md, the dataset card
    that makes the folder a Hugging Face dataset."""
    with manifest_errors():
        has_source = load_manifest(shards)["has_source"]
        path = registry.publish(shards, base_url, name, version, manifest_dir)
    if has_source:
        click.echo(
            f"warning: {shards} carries ImageNet pixels (source.img); ImageNet's terms do not allow "
            "redistributing them. Publish a set built with --no-source instead.",
            err=True,
        )
    click.echo(f"published {name}@{version}: {path}\ndataset card {Path(shards) / 'README.md'}")


@main.command("list")
@manifest_dir_option
def list_(manifest_dirs) -> None:
    """The known shard sets."""
    with manifest_errors():
        sets = registry.known_sets(manifest_dirs)
    if not sets:
        click.echo(
            "no shard sets known: nsneg ships none yet, and none was published here "
            "(nsneg-data publish) or found in a --manifest-dir DIR|URL; build one with "
            "nsneg-textures build, or fetch a set published elsewhere by its folder url"
        )
        return
    click.echo(f"{'name@version':32s} {'splits':14s} {'samples':>9s} {'size':>10s}  source pixels")
    for s in sets:
        splits = s.manifest["splits"]
        click.echo(
            f"{s.name + '@' + s.version:32s} {','.join(sorted(splits)):14s} "
            f"{sum(i['samples'] for i in splits.values()):9d} {_size(sum(i['bytes'] for i in splits.values())):>10s}  "
            f"{'yes' if s.manifest['has_source'] else 'no'}"
        )


@main.command()
@click.argument("spec", metavar="NAME[@VERSION]|URL")
@click.option("--to", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--split", "splits", multiple=True, help="[default: all splits]")
@click.option("--jobs", type=int, default=4, show_default=True, help="parallel downloads")
@click.option("--retries", type=int, default=5, show_default=True)
@click.option("--quiet", is_flag=True)
@check_option
@max_skip_option
@manifest_dir_option
def fetch(
    spec, to, splits, jobs, retries, quiet, check_samples_, max_skip_fraction, manifest_dirs
) -> None:
    """Download a published set, by name or by its folder's url (hf://datasets/ORG/NAME, https://...):
    resumable, every shard verified before it is kept."""
    from nsneg.datasets_manifest.fetch import fetch as run_fetch

    try:
        published = registry.lookup(spec, manifest_dirs)
        report = run_fetch(
            published, to, list(splits) or None, jobs=jobs, retries=retries, show_progress=not quiet
        )
    except (KeyError, registry.UnknownSet) as e:
        raise click.ClickException(str(e).strip('"')) from None
    click.echo(
        f"{published.name}@{published.version} -> {to}: {len(report.downloaded)} downloaded, "
        f"{len(report.already_verified)} already verified, {len(report.failed)} failed "
        f"({report.retries} retries in all)"
    )
    for shard, error in sorted(report.failed.items()):
        click.echo(f"  FAILED {shard}: {error}", err=True)
    if report.failed:
        sys.exit(1)
    if check_samples_:
        check_samples(to, list(splits) or None, max_skip_fraction)


@main.command()
@click.argument("directory", type=shard_folder)
@check_option
@max_skip_option
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
def verify(directory, check_samples_, max_skip_fraction, json_out) -> None:
    """Re-hash every shard against the manifest, then read every sample through the sample policy;
    exit status 1 on any mismatch, an incomplete split, or past --max-skip-fraction."""
    with manifest_errors():
        manifest = load_manifest(directory)
    problems = {p.split(":")[0]: p for p in verify_shards(directory)}
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            path = str(Path(directory) / split / shard["name"])
            click.echo(
                f"{'BAD' if path in problems else 'ok ':3s} {split}/{shard['name']}"
                + (f"  {problems[path].split(': ', 1)[1]}" if path in problems else "")
            )
    click.echo(
        f"{len(problems)} of {sum(len(i['shards']) for i in manifest['splits'].values())} shards bad"
    )
    incomplete = sorted(split for split, info in manifest["splits"].items() if not info["complete"])
    for split in incomplete:
        click.echo(f"INCOMPLETE {split}: its build did not finish or was refused (see its log)")
    if problems or incomplete:
        sys.exit(1)
    reports = check_samples(directory, None, max_skip_fraction) if check_samples_ else {}
    if json_out:
        files.atomic_write_json(json_out, {"bad_shards": [], "bad_samples": reports})


@main.command()
@click.argument("source", metavar="DIR|NAME[@VERSION]|URL")
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--n", type=int, default=32, show_default=True)
@click.option("--classes", default=None, help="comma-separated class names (wnids) to show")
@click.option("--split", default="train", show_default=True)
@max_skip_option
@manifest_dir_option
def preview(source, out, n, classes, split, max_skip_fraction, manifest_dirs) -> None:
    """A contact sheet of source/texture pairs (texture only for sets without source pixels):
    about N samples, as many of each class shown (every class of --classes)."""
    from nsneg.pipeline.preview import contact_sheet

    wanted = {c for c in classes.split(",") if c} if classes else None
    skips = SkipLog(max_skip_fraction)
    try:
        if Path(source).is_dir():
            contact_sheet(Path(source), split, out, n, wanted, skips)
        else:
            from nsneg.datasets_manifest.fetch import fetch as run_fetch

            published = registry.lookup(source, manifest_dirs)
            total = len(published.urls(split))
            # the first shard, then twice as many until every class shown has its share
            with tempfile.TemporaryDirectory() as tmp:
                first = 1
                while True:
                    report = run_fetch(
                        published, Path(tmp), [split], show_progress=False, first_shards=first
                    )
                    if report.failed:
                        raise click.ClickException(
                            f"could not fetch a shard to preview: {report.failed}"
                        )
                    skips = SkipLog(max_skip_fraction)
                    lacking = contact_sheet(Path(tmp), split, out, n, wanted, skips)
                    if not lacking or first >= total:
                        break
                    first *= 2
        skips.finish()
    except (KeyError, ValueError, FileNotFoundError, registry.UnknownSet) as e:
        raise click.ClickException(str(e).strip('"')) from None
    click.echo(f"preview {out} ({skips.read} samples read, {skips.summary()})")


def _quality_line(split_stats: dict) -> str:
    """The textures' fingerprint and noise ratio, each against its threshold (docs/pipeline.md)."""
    from nsneg.pipeline import fingerprint

    fp, nr = split_stats["fingerprint"], split_stats["noise_ratio"]
    if fp is None:
        return "quality: no textures"
    ok = fingerprint.Fingerprint(**fp).within_thresholds()
    ratio = (
        f"noise ratio {nr['mean']:.3f} (mean of {nr['textures']})"
        if nr
        else "noise ratio: no source pixels"
    )
    return (
        f"quality: {ratio}; fingerprint of {fp['textures']} textures: median 4-px spike "
        f"{fp['median_spike']:.1f} (<= {fingerprint.MAX_MEDIAN_SPIKE:g}), frame ratio "
        f"{fp['frame_ratio']:.3f} (<= {fingerprint.MAX_FRAME_RATIO:g}), 4-px profile spike "
        f"{fp['profile_spike']:.1f} (<= {fingerprint.MAX_PROFILE_SPIKE:g}; share "
        f"{100 * fp['profile_share']:.2f} %): {'no fingerprint' if ok else 'FINGERPRINT'}"
    )


@main.command()
@click.argument("directory", type=shard_folder)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("losses.png"),
    show_default=True,
    help="histogram PNG of texture losses (relative to the current folder)",
)
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None)
@max_skip_option
def stats(directory, plot, json_out, max_skip_fraction) -> None:
    """Samples per class, skipped inputs, bad samples, generator config, the textures' spatial
    fingerprint and noise ratio, texture-loss histogram."""
    from nsneg.datasets_manifest.stats import loss_histogram, shard_stats

    with manifest_errors():
        info = shard_stats(directory, max_skip_fraction)
    synthesis = info["generator"].get("synthesis", {})
    click.echo(
        f"generator: encoder {synthesis.get('encoder')}, sizes {synthesis.get('sizes')}, "
        f"steps {synthesis.get('steps')}, seed {info['generator'].get('seed')}; source pixels: {info['has_source']}"
    )
    for split, s in info["splits"].items():
        click.echo(
            f"{split}: {s['samples']} samples in {s['shards']} shards ({_size(s['bytes'])})"
            f"{'' if s['complete'] else ', INCOMPLETE'}; skipped by the build {s['skipped']} "
            f"{s['skip_reasons'] or ''}"
        )
        bad = s["bad_samples"]
        reasons = ", ".join(f"{k}: {v}" for k, v in bad["skip_reasons"].items())
        click.echo(
            f"  bad samples skipped in reading: {bad['skipped']}"
            + (f" ({reasons})" if reasons else "")
        )
        click.echo(f"  {_quality_line(s)}")
        for cls, count in s["per_class"].items():
            click.echo(f"  {cls:24s} {count}")
    plot_path = loss_histogram(info, plot)
    click.echo(f"loss histogram {plot_path}")
    if json_out:
        files.atomic_write_json(json_out, info)


@main.command()
@click.argument("directory", type=shard_folder)
@click.option(
    "--to",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="the texture folder, e.g. imagenet-100-texture: <split>/<wnid>/<stem>.png",
)
@click.option(
    "--sources-to",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="also write the source photos here (a set with source pixels), e.g. imagenet-100",
)
@click.option("--split", "splits", multiple=True, help="[default: all splits]")
@max_skip_option
def export(directory, out, sources_to, splits, max_skip_fraction) -> None:
    """Write a shard set as the paper's folder layout, which its trainer (DuoImageNetFolder) reads:
    TO/<split>/<wnid>/<stem>.png, paired by path with <imagenet>/<split>/<wnid>/<stem>.JPEG."""
    from nsneg.datasets_manifest import paper_layout

    skips = SkipLog(max_skip_fraction)
    with manifest_errors():
        try:
            summary = paper_layout.export_set(
                directory, out, list(splits) or None, sources_to, skips
            )
            skips.finish()
        except paper_layout.LayoutError as e:
            raise click.ClickException(str(e)) from None
    probe = Path(out) / "SPLIT" / "WNID" / "STEM.png"
    click.echo(
        f"{out}: {summary.written} textures written, {summary.kept} already there "
        f"({', '.join(f'{k} {v}' for k, v in summary.per_split.items())}); {skips.summary()}"
    )
    if sources_to:
        click.echo(
            f"{sources_to}: {summary.sources} source photos written"
            + (
                f" ({summary.reencoded} were not JPEG: re-encoded as JPEG, quality 95, to match "
                "their .JPEG names)"
                if summary.reencoded
                else ""
            )
        )
    click.echo(
        f"the paper's trainer reads each texture's photo from {paper_layout.paired_photo_path(str(probe))}"
    )


@main.command("import")
@click.argument("folder", type=shard_folder)
@click.option(
    "--to",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="the shard set to write (resumable)",
)
@click.option(
    "--imagenet",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="ImageNet root <split>/<wnid>/<stem>.JPEG: the sources go into the shards [default: "
    "textures only; pair them later with nsneg-textures pair]",
)
@click.option("--split", "splits", multiple=True, help="[default: train and val, where present]")
@click.option("--shard-size", type=click.IntRange(1), default=1000, show_default=True)
@click.option(
    "--made-by",
    default=None,
    help="how the textures were made, recorded as the manifest's external generator "
    "[default: the paper's preprocess/imangenet_texture_syn.py]",
)
@max_skip_option
def import_(folder, out, imagenet, splits, shard_size, made_by, max_skip_fraction) -> None:
    """Turn a texture folder in the paper's layout (FOLDER/{train,val}/<wnid>/<stem>.png) into a
    shard set of this format: manifest, sha256, the generator recorded as external."""
    from nsneg.datasets_manifest import paper_layout

    extra = {"made_by": made_by} if made_by else {}
    with manifest_errors():
        try:
            summary = paper_layout.import_folder(
                folder,
                out,
                imagenet,
                list(splits) or None,
                shard_size,
                max_skip_fraction=max_skip_fraction,
                **extra,
            )
        except (paper_layout.LayoutError, RuntimeError) as e:
            raise click.ClickException(str(e)) from None
    for split, info in summary.splits.items():
        click.echo(
            f"{split}: {info['samples']} samples of {info['images']} files in {info['shards']} "
            f"shards ({info['shards_written']} written now); skipped {len(info['skipped'])}"
        )
        for s in info["skipped"][:10]:
            click.echo(f"  {s['path']}: {s['reason']}")
    click.echo(f"manifest {Path(out) / MANIFEST_NAME}")


if __name__ == "__main__":
    main()
