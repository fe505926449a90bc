"""The paper's folder layout, both ways: a shard set to and from ``<root>/<split>/<wnid>/<stem>.png``.

The paper's released code (Ge et al. 2021) keeps ImageNet-Texture as a plain image folder,
``imagenet-texture/{train,val}/<wnid>/<stem>.png`` (224 px PNGs made by its
``preprocess/imangenet_texture_syn.py``), and its ``--robust texture`` trainer
(``DuoImageNetFolder``) finds a texture's photo by its path alone::

    photo = texture_path.replace("-texture", "").replace("png", "JPEG")

so ``imagenet-100-texture/train/n01/x.png`` pairs with ``imagenet-100/train/n01/x.JPEG``.

* ``export_set``: a shard set -> that layout (textures as PNG; with ``sources_to`` the
  source files too, named so the rule finds them). Files already there with the same bytes
  are kept (a rerun resumes); a different file is never overwritten.
* ``import_folder``: that layout (with or without the ImageNet root for the sources) -> a shard
  set of our contract (manifest, sha256, the generator recorded as external), resumable like
  the build: shards are fingerprinted by their files and finished ones are kept.

Every sample read goes through the sample policy (``format.sample_reader``); every file imported through
the pipeline's image loader (``format.image_decode.decode_rgb``: the same pixel limit, no bomb decoded).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.constants import TEXTURE_SIZE
from nsneg.datasets_manifest.format.image_decode import BadImage, decode_rgb
from nsneg.datasets_manifest.format.manifest import load_manifest
from nsneg.datasets_manifest.format.sample_reader import iter_samples
from nsneg.datasets_manifest.format.shard_writer import ShardWriter, encode_sample
from nsneg.datasets_manifest.format.skip_log import (
    DEFAULT_MAX_SKIP_FRACTION,
    SkipLog,
    check_fraction,
)
from nsneg.pipeline import shards
from nsneg.pipeline.sources import IMAGE_SUFFIXES, SourceImage, folder_listing

log = logging.getLogger(__name__)

LAYOUT = "<root>/<split>/<wnid>/<stem>.png"
#: What the paper's ``DuoImageNetFolder`` does to a texture's path to find its photo.
TEXTURE_PART, PHOTO_PART = "-texture", ""
TEXTURE_SUFFIX, PHOTO_SUFFIX = "png", "JPEG"
PAPER_SPLITS = ("train", "val")


class LayoutError(ValueError):
    """A folder that is not in the paper's layout, or an export that would not pair."""


def paired_photo_path(texture_path: str) -> str:
    """The paper's pairing rule, as its trainer applies it (to the whole path)."""
    return texture_path.replace(TEXTURE_PART, PHOTO_PART).replace(TEXTURE_SUFFIX, PHOTO_SUFFIX)


def _plain(name: str) -> bool:
    return bool(name) and Path(name).name == name and not name.startswith(".")


# --------------------------------------------------------------------------- export


@dataclass
class ExportSummary:
    written: int = 0
    kept: int = 0  # already there with the same bytes
    sources: int = 0
    per_split: dict[str, int] = field(default_factory=dict)


def export_set(
    root: Path,
    out: Path,
    splits: list[str] | None = None,
    sources_to: Path | None = None,
    skips: SkipLog | None = None,
) -> ExportSummary:
    """Write ``splits`` (default: all) of the shard set ``root`` as ``out/<split>/<wnid>/<stem>.png``
    (``stem``: the source file's, so the paper's pairing rule finds the ImageNet photo), and, with
    ``sources_to``, each sample's source file as ``sources_to/<split>/<wnid>/<stem>.JPEG``."""
    root, out = Path(root), Path(out)
    manifest = load_manifest(root)
    splits = splits or list(manifest["splits"])
    if sources_to is not None:
        if not manifest["has_source"]:
            raise LayoutError(f"{root} carries no source pixels: nothing to write to {sources_to}")
        probe = out / "train" / "n0" / f"x.{TEXTURE_SUFFIX}"
        expected = Path(sources_to) / "train" / "n0" / f"x.{PHOTO_SUFFIX}"
        if Path(paired_photo_path(str(probe))) != expected:
            raise LayoutError(
                f"the paper's trainer finds a texture's photo by replacing {TEXTURE_PART!r} with "
                f"{PHOTO_PART!r} and {TEXTURE_SUFFIX!r} with {PHOTO_SUFFIX!r} in its path: with "
                f"--to {out} it looks in {Path(paired_photo_path(str(probe))).parents[2]}, not "
                f"{sources_to} (name them e.g. imagenet-100-texture and imagenet-100)"
            )
    skips = skips if skips is not None else SkipLog(DEFAULT_MAX_SKIP_FRACTION)
    summary = ExportSummary()
    for split in splits:
        if split not in manifest["splits"]:
            raise LayoutError(f"{root} has no split {split!r} (has {sorted(manifest['splits'])})")
        seen: set[Path] = set()
        count = 0
        for sample in iter_samples(root, split, skips):
            wnid = manifest["classes"][sample.cls]
            source_name = sample.meta.get("source_name")
            stem = Path(source_name).stem if isinstance(source_name, str) else sample.key
            if not (_plain(wnid) and _plain(stem)):
                skips.skip(
                    root / split, sample.key, f"names no plain file {wnid!r}/{stem!r}", "json"
                )
                continue
            dest = out / split / wnid / f"{stem}.{TEXTURE_SUFFIX}"
            if dest in seen:
                skips.skip(root / split, sample.key, f"a second sample for {dest}", "json")
                continue
            seen.add(dest)
            written = _write_once(dest, files.png_bytes(np.asarray(sample.texture)))
            summary.written += written
            summary.kept += not written
            if sources_to is not None and sample.source_bytes is not None:
                photo = Path(sources_to) / split / wnid / f"{stem}.{PHOTO_SUFFIX}"
                summary.sources += _write_once(photo, sample.source_bytes)
            count += 1
        summary.per_split[split] = count
    return summary


def _write_once(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` atomically; False when it already holds exactly ``data``.
    A different file there is the user's: an error, never overwritten."""
    if path.exists():
        if path.read_bytes() == data:
            return False
        raise LayoutError(f"{path} exists with other content; export into an empty folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write_bytes(path, data)
    return True


# --------------------------------------------------------------------------- import


@dataclass
class ImportSummary:
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)  # split -> counts

    @property
    def skipped(self) -> list[dict[str, str]]:
        return [s for info in self.splits.values() for s in info["skipped"]]


def _listings(folder: Path, splits: list[str] | None) -> tuple[list[str], dict[str, list]]:
    folder = Path(folder)
    present = [s for s in PAPER_SPLITS if (folder / s).is_dir()]
    splits = splits or present
    if not splits:
        raise LayoutError(
            f"{folder} is not in the paper's layout {LAYOUT}: it has no "
            f"{' or '.join(PAPER_SPLITS)} folder"
        )
    images: dict[str, list[SourceImage]] = {}
    for split in splits:
        try:
            images[split] = folder_listing(folder, split).images
        except FileNotFoundError as e:
            raise LayoutError(f"{folder} is not in the paper's layout {LAYOUT}: {e}") from None
    classes = sorted({im.wnid for split_images in images.values() for im in split_images})
    index = {wnid: i for i, wnid in enumerate(classes)}
    return classes, {
        split: [dataclasses.replace(im, cls=index[im.wnid]) for im in split_images]
        for split, split_images in images.items()
    }


def _photo_for(imagenet: Path, split: str, wnid: str, stem: str) -> Path | None:
    folder = Path(imagenet) / split / wnid
    for suffix in (f".{PHOTO_SUFFIX}", ".jpeg", ".jpg", ".JPG"):
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    matches = sorted(
        p for p in folder.glob(f"{stem}.*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    return matches[0] if matches else None


def _import_sample(
    image: SourceImage, split: str, imagenet: Path | None
) -> tuple[dict[str, Any] | None, str | None]:
    """-> (webdataset sample, None) or (None, reason it is skipped)."""
    try:
        data = Path(image.path).read_bytes()
        texture, conversions, fmt = decode_rgb(data)
    except (BadImage, OSError) as e:
        return None, f"texture: {getattr(e, 'reason', e)}"
    if texture.size != (TEXTURE_SIZE, TEXTURE_SIZE):
        return None, (
            f"texture is {texture.width}x{texture.height}, not {TEXTURE_SIZE}x{TEXTURE_SIZE}"
        )
    stem = Path(image.path).stem
    source_bytes, source_name = None, f"{stem}.{PHOTO_SUFFIX}"  # the paper's rule, when unknown
    if imagenet is not None:
        photo = _photo_for(imagenet, split, image.wnid, stem)
        if photo is None:
            return None, f"no photo {split}/{image.wnid}/{stem}.* in {imagenet}"
        source_bytes, source_name = photo.read_bytes(), photo.name
        try:
            decode_rgb(source_bytes)
        except BadImage as e:
            return None, f"source {photo.name}: {e.reason}"
    meta = {
        "key": image.key,
        "wnid": image.wnid,
        "source_name": source_name,
        "source_path": f"{split}/{image.wnid}/{source_name}",
        "texture_file": image.relpath,
        "texture_format": fmt,
        "conversions": conversions,
        "generator": "external",
    }
    sample = encode_sample(image.key, np.asarray(texture), image.cls, meta, source_bytes)
    return sample, None


def import_folder(
    folder: Path,
    out: Path,
    imagenet: Path | None = None,
    splits: list[str] | None = None,
    shard_size: int = 1000,
    made_by: str = "the paper's preprocess/imangenet_texture_syn.py (EmbarkStudios texture-synthesis)",
    max_skip_fraction: float = DEFAULT_MAX_SKIP_FRACTION,
) -> ImportSummary:
    """Make (or finish making) a shard set in ``out`` from a texture folder in the paper's layout."""
    folder, out = Path(folder), Path(out)
    classes, listings = _listings(folder, splits)
    generator = {
        "external": {"layout": LAYOUT, "made_by": made_by},
        "shard_size": shard_size,
        "include_source": imagenet is not None,
        "texture_size": TEXTURE_SIZE,
    }
    has_source = imagenet is not None
    shards.check_mergeable(out, classes, generator, has_source)  # refuse another set's folder
    summary = ImportSummary()
    for split, images in listings.items():
        specs = shards.plan_shards(images, out, split, shard_size, generator)
        records = {s.index: r for s in specs if (r := shards.finished_record(s)) is not None}
        written = 0
        try:
            for spec in specs:
                if spec.index in records:
                    continue
                writer = ShardWriter(Path(spec.path))
                skipped = []
                try:
                    for image in spec.images:
                        sample, reason = _import_sample(image, split, imagenet)
                        if sample is None:
                            log.warning("skipped %s: %s", image.relpath, reason)
                            skipped.append(
                                {"path": image.relpath, "key": image.key, "reason": reason}
                            )
                        else:
                            writer.write(sample)
                    records[spec.index] = writer.commit(
                        {"fingerprint": spec.fingerprint, "index": spec.index, "skipped": skipped}
                    )
                    written += 1
                except BaseException:
                    writer.abort()
                    raise
        finally:  # the manifest lists exactly the shards that are finished
            ordered = [records[s.index] for s in specs if s.index in records]
            skipped_all = [s for r in ordered for s in r.get("skipped", [])]
            shards.merge_split(
                out,
                classes,
                generator,
                has_source,
                split,
                {"shards": ordered, "skipped": skipped_all, "complete": len(ordered) == len(specs)},
            )
        summary.splits[split] = {
            "images": len(images),
            "samples": sum(r["samples"] for r in ordered),
            "shards": len(specs),
            "shards_written": written,
            "skipped": skipped_all,
        }
        if skipped_all:
            check_fraction(
                len(skipped_all),
                max(1, len(images)),
                max_skip_fraction,
                f"{split}, first: {skipped_all[0]['path']}: {skipped_all[0]['reason']}; the "
                "manifest lists each",
            )
    return summary
