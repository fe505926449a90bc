"""Reading shards through the sample policy, the one definition of what a reader accepts.

Every reader (``read_tar``, ``check_sample``, the iterators, ``SkipLog``; docs/contract.md)
follows it: a sample that is not exactly what ``naming`` describes -- a tar member that is not a
plain regular file of a known field and size, a texture that is not a 224x224 RGB PNG, a ``cls``
outside the manifest's classes, ``json`` that is not an object, a source over the pixel limit --
is skipped, counted and named with its shard and key, and a command stops past its
``--max-skip-fraction``.
"""

from __future__ import annotations

import io
import json
import re
import sys
import tarfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zlib import error as zlib_error

from PIL import Image, UnidentifiedImageError

from nsneg.datasets_manifest.format.constants import MAX_PIXELS, TEXTURE_SIZE
from nsneg.datasets_manifest.format.image_decode import BadImage, decode_rgb
from nsneg.datasets_manifest.format.manifest import load_manifest, shard_paths
from nsneg.datasets_manifest.format.naming import (
    CLASS_FIELD,
    META_FIELD,
    SOURCE_FIELD,
    TEXTURE_FIELD,
)
from nsneg.datasets_manifest.format.skip_log import SkipLog

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
        """The source photo as upright RGB (``image_decode.decode_rgb``); ``BadSample`` if it does not decode."""
        if self.source_image is None and self.source_bytes is not None:
            self.source_image = _decode_source(self.source_bytes)
        return self.source_image


def _open_image(data: bytes, what: str) -> Image.Image:
    """PIL's lazy open (the header only: size and format known, no pixel decoded), refusing more
    pixels than the pipeline's limit (``constants.MAX_PIXELS``) before anything is decoded."""
    kind = "texture" if what == TEXTURE_FIELD else "source"
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
    pipeline's pixel limit (``decode_source``: and it decodes, through ``image_decode.decode_rgb``).
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
