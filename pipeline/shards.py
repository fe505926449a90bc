"""Shard specs, planning, finished-shard records and the manifest merge: shared by the Ray job and ``pair``.

A ``ShardSpec`` says which shard to write and from what (its ``fingerprint``); a
finished shard has a record (``record_path``) holding its sha256, size and
fingerprint. A rerun keeps a finished shard whose fingerprint matches and refuses one
made from other inputs. Nothing here imports Ray.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.manifest import ManifestError, build_manifest, load_manifest
from nsneg.datasets_manifest.format.naming import MANIFEST_NAME, shard_path
from nsneg.datasets_manifest.format.shard_writer import read_record
from nsneg.pipeline.sources import SourceImage


@dataclass(frozen=True)
class ShardSpec:
    index: int
    path: str
    fingerprint: str
    images: list[SourceImage] = field(
        default_factory=list
    )  # empty where the inputs are shards (``pair``)


def plan_shards(
    images: list[SourceImage], out: Path, split: str, shard_size: int, generator: dict[str, Any]
) -> list[ShardSpec]:
    """Fixed shards of ``shard_size`` images each; a shard's fingerprint covers its images and ``generator``."""
    settings = json.dumps(generator, sort_keys=True)
    specs = []
    for index, start in enumerate(range(0, len(images), shard_size)):
        chunk = images[start : start + shard_size]
        # the absolute path, as format 1 did, so older sets resume; only its hash is stored
        content = settings + "".join(f"\n{im.key}\t{im.path}\t{im.cls}" for im in chunk)
        specs.append(
            ShardSpec(
                index=index,
                path=str(shard_path(out, split, index)),
                fingerprint=hashlib.sha256(content.encode()).hexdigest(),
                images=chunk,
            )
        )
    return specs


def finished_record(spec: ShardSpec) -> dict[str, Any] | None:
    """The record of an already finished shard, or None. A shard made with other inputs or
    settings is an error, not something to silently mix into this dataset."""
    path = Path(spec.path)
    record = read_record(path)
    if record is None:
        return None
    if record.get("fingerprint") != spec.fingerprint:
        raise RuntimeError(
            f"{path} was made from other images or settings than this run's. "
            "Use a new --out directory (or delete the old shards) instead of mixing two datasets."
        )
    if path.stat().st_size != record["bytes"]:
        return None  # damaged after the fact: redo it
    return record


def check_mergeable(
    root: Path, classes: list[str], generator: dict[str, Any], has_source: bool
) -> dict[str, Any] | None:
    """The manifest already in ``root`` (None if none), after refusing one of another shard set."""
    if not (Path(root) / MANIFEST_NAME).exists():
        return None
    old = load_manifest(root)
    if (old["classes"], old["generator"], old["has_source"]) != (classes, generator, has_source):
        raise ManifestError(
            f"{Path(root) / MANIFEST_NAME} describes another shard set (classes, generator or source pixels "
            "differ); use a new output directory instead of mixing two datasets"
        )
    return old


def merge_split(
    root: Path,
    classes: list[str],
    generator: dict[str, Any],
    has_source: bool,
    split: str,
    split_info: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> None:
    """Write ``root/manifest.json`` with ``split`` (re)placed and the other splits kept.

    ``extra``: top-level per-split entries (``{key: value}`` stored as ``manifest[key][split]``).
    """
    old = check_mergeable(root, classes, generator, has_source) or {}
    splits = {**old.get("splits", {}), split: split_info}
    manifest = build_manifest(classes, splits, generator, has_source)
    for key, value in (extra or {}).items():
        manifest[key] = {**old.get(key, {}), split: value}
    Path(root).mkdir(parents=True, exist_ok=True)
    files.atomic_write_json(Path(root) / MANIFEST_NAME, manifest)
