"""Pair a texture-only shard set with a local ImageNet copy (``nsneg-textures pair``).

Published sets are built with ``--no-source``: they carry no ImageNet pixels, which we
may not redistribute, yet training needs them. This job joins every texture sample to
``ROOT/<split>/<wnid>/<source_name>`` and writes one output shard per input shard (same
name) with the source file's bytes added as ``source.img``; the texture, class and json
members are copied byte for byte, never re-encoded. Output shards go through
``ShardWriter`` and are fingerprinted by (input shard sha256, ImageNet root,
split), so a rerun keeps finished shards and a killed run leaves no partial final shard.
Plain Python: the work is file copying, Ray would add nothing.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nsneg.datasets_manifest.format.manifest import load_manifest, verify
from nsneg.datasets_manifest.format.naming import (
    CLASS_FIELD,
    META_FIELD,
    SOURCE_FIELD,
    TEXTURE_FIELD,
)
from nsneg.datasets_manifest.format.sample_reader import BadSample, check_sample, iter_raw
from nsneg.datasets_manifest.format.shard_writer import ShardWriter
from nsneg.pipeline import shards
from nsneg.pipeline.shards import ShardSpec, finished_record
from nsneg.pipeline.sources import folder_listing, key_candidates

log = logging.getLogger(__name__)

#: How many ImageNet files without a texture the manifest names (the count is always exact).
UNPAIRED_EXAMPLES = 20
MISSING = "missing in ImageNet"


class PairError(RuntimeError):
    """The inputs cannot be paired; raised before anything is written."""


@dataclass
class PairSummary:
    split: str
    samples: int  # texture samples in the input split
    paired: int  # samples in the finished output shards
    shards: int
    shards_written: int  # output shards written by this run (the rest were already done)
    missing: list[dict[str, str]]  # texture samples skipped here, with reasons
    previously_skipped: int  # skipped by the texture job; still listed as skipped
    unpaired: int  # ImageNet files of the set's classes that have no texture
    unpaired_examples: list[str]
    seconds: float
    out: Path


def open_textures(textures: Path, split: str) -> dict[str, Any]:
    """The texture set's manifest, after refusing anything that must not be paired."""
    try:
        manifest = load_manifest(textures)
    except (FileNotFoundError, ValueError) as e:
        raise PairError(str(e)) from None
    if manifest["has_source"]:
        raise PairError(f"{textures} already carries source pixels: nothing to pair")
    if split not in manifest["splits"]:
        raise PairError(f"split {split!r} not in {textures} (has {sorted(manifest['splits'])})")
    problems = verify(textures)
    if problems:
        raise PairError(
            f"{textures}: shards do not match their manifest, refusing to pair them:\n  "
            + "\n  ".join(problems)
        )
    return manifest


def shard_fingerprint(input_sha256: str, imagenet: Path, split: str) -> str:
    """What an output shard is made of: a finished shard with another fingerprint is never reused."""
    return hashlib.sha256(
        f"{input_sha256}\n{Path(imagenet).resolve()}\n{split}".encode()
    ).hexdigest()


def _relative(wnid: str, name: str) -> str:
    return f"{wnid}/{name}"


def _source_bytes(
    key: str, meta: dict[str, Any], split_dir: Path
) -> tuple[Path, bytes | None, str | None]:
    """-> (expected ImageNet path, its bytes or None, the reason when None).

    The key must be one the build would have given this file (``sources.key_candidates``).
    """
    wnid, name = str(meta["wnid"]), str(meta["source_name"])
    path = split_dir / wnid / name
    if Path(wnid).name != wnid or Path(name).name != name or not path.is_file():
        return path, None, MISSING
    stem = Path(name).stem
    if key not in key_candidates(wnid, stem):
        return path, None, f"key {key!r} does not match ImageNet file {name!r}"
    try:
        return path, path.read_bytes(), None
    except OSError as e:
        return path, None, f"cannot read: {e}"


def pair_shard(
    input_path: Path,
    spec: ShardSpec,
    split_dir: Path,
    report: Callable[[int], Any] = lambda n: None,
    classes: list[str] | None = None,
) -> dict[str, Any]:
    """Write one paired shard; returns its record.

    Every input sample passes the sample policy first (``check_sample``): a bad one
    is skipped and listed with its reason, like a sample whose ImageNet file is missing.

    The record also lists every texture sample's ``<wnid>/<source_name>`` (``sources``),
    so a resumed run can count unpaired ImageNet files without rereading finished shards.
    """
    writer = ShardWriter(Path(spec.path))
    skipped: list[dict[str, str]] = []
    sources: list[str] = []
    try:
        for raw in iter_raw([input_path]):
            key = raw["__key__"]
            try:
                meta = check_sample(raw, classes, has_source=False).meta
                if not isinstance(meta.get("wnid"), str) or not isinstance(
                    meta.get("source_name"), str
                ):
                    raise BadSample("json", "json names no wnid and source_name")
            except BadSample as e:
                log.warning("skipped sample %s in shard %s: %s", key, input_path, e.reason)
                skipped.append({"path": str(input_path), "key": key, "reason": e.reason})
                report(1)
                continue
            sources.append(_relative(meta["wnid"], meta["source_name"]))
            path, data, reason = _source_bytes(key, meta, split_dir)
            if data is None:
                skipped.append({"path": str(path), "key": key, "reason": reason})
            else:
                members = {f: raw[f] for f in (TEXTURE_FIELD, CLASS_FIELD, META_FIELD)}
                writer.write({"__key__": key, **members, SOURCE_FIELD: data})
            report(1)
        return writer.commit(
            {
                "fingerprint": spec.fingerprint,
                "index": spec.index,
                "skipped": skipped,
                "sources": sources,
            }
        )
    except BaseException:
        writer.abort()
        raise


def run(
    textures: Path, imagenet: Path, out: Path, split: str = "train", *, show_progress: bool = True
) -> PairSummary:
    """Make (or finish making) the paired set for one split under ``out``."""
    from tqdm import tqdm

    start = time.time()
    textures, imagenet, out = Path(textures), Path(imagenet), Path(out)
    manifest = open_textures(textures, split)
    split_dir = imagenet / split
    if not split_dir.is_dir():
        raise PairError(
            f"{split_dir} is not a directory: expected {imagenet}/{split}/<wnid>/<image files>"
        )
    if out.resolve() == textures.resolve():
        raise PairError(
            "--out must differ from --textures: paired shards keep the input shards' names"
        )
    try:  # refuse before any work: pairing another split into ``out`` is fine, another set is not
        shards.check_mergeable(out, manifest["classes"], manifest["generator"], True)
    except ValueError as e:
        raise PairError(str(e)) from None
    info = manifest["splits"][split]
    specs = [
        ShardSpec(
            index=i,
            path=str(out / split / s["name"]),
            fingerprint=shard_fingerprint(s["sha256"], imagenet, split),
        )
        for i, s in enumerate(info["shards"])
    ]
    records = {s.index: r for s in specs if (r := finished_record(s)) is not None}
    pending = [s for s in specs if s.index not in records]
    done = sum(info["shards"][i]["samples"] for i in records)
    bar = tqdm(
        total=info["samples"], initial=done, unit="img", desc="pairing", disable=not show_progress
    )
    try:
        for spec in pending:
            input_path = textures / split / info["shards"][spec.index]["name"]
            records[spec.index] = pair_shard(
                input_path, spec, split_dir, bar.update, manifest["classes"]
            )
            bar.set_postfix(
                missing=sum(len(r["skipped"]) for r in records.values()), shards=len(records)
            )
    finally:  # whatever happened, the manifest lists exactly the shards that are finished
        bar.close()
        ordered = [records[s.index] for s in specs if s.index in records]
        unpaired = _unpaired_sources(imagenet, split, manifest, ordered)
        _write_manifest(out, split, manifest, ordered, len(specs), unpaired)
    return PairSummary(
        split=split,
        samples=info["samples"],
        paired=sum(r["samples"] for r in ordered),
        shards=len(specs),
        shards_written=len(pending),
        missing=[s for r in ordered for s in r["skipped"]],
        previously_skipped=len(info["skipped"]),
        unpaired=len(unpaired),
        unpaired_examples=unpaired[:UNPAIRED_EXAMPLES],
        seconds=time.time() - start,
        out=out,
    )


def _unpaired_sources(
    imagenet: Path, split: str, manifest: dict[str, Any], records: list[dict[str, Any]]
) -> list[str]:
    """ImageNet files of the set's classes that neither have a texture nor were skipped by the texture job."""
    accounted = {name for r in records for name in r["sources"]}
    accounted |= {
        _relative(Path(s["path"]).parent.name, Path(s["path"]).name)
        for s in manifest["splits"][split]["skipped"]
    }
    classes = set(manifest["classes"])
    try:
        images = folder_listing(imagenet, split).images
    except (FileNotFoundError, ValueError):
        return []  # no image files at all: every texture sample is already reported missing
    return [
        im.path
        for im in images
        if im.wnid in classes and _relative(im.wnid, Path(im.path).name) not in accounted
    ]


def _write_manifest(
    out: Path,
    split: str,
    textures_manifest: dict[str, Any],
    records: list[dict[str, Any]],
    n_shards: int,
    unpaired: list[str],
) -> None:
    """Merge this split into ``out``'s manifest (other paired splits kept)."""
    info = textures_manifest["splits"][split]
    split_info = {
        "shards": records,
        "skipped": info["skipped"] + [s for r in records for s in r["skipped"]],
        "complete": info["complete"] and len(records) == n_shards,
    }
    shards.merge_split(
        out,
        textures_manifest["classes"],
        textures_manifest["generator"],
        True,
        split,
        split_info,
        extra={
            "unpaired_sources": {"count": len(unpaired), "examples": unpaired[:UNPAIRED_EXAMPLES]}
        },
    )
