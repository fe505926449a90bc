"""The layout of a shard set: its format name and version, the members of a sample, and where
shards and their records live.

Layout (format version 2)::

    <root>/manifest.json
    <root>/<split>/imagenet-texture-<split>-000000.tar          # a split folder holds only shards
    <root>/records/imagenet-texture-<split>-000000.tar.json     # per-shard record (resume)
    <root>/README.md                                            # dataset card (``nsneg-data publish``)

A split folder holds nothing but ``.tar`` shards, so any client reads it as a folder:
Hugging Face ``load_dataset(root)``, Ray Data ``read_webdataset(root/split)``,
``webdataset`` and ``tar``.

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
import re
from pathlib import Path

FORMAT_NAME = "nsneg-imagenet-texture"
FORMAT_VERSION = 2
MANIFEST_NAME = "manifest.json"
RECORDS_DIR = "records"

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
