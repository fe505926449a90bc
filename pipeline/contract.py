"""The shard contract: the one definition of what an ImageNet-Texture shard set is.

Everything that writes or reads shards (the pipeline, the trainer, the analysis,
``datasets_manifest``) goes through this module, so the format lives in one place.

Layout (format version 2)::

    <root>/manifest.json
    <root>/<split>/imagenet-texture-<split>-000000.tar          # a split folder holds only shards
    <root>/records/imagenet-texture-<split>-000000.tar.json     # per-shard record (resume)
    <root>/README.md                                            # dataset card (``nsneg-data publish``)

A split folder holds nothing but ``.tar`` shards, so any client reads it as a folder:
Hugging Face ``load_dataset(root)``, Ray Data ``read_webdataset(root/split)``,
``webdataset`` and ``tar``. Version 1 kept each record beside its shard
(``<split>/<shard>.tar.json``); version-1 sets still read, and ``upgrade`` (run by any
write into such a set, or ``nsneg-data upgrade``) moves their records.

One sample per source image, every sample with the same members (Hugging Face's
webdataset loader requires a homogeneous set):

* ``<key>.texture.png`` -- the 224x224 RGB texture, lossless PNG
* ``<key>.source.img`` -- the source file's original bytes, unchanged (absent in a
  ``--no-source`` set). One member name whatever the source format, so the set stays
  homogeneous; ``json["source_format"]`` names the format, and PIL sniffs it.
* ``<key>.cls`` -- the class index as decimal text
* ``<key>.json`` -- wnid, source path (relative to the ImageNet root: ``<split>/<wnid>/<file>``),
  crop boxes, seed, encoder, steps, loss, version

Only PNG/image bytes, JSON and text: nothing in a shard is ever unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nsneg.pipeline.files import atomic_write_bytes, atomic_write_json, png_bytes, sha256_file

FORMAT_NAME = "nsneg-imagenet-texture"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
RECORDS_DIR = "records"
TEXTURE_SIZE = 224
CROP_SIZE = 96

TEXTURE_FIELD = "texture.png"
SOURCE_FIELD = "source.img"
CLASS_FIELD = "cls"
META_FIELD = "json"

_SAFE_KEY = re.compile(r"[^A-Za-z0-9_-]")


def shard_name(split: str, index: int) -> str:
    return f"imagenet-texture-{split}-{index:06d}.tar"


def shard_path(root: Path, split: str, index: int) -> Path:
    return Path(root) / split / shard_name(split, index)


def record_path(tar_path: Path) -> Path:
    """The record of a finished shard (sha256, count, skips): ``<root>/records/<shard>.json``.

    Shard names carry their split, so one flat folder holds every split's records and no
    path of it names a split (Hugging Face would read a ``records/train/`` folder as data).
    """
    tar_path = Path(tar_path)
    return tar_path.parent.parent / RECORDS_DIR / f"{tar_path.name}.json"


def v1_record_path(tar_path: Path) -> Path:
    """Where format version 1 kept a shard's record: beside the shard, in the split folder."""
    return Path(tar_path).with_name(Path(tar_path).name + ".json")


def safe_key(stem: str) -> str:
    """A webdataset key for a source stem.

    webdataset splits a member name at its first dot, so a key holds no dot; any
    character outside ``[A-Za-z0-9_-]`` is replaced and a short hash of the original
    stem keeps two different stems from meeting on the same key.
    """
    key = _SAFE_KEY.sub("_", stem)
    if key != stem or not key:
        key = f"{key}-{hashlib.sha1(stem.encode('utf-8')).hexdigest()[:8]}"
    return key


def encode_sample(
    key: str, texture: np.ndarray, cls: int, meta: dict[str, Any], source_bytes: bytes | None
) -> dict[str, Any]:
    """One webdataset sample (a dict of member suffix -> bytes) for a texture."""
    if texture.shape != (TEXTURE_SIZE, TEXTURE_SIZE, 3) or texture.dtype != np.uint8:
        raise ValueError(
            f"texture must be uint8 {TEXTURE_SIZE}x{TEXTURE_SIZE}x3, got {texture.dtype} {texture.shape}"
        )
    if "." in key:
        raise ValueError(f"sample key {key!r} contains a dot")
    sample: dict[str, Any] = {
        "__key__": key,
        TEXTURE_FIELD: png_bytes(texture),
        CLASS_FIELD: str(int(cls)).encode("ascii"),
        META_FIELD: json.dumps(meta, sort_keys=True).encode("utf-8"),
    }
    if source_bytes is not None:
        sample[SOURCE_FIELD] = source_bytes
    return sample


class ShardWriter:
    """Writes one shard under a temporary name; ``commit`` hashes it and renames it into place.

    A shard therefore appears under its final name only when it is complete, and its
    record (sha256, bytes, samples) is written before the rename so that a final name
    always has a record next to it. mtime is fixed, so equal content gives equal bytes.
    """

    def __init__(self, final_path: Path):
        import webdataset as wds

        self.final_path = Path(final_path)
        self.final_path.parent.mkdir(parents=True, exist_ok=True)
        # Leftovers of an earlier attempt at this shard (a killed worker) are never final: drop them.
        for stale in self.final_path.parent.glob(f".{self.final_path.name}*.tmp-*"):
            stale.unlink(missing_ok=True)
        self.tmp_path = self.final_path.with_name(f".{self.final_path.name}.tmp-{os.getpid()}")
        self._file = open(self.tmp_path, "wb")
        self._tar = wds.TarWriter(self._file, encoder=False, mtime=0.0)
        self.samples = 0

    def write(self, sample: dict[str, Any]) -> None:
        self._tar.write(sample)
        self.samples += 1

    def commit(self, extra_record: dict[str, Any]) -> dict[str, Any]:
        self._tar.close()  # closes the file object as well
        with open(self.tmp_path, "rb") as f:
            os.fsync(f.fileno())
        record = {
            "name": self.final_path.name,
            "sha256": sha256_file(self.tmp_path),
            "bytes": self.tmp_path.stat().st_size,
            "samples": self.samples,
            **extra_record,
        }
        record_path(self.final_path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(record_path(self.final_path), record)
        os.replace(self.tmp_path, self.final_path)
        return record

    def abort(self) -> None:
        try:
            self._tar.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)


def read_record(tar_path: Path) -> dict[str, Any] | None:
    """The record of a finished shard, or None when the shard is not (validly) finished."""
    rec_path = record_path(tar_path)
    if not rec_path.exists():
        rec_path = v1_record_path(tar_path)  # a version-1 set not yet upgraded
    if not (tar_path.exists() and rec_path.exists()):
        return None
    try:
        return json.loads(rec_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# --------------------------------------------------------------------------- manifest


def build_manifest(
    classes: list[str],
    splits: dict[str, dict[str, Any]],
    generator: dict[str, Any],
    has_source: bool,
) -> dict[str, Any]:
    """``splits[name] = {"shards": [records], "skipped": [{"path", "key", "reason"}], "complete": bool}``.

    ``complete`` is False while a split still has unfinished shards (an interrupted job).
    """
    out_splits = {}
    for name, split in splits.items():
        shards = [
            {k: r[k] for k in ("name", "sha256", "bytes", "samples")} for r in split["shards"]
        ]
        out_splits[name] = {
            "shards": shards,
            "samples": sum(s["samples"] for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
            "skipped": split["skipped"],
            "complete": split["complete"],
        }
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "classes": classes,
        "has_source": has_source,
        "fields": sorted(
            [TEXTURE_FIELD, CLASS_FIELD, META_FIELD] + ([SOURCE_FIELD] if has_source else [])
        ),
        "generator": generator,
        "splits": out_splits,
    }


_SHARD_SCHEMA = {
    "type": "object",
    "required": ["name", "sha256", "bytes", "samples"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[A-Za-z0-9_-][A-Za-z0-9._-]*\.tar$"},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "bytes": {"type": "integer", "minimum": 0},
        "samples": {"type": "integer", "minimum": 0},
        "url": {"type": "string"},  # published sets only
    },
}

#: The manifest schema. A published set (``datasets_manifest``) is the same document plus
#: ``name``, ``version``, ``base_url`` and a ``url`` per shard.
MANIFEST_SCHEMA = {
    "type": "object",
    "required": [
        "format",
        "format_version",
        "classes",
        "has_source",
        "fields",
        "generator",
        "splits",
    ],
    "properties": {
        "format": {"const": FORMAT_NAME},
        "format_version": {"type": "integer"},
        "classes": {"type": "array", "items": {"type": "string"}},
        "has_source": {"type": "boolean"},
        "fields": {"type": "array", "items": {"type": "string"}},
        "generator": {"type": "object"},
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"},
        "version": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"},
        "base_url": {"type": "string"},
        "splits": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z0-9_-]+$"},
            "additionalProperties": {
                "type": "object",
                "required": ["shards", "samples", "bytes", "skipped", "complete"],
                "properties": {
                    "shards": {"type": "array", "items": _SHARD_SCHEMA},
                    "samples": {"type": "integer"},
                    "bytes": {"type": "integer"},
                    "skipped": {"type": "array"},
                    "complete": {"type": "boolean"},
                },
            },
        },
    },
}


class ManifestError(ValueError):
    pass


def validate_manifest(manifest: Any, where: str = "manifest") -> dict[str, Any]:
    """Check a manifest (local or published) before anything trusts it; clear errors, not KeyErrors.

    Beyond the schema: a known format version, unique shard names, names that cannot
    escape their directory, and shard urls under the set's ``base_url``.
    """
    import jsonschema

    if isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME:
        if manifest.get("format_version") not in READABLE_VERSIONS:
            raise ManifestError(
                f"{where}: format_version {manifest.get('format_version')!r}; this nsneg reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))} (upgrade nsneg to read newer shard sets)"
            )
    try:
        jsonschema.validate(manifest, MANIFEST_SCHEMA)
    except jsonschema.ValidationError as e:
        path = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ManifestError(f"{where}: invalid at {path}: {e.message}") from None
    base = manifest.get("base_url")
    for split, info in manifest["splits"].items():
        names = [s["name"] for s in info["shards"]]
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise ManifestError(f"{where}: duplicate shard names in split {split!r}: {duplicates}")
        for shard in info["shards"]:
            if ".." in shard["name"] or "/" in shard["name"] or "\\" in shard["name"]:
                raise ManifestError(
                    f"{where}: shard name {shard['name']!r} must be a plain file name"
                )
            url = shard.get("url")
            if url is not None and (
                base is None or not url.startswith(base.rstrip("/") + "/") or "/../" in url
            ):
                raise ManifestError(
                    f"{where}: shard url {url!r} is outside the set's base_url {base!r}"
                )
    return manifest


def load_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: is {root} a shard directory written by `nsneg-textures build`?"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    return validate_manifest(manifest, str(path))


def upgrade(root: Path) -> bool:
    """Bring a version-1 set to the current layout in place: records leave the split folders.

    Each record is written to its new place before the old one is removed, and the manifest
    is rewritten last, so an interrupted upgrade is finished by the next. Returns whether
    anything changed.
    """
    root = Path(root)
    manifest = load_manifest(root)
    old_records = sorted(
        p for split in manifest["splits"] for p in (root / split).glob("*.tar.json")
    )
    if manifest["format_version"] == FORMAT_VERSION and not old_records:
        return False
    for old in old_records:
        new = record_path(old.with_suffix(""))
        new.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(new, old.read_bytes())
        old.unlink()
    atomic_write_json(root / MANIFEST_NAME, {**manifest, "format_version": FORMAT_VERSION})
    return True


def shard_paths(root: Path, split: str, manifest: dict[str, Any] | None = None) -> list[Path]:
    manifest = manifest or load_manifest(root)
    if split not in manifest["splits"]:
        raise KeyError(f"split {split!r} not in {root} (has {sorted(manifest['splits'])})")
    return [Path(root) / split / s["name"] for s in manifest["splits"][split]["shards"]]


def shard_problem(path: Path, shard: dict[str, Any], *, hash_it: bool = True) -> str | None:
    """Why the file at ``path`` is not the manifest's ``shard`` (None when it is)."""
    if not path.exists():
        return f"{path}: missing"
    if path.stat().st_size != shard["bytes"]:
        return f"{path}: {path.stat().st_size} bytes, manifest says {shard['bytes']}"
    if hash_it and (actual := sha256_file(path)) != shard["sha256"]:
        return f"{path}: sha256 mismatch (manifest {shard['sha256']}, file {actual})"
    return None


def verify(root: Path, splits: Iterable[str] | None = None) -> list[str]:
    """Re-hash every shard of ``splits`` (default: all) listed in the manifest; returns a list of
    problems (empty = verified)."""
    manifest = load_manifest(root)
    problems = []
    for split in manifest["splits"] if splits is None else splits:
        for shard in manifest["splits"][split]["shards"]:
            if problem := shard_problem(Path(root) / split / shard["name"], shard):
                problems.append(problem)
    return problems


# --------------------------------------------------------------------------- reading


@dataclass
class TextureSample:
    key: str
    texture: Image.Image
    cls: int
    meta: dict[str, Any]
    source_bytes: bytes | None

    def source(self) -> Image.Image | None:
        return (
            None
            if self.source_bytes is None
            else Image.open(io.BytesIO(self.source_bytes)).convert("RGB")
        )


def decode_sample(sample: dict[str, Any]) -> TextureSample:
    """A raw webdataset sample (member suffix -> bytes) -> TextureSample. Decodes with PIL only."""
    texture = Image.open(io.BytesIO(sample[TEXTURE_FIELD]))
    texture.load()
    return TextureSample(
        key=sample["__key__"],
        texture=texture.convert("RGB"),
        cls=int(sample[CLASS_FIELD]),
        meta=json.loads(sample[META_FIELD]),
        source_bytes=sample.get(SOURCE_FIELD),
    )


def iter_raw(urls: Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    """Raw samples (bytes, undecoded) from shards in order, through webdataset."""
    import webdataset as wds

    urls = [str(u) for u in urls]
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False)
    yield from dataset


def iter_samples(root: Path, split: str) -> Iterator[TextureSample]:
    """Decoded samples of one split of a local shard set, in manifest order."""
    for raw in iter_raw(shard_paths(root, split)):
        yield decode_sample(raw)


def tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()
