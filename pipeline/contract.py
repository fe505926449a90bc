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

Reading follows one sample policy, for every reader (``read_tar``, ``check_sample``,
``SkipLog``; docs/contract.md): a sample that is not exactly the above -- a tar member that is
not a plain regular file of a known field and size, a texture that is not a 224x224 RGB PNG,
a ``cls`` outside the manifest's classes, ``json`` that is not an object, a source over the
pipeline's pixel limit -- is skipped, counted and named with its shard and key, and a command
stops past its ``--max-skip-fraction``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import sys
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zlib import error as zlib_error

import numpy as np
from PIL import Image, UnidentifiedImageError

from nsneg.pipeline.files import atomic_write_bytes, atomic_write_json, png_bytes, sha256_file

log = logging.getLogger(__name__)

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


def drop_temporaries(final_path: Path) -> None:
    """Delete the temporary files of unfinished attempts at the shard ``final_path``."""
    for stale in Path(final_path).parent.glob(f".{Path(final_path).name}*.tmp-*"):
        stale.unlink(missing_ok=True)


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
        drop_temporaries(self.final_path)
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
        shards = [  # with the writing node ({"id", "host"}) where the job recorded it
            {k: r[k] for k in ("name", "sha256", "bytes", "samples", "node") if k in r}
            for r in split["shards"]
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
        "node": {"type": "object"},  # the Ray node that wrote it: {"id", "host"}
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
#
# The sample policy: what a reader accepts from a shard, defined once. A shard may come from
# anyone (a published set verifies against its own manifest, so sha256 says nothing about
# what its samples hold), so every reader takes its samples through ``read_tar`` (the tar
# layer) and ``check_sample`` (the members), and a bad sample is skipped, counted and named
# in a ``SkipLog`` -- never a traceback, never a decoded bomb.

#: The members of a sample and the most bytes each may have (a member over its limit is
#: refused without being read). A source is the original file, so it may be large.
MEMBER_LIMITS = {
    TEXTURE_FIELD: 16 << 20,
    SOURCE_FIELD: 64 << 20,
    CLASS_FIELD: 16,
    META_FIELD: 1 << 20,
}
#: Where ``read_tar`` puts the reason of a sample the tar layer already refused.
BAD_FIELD = "__bad__"
_KEY = re.compile(r"[A-Za-z0-9_-]{1,200}")  # what ``safe_key`` makes
_CLS = re.compile(r"[0-9]{1,9}")
_MEMBER_KINDS = (
    ("symlink", tarfile.TarInfo.issym),
    ("hard link", tarfile.TarInfo.islnk),
    ("directory", tarfile.TarInfo.isdir),
    ("character device", tarfile.TarInfo.ischr),
    ("block device", tarfile.TarInfo.isblk),
    ("fifo", tarfile.TarInfo.isfifo),
)


class BadSample(ValueError):
    """A sample that breaks the contract; ``reason`` is what a ``SkipLog`` records, ``kind`` the
    part at fault (``tar``, ``members``, ``texture``, ``cls``, ``json``, ``source``) it is counted under."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


class TooManyBadSamples(ValueError):
    """More bad samples than ``--max-skip-fraction`` allows: the command stops (one message)."""


#: A reader's ``--max-skip-fraction`` unless told otherwise (the build's own default).
DEFAULT_MAX_SKIP_FRACTION = 0.01


def _member_name(name: str) -> tuple[str | None, str | None, str | None]:
    """A tar member's name -> (key, field, problem). key is None when the name names no sample."""
    if "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
        return None, None, f"member name {name!r} is a path or hidden, not <key>.<field>"
    key, dot, field = name.partition(".")
    if not dot or not _KEY.fullmatch(key):
        return (
            None,
            None,
            f"member name {name!r} is not <key>.<field> (key: letters, digits, _ and -)",
        )
    if field not in MEMBER_LIMITS:
        return key, field, f"unexpected member {name!r} (a sample holds {', '.join(MEMBER_LIMITS)})"
    return key, field, None


def _member_problem(info: tarfile.TarInfo, field: str | None) -> str | None:
    for kind, test in _MEMBER_KINDS:
        if test(info):
            return f"member {info.name!r} is a {kind}, not a regular file"
    if not info.isreg():
        return f"member {info.name!r} is not a regular file (tar type {info.type!r})"
    if field is not None and info.size > MEMBER_LIMITS[field]:
        return (
            f"member {info.name!r} has {info.size} bytes, over the {MEMBER_LIMITS[field]} allowed"
        )
    return None


def read_tar(fileobj, shard: str) -> Iterator[dict[str, Any]]:
    """Raw samples (member field -> bytes, ``__key__``, ``__url__``) of one shard stream, in order.

    The tar layer of the sample policy: only regular members named ``<key>.<field>`` with a
    known field and within its size limit are read; a sample with a member that is anything
    else (a link, a device, a directory, an over-long file, a duplicate), or whose key was
    already seen in this shard, comes out with ``BAD_FIELD`` holding the reason and is
    refused by ``check_sample``. A member whose name names no sample (a path, no key) comes
    out alone, bad; a shard that stops being a tar ends with one bad entry for its rest.
    """
    current: dict[str, Any] | None = None
    seen: set[str] = set()
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for info in tar:
                tar.members = []  # a streamed tar keeps every header otherwise
                key, field, problem = _member_name(info.name)
                if key is None:
                    yield {"__key__": repr(info.name), "__url__": shard, BAD_FIELD: problem}
                    continue
                if current is None or key != current["__key__"]:
                    if current is not None:
                        yield current
                    current = {"__key__": key, "__url__": shard}
                    if key in seen:
                        current[BAD_FIELD] = f"key {key!r} appears twice in the shard"
                    seen.add(key)
                if BAD_FIELD in current:
                    continue
                problem = problem or _member_problem(info, field)
                if problem is None and field in current:
                    problem = f"member {info.name!r} appears twice"
                if problem is not None:
                    current[BAD_FIELD] = problem
                    continue
                current[field] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError, EOFError, zlib_error) as e:
        if current is not None:
            yield current
            current = None
        yield {
            "__key__": "(rest of shard)",
            "__url__": shard,
            BAD_FIELD: f"not a readable tar from here on ({type(e).__name__}: {e})",
        }
    if current is not None:
        yield current


@dataclass
class TextureSample:
    key: str
    texture: Image.Image
    cls: int
    meta: dict[str, Any]
    source_bytes: bytes | None
    source_image: Image.Image | None = None  # decoded by ``check_sample(decode_source=True)``

    def source(self) -> Image.Image | None:
        """The source photo as upright RGB (``images.decode_rgb``); ``BadSample`` if it does not decode."""
        if self.source_image is None and self.source_bytes is not None:
            self.source_image = _decode_source(self.source_bytes)
        return self.source_image


def _open_image(data: bytes, what: str) -> Image.Image:
    """PIL's lazy open (the header only: size and format known, no pixel decoded), refusing more
    pixels than the pipeline's limit (``images.MAX_PIXELS``) before anything is decoded."""
    kind = "texture" if what == TEXTURE_FIELD else "source"
    import warnings

    from nsneg.pipeline.images import MAX_PIXELS

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise BadSample(kind, f"{what}: decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise BadSample(kind, f"{what}: not an image (no recognised image format)") from None
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError ...
        raise BadSample(kind, f"{what}: not an image ({type(e).__name__}: {e})") from None
    if img.width * img.height > MAX_PIXELS:
        raise BadSample(
            kind,
            f"{what}: decompression bomb or oversized image: {img.width}x{img.height} exceeds "
            f"{MAX_PIXELS} pixels (not decoded)",
        )
    return img


def _decode_source(data: bytes) -> Image.Image:
    from nsneg.pipeline.images import BadImage, decode_rgb

    _open_image(data, SOURCE_FIELD)
    try:
        return decode_rgb(data)[0]
    except BadImage as e:
        raise BadSample("source", f"{SOURCE_FIELD}: {e.reason}") from None


def check_sample(
    raw: dict[str, Any],
    classes: list[str] | None = None,
    *,
    has_source: bool | None = None,
    decode_source: bool = False,
) -> TextureSample:
    """A raw sample -> TextureSample, or ``BadSample`` with the first thing wrong with it.

    The member layer of the sample policy: the required members are there (``source.img``
    too when ``has_source``; none when the set has no source), nothing else is; the texture is
    a PNG of exactly ``TEXTURE_SIZE`` x ``TEXTURE_SIZE`` RGB (its size read from the header,
    then decoded in full); ``cls`` is a decimal integer, below ``len(classes)`` when
    ``classes`` is given; ``json`` is a JSON object; the source's header is within the
    pipeline's pixel limit (``decode_source``: and it decodes, through ``images.decode_rgb``).
    """
    if BAD_FIELD in raw:
        raise BadSample("tar", raw[BAD_FIELD])
    fields = {k for k in raw if not k.startswith("__")}
    required = {TEXTURE_FIELD, CLASS_FIELD, META_FIELD} | ({SOURCE_FIELD} if has_source else set())
    if missing := sorted(required - fields):
        raise BadSample(
            "members", f"missing member{'s' if len(missing) > 1 else ''} {', '.join(missing)}"
        )
    allowed = required | ({SOURCE_FIELD} if has_source is None else set())
    if extra := sorted(fields - allowed):
        raise BadSample(
            "members", f"unexpected member{'s' if len(extra) > 1 else ''} {', '.join(extra)}"
        )
    for field in fields:
        if not isinstance(raw[field], bytes) or len(raw[field]) > MEMBER_LIMITS[field]:
            raise BadSample(
                "members", f"member {field} is not bytes within {MEMBER_LIMITS[field]} bytes"
            )
    text = raw[CLASS_FIELD].decode("ascii", "replace").strip()
    if not _CLS.fullmatch(text):
        raise BadSample("cls", f"cls {text[:20]!r} is not a class index")
    cls = int(text)
    if classes is not None and cls >= len(classes):
        raise BadSample("cls", f"cls {cls} is out of range (the set has {len(classes)} classes)")
    try:
        meta = json.loads(raw[META_FIELD])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise BadSample("json", f"json does not parse ({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict):
        raise BadSample("json", f"json is a {type(meta).__name__}, not an object")
    texture = _open_image(raw[TEXTURE_FIELD], TEXTURE_FIELD)
    if (
        texture.format != "PNG"
        or texture.size != (TEXTURE_SIZE, TEXTURE_SIZE)
        or texture.mode != "RGB"
    ):
        raise BadSample(
            "texture",
            f"texture is a {texture.format} {texture.mode} {texture.width}x{texture.height}, "
            f"not the contract's {TEXTURE_SIZE}x{TEXTURE_SIZE} RGB PNG",
        )
    try:
        texture.load()
    except Exception as e:
        raise BadSample("texture", f"texture does not decode ({type(e).__name__}: {e})") from None
    source_bytes = raw.get(SOURCE_FIELD)
    source_image = None
    if source_bytes is not None:
        source_image = _decode_source(source_bytes) if decode_source else None
        if not decode_source:
            _open_image(source_bytes, SOURCE_FIELD)
    return TextureSample(raw["__key__"], texture, cls, meta, source_bytes, source_image)


def decode_sample(sample: dict[str, Any]) -> TextureSample:
    """``check_sample`` without a class list or source requirement (kept for callers of format 1)."""
    return check_sample(sample)


@dataclass
class SkipLog:
    """The bad samples a command met: each logged (shard, key, reason) as it is skipped.

    ``expected``: the samples the reader will see (the manifest's count), so a command stops as
    soon as more than ``max_fraction`` of them are bad rather than at the end; ``finish`` checks
    again against what was actually read. ``spool``: a folder where every skip is also
    appended, one JSON line per process, so DataLoader workers' skips reach the main process
    (``collect``).
    """

    max_fraction: float = 0.0
    expected: int = 0
    read: int = 0
    skipped: list[dict[str, str]] | None = None
    spool: Path | None = None

    def __post_init__(self) -> None:
        self.skipped = [] if self.skipped is None else self.skipped

    def ok(self) -> None:
        self.read += 1

    def skip(self, shard: str, key: str, reason: str, kind: str = "sample") -> None:
        entry = {"shard": str(shard), "key": str(key), "kind": kind, "reason": reason}
        self.skipped.append(entry)
        log.warning("skipped sample %s in shard %s: %s", key, shard, reason)
        if self.spool is not None:
            self._spooled(entry)
        else:
            self._check(max(self.expected, self.read + len(self.skipped)))

    def _spooled(self, entry: dict[str, Any]) -> None:
        Path(self.spool).mkdir(parents=True, exist_ok=True)
        with open(Path(self.spool) / f"skips-{os.getpid()}.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    def spool_reads(self) -> None:
        """At the end of a pass: a spooling process hands its count of good samples on."""
        if self.spool is not None and self.read:
            self._spooled({"read": self.read})
            self.read = 0

    def collect(self) -> None:
        """Take in what other processes spooled (DataLoader workers), then clear the spool."""
        if self.spool is None or not Path(self.spool).is_dir():
            return
        for path in sorted(Path(self.spool).glob("skips-*.jsonl")):
            for entry in (json.loads(line) for line in path.read_text().splitlines() if line):
                if "read" in entry:
                    self.read += entry["read"]
                elif path.name != f"skips-{os.getpid()}.jsonl":
                    self.skipped.append(entry)
            path.unlink()
        try:
            Path(self.spool).rmdir()  # made again by the next skip, if any
        except OSError:
            pass

    def _check(self, total: int) -> None:
        if len(self.skipped) > self.max_fraction * total:
            last = self.skipped[-1]
            raise TooManyBadSamples(
                f"{len(self.skipped)} bad samples of {total}: above --max-skip-fraction "
                f"{self.max_fraction} (last: shard {last['shard']}, key {last['key']}: "
                f"{last['reason']}); every skip was logged with its shard and key"
            )

    def finish(self) -> dict[str, Any]:
        """``report()``, after the threshold is checked against every sample read."""
        self.collect()
        if self.skipped:
            self._check(self.read + len(self.skipped))
        return self.report()

    def report(self) -> dict[str, Any]:
        """What commands print and put in their JSON: counts, reasons, the skipped samples."""
        reasons = Counter(s["kind"] for s in self.skipped)
        return {
            "read": self.read,
            "skipped": len(self.skipped),
            "skip_reasons": dict(sorted(reasons.items())),
            "skipped_samples": self.skipped[:SKIPS_LISTED],
        }

    def summary(self) -> str:
        """One line for a command's summary."""
        reasons = self.report()["skip_reasons"]
        return f"skipped {len(self.skipped)} bad samples" + (
            f" ({', '.join(f'{k}: {v}' for k, v in reasons.items())})" if reasons else ""
        )


#: How many skipped samples a report names (the count is always exact).
SKIPS_LISTED = 100


def _this_workers_shards(paths: list[str]) -> list[str]:
    """The shards of this DataLoader worker (every ``num_workers``-th), or all outside one; torch
    is only asked when it is loaded already, so readers that never use it do not import it."""
    torch = sys.modules.get("torch")
    info = torch.utils.data.get_worker_info() if torch is not None else None
    return paths if info is None else paths[info.id :: info.num_workers]


def iter_checked(
    paths: Iterable[str | Path],
    skips: SkipLog,
    classes: list[str] | None = None,
    *,
    has_source: bool | None = None,
    decode_source: bool = False,
) -> Iterator[TextureSample]:
    """The good samples of local shards in order, every bad one skipped into ``skips``.

    In a DataLoader worker, only that worker's share of the shards (as webdataset splits them).
    """
    paths = [str(p) for p in paths]
    for shard in _this_workers_shards(paths):
        try:
            stream = open(shard, "rb")
        except OSError as e:
            skips.skip(shard, "(whole shard)", f"cannot open ({e})", "tar")
            continue
        with stream:
            for raw in read_tar(stream, shard):
                try:
                    sample = check_sample(
                        raw, classes, has_source=has_source, decode_source=decode_source
                    )
                except BadSample as e:
                    skips.skip(shard, raw["__key__"], e.reason, e.kind)
                    continue
                skips.ok()
                yield sample
    skips.spool_reads()


def iter_raw(urls: Iterable[str | Path]) -> Iterator[dict[str, Any]]:
    """Raw samples (bytes, undecoded) of local shards in order, through the tar layer of the
    sample policy (``read_tar``); a refused sample carries ``BAD_FIELD``."""
    for url in urls:
        with open(url, "rb") as stream:
            yield from read_tar(stream, str(url))


def iter_samples(
    root: Path,
    split: str,
    skips: SkipLog | None = None,
    *,
    decode_source: bool = False,
) -> Iterator[TextureSample]:
    """Checked samples of one split of a local shard set, in manifest order.

    Without ``skips``, the first bad sample stops the iteration (``TooManyBadSamples``).
    """
    manifest = load_manifest(root)
    skips = skips if skips is not None else SkipLog(0.0)
    skips.expected += manifest["splits"].get(split, {}).get("samples", 0)
    yield from iter_checked(
        shard_paths(root, split, manifest),
        skips,
        manifest["classes"],
        has_source=manifest["has_source"],
        decode_source=decode_source,
    )


def tar_members(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()
