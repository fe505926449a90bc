"""A shard set as a careless or hostile publisher might ship it: good samples plus one shard of
bad samples of every kind a tar file allows, with a manifest whose sha256 values MATCH (so
``verify`` passes and only the readers' sample policy stands between them and a traceback)."""

from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from functools import cache
from pathlib import Path

import numpy as np

from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.constants import TEXTURE_SIZE
from nsneg.datasets_manifest.format.manifest import build_manifest, verify
from nsneg.datasets_manifest.format.naming import MANIFEST_NAME, record_path, shard_path
from nsneg.datasets_manifest.format.sample_reader import MEMBER_LIMITS
from nsneg.datasets_manifest.format.shard_writer import ShardWriter, read_record
from nsneg_testing import PHOTOS, encode, photo

CLASSES = ["n00000001", "n00000002", "n00000003", "n00000004"]
GOOD_PER_CLASS = 3
#: A 9000x9000 grayscale PNG of zeros: 81 Mpx (over the 64 Mpx limit), ~80 KB of file, 81 MB
#: decoded as L and 243 MB as RGB.
BOMB_SIDE = 9000


@cache
def png_bomb(side: int = BOMB_SIDE) -> bytes:
    """A valid grayscale PNG of ``side`` x ``side`` zeros, written chunk by chunk (never in memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    compressor, row, idat = zlib.compressobj(1), bytes(side + 1), []
    for _ in range(side):
        idat.append(compressor.compress(row))
    idat.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", b"".join(idat))
        + chunk(b"IEND", b"")
    )


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose header (SOF0) claims ``width`` x ``height``: 121 Mpx for 11000 x 11000."""
    data = bytearray(encode(photo(size=(64, 48)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@cache
def texture_png(seed: int) -> bytes:
    name = PHOTOS[seed % len(PHOTOS)]
    return files.png_bytes(np.asarray(photo(name, (TEXTURE_SIZE, TEXTURE_SIZE))))


def good_sample(key: str, cls: int, seed: int, with_source: bool) -> dict[str, bytes]:
    meta = {"key": key, "wnid": CLASSES[cls], "source_name": f"{key}.JPEG", "loss": 0.1 * seed}
    sample = {
        "texture.png": texture_png(seed),
        "cls": str(cls).encode(),
        "json": json.dumps(meta).encode(),
    }
    if with_source:
        sample["source.img"] = source_jpeg(seed % len(PHOTOS))
    return sample


@cache
def source_jpeg(index: int) -> bytes:
    return encode(photo(PHOTOS[index], (120, 96)), "JPEG")


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", **kind) -> None:
    info = tarfile.TarInfo(name)
    info.mtime = 0
    for attr, value in kind.items():
        setattr(info, attr, value)
    if info.isreg():
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


#: What each bad sample (its key) or member is, as the reason a reader reports starts with.
BAD_KINDS = {
    "truncated_texture": "texture does not decode",
    "tiny_texture": "texture is a PNG RGB 1x1",
    "jpeg_texture": "texture is a JPEG",
    "gray_texture": "texture is a PNG L",
    "no_texture": "missing member texture.png",
    "no_cls": "missing member cls",
    "word_cls": "cls 'seven'",
    "negative_cls": "cls '-1'",
    "out_of_range_cls": "cls 99 is out of range",
    "bad_json": "json does not parse",
    "list_json": "json is a list",
    "oversized_cls": "member 'oversized_cls.cls' has",
    "extra_member": "unexpected member 'extra_member.exe'",
    "twice_member": "member 'twice_member.cls' appears twice",
    "symlink_texture": "member 'symlink_texture.texture.png' is a symlink",
    "hardlink_texture": "member 'hardlink_texture.texture.png' is a hard link",
    "device_texture": "member 'device_texture.texture.png' is a character device",
    "fifo_cls": "member 'fifo_cls.cls' is a fifo",
    "repeated_key": "key 'repeated_key' appears twice in the shard",
    "'../escape.cls'": "member name '../escape.cls' is a path or hidden",
    "'/absolute.json'": "member name '/absolute.json' is a path or hidden",
    "'folder'": "member name 'folder' is not <key>.<field>",
    "'.hidden.cls'": "member name '.hidden.cls' is a path or hidden",
    "'spa ce.cls'": "member name 'spa ce.cls' is not <key>.<field>",
    "'noextension'": "member name 'noextension' is not <key>.<field>",
}
#: Bad only where the set carries source pixels.
BAD_SOURCE_KINDS = {
    "png_bomb_source": "source.img: decompression bomb or oversized image: 9000x9000",
    "huge_jpeg_source": "source.img: decompression bomb or oversized image: 11000x11000",
    "not_image_source": "source.img: not an image (no recognised image format)",
    "truncated_source": "source.img: unreadable image",
}


def write_bad_shard(path: Path, with_source: bool) -> int:
    """The shard of bad samples (every ``BAD_KINDS`` entry, and ``BAD_SOURCE_KINDS`` with a
    source); returns how many entries a reader should skip."""

    def good(key: str, seed: int = 0) -> dict[str, bytes]:
        return {f"{key}.{f}": v for f, v in good_sample(key, 1, seed, with_source).items()}

    texture = texture_png(0)
    samples: list[tuple[str, bytes, dict]] = []

    def sample(key: str, **changes: bytes | None) -> None:
        members = good(key)
        for field, data in changes.items():
            field = field.replace("_", ".")
            if data is None:
                members.pop(f"{key}.{field}")
            else:
                members[f"{key}.{field}"] = data
        samples.extend((name, data, {}) for name, data in members.items())

    samples += [(n, d, {}) for n, d in good("repeated_key", 4).items()]
    sample("truncated_texture", texture_png=texture[: len(texture) // 2])
    sample("tiny_texture", texture_png=files.png_bytes(np.zeros((1, 1, 3), np.uint8)))
    sample("jpeg_texture", texture_png=encode(photo(size=(224, 224)), "JPEG"))
    sample("gray_texture", texture_png=encode(photo(size=(224, 224)).convert("L")))
    sample("no_texture", texture_png=None)
    sample("no_cls", cls=None)
    sample("word_cls", cls=b"seven")
    sample("negative_cls", cls=b"-1")
    sample("out_of_range_cls", cls=b"99")
    sample("bad_json", json=b"{not json")
    sample("list_json", json=b"[1, 2]")
    sample("oversized_cls", cls=b"0" * (MEMBER_LIMITS["cls"] + 1))
    samples += [(n, d, {}) for n, d in good("extra_member").items()]
    samples.append(("extra_member.exe", b"MZ", {}))
    samples += [(n, d, {}) for n, d in good("twice_member").items()]
    samples.append(("twice_member.cls", b"2", {}))
    for key, field, kind in [
        ("symlink_texture", "texture.png", dict(type=tarfile.SYMTYPE, linkname="../../etc/passwd")),
        ("hardlink_texture", "texture.png", dict(type=tarfile.LNKTYPE, linkname="good_0.json")),
        ("device_texture", "texture.png", dict(type=tarfile.CHRTYPE, devmajor=1, devminor=3)),
        ("fifo_cls", "cls", dict(type=tarfile.FIFOTYPE)),
    ]:
        members = good(key)
        members.pop(f"{key}.{field}")
        samples.append((f"{key}.{field}", b"", kind))
        samples += [(n, d, {}) for n, d in members.items()]
    if with_source:
        sample("png_bomb_source", source_img=png_bomb())
        sample("huge_jpeg_source", source_img=jpeg_claiming(11000, 11000))
        sample("not_image_source", source_img=b"GIF89a but not really")
        jpeg = encode(photo(size=(200, 150)), "JPEG")
        sample("truncated_source", source_img=jpeg[: len(jpeg) // 3])
    samples += [(n, d, {}) for n, d in good("repeated_key", 5).items()]  # its first time: good
    samples += [
        ("../escape.cls", b"0", {}),
        ("/absolute.json", b"{}", {}),
        ("folder/", b"", dict(type=tarfile.DIRTYPE)),
        (".hidden.cls", b"0", {}),
        ("spa ce.cls", b"0", {}),
        ("noextension", b"x", {}),
    ]
    # a good sample again at the end: the reader carries on past all of the above
    samples += [(n, d, {}) for n, d in good("good_last", 2).items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data, kind in samples:
            _add(tar, name, data, **kind)
    return len(BAD_KINDS) + (len(BAD_SOURCE_KINDS) if with_source else 0)


def make_bad_set(root: Path, with_source: bool = True) -> dict:
    """Two shards of good samples (``GOOD_PER_CLASS`` per class) and one of bad ones, under ``root``,
    with a manifest (and records) whose sha256 values match. Returns the expected counts."""
    good_keys = []
    for index in range(2):
        writer = ShardWriter(shard_path(root, "train", index))
        for i in range(index, len(CLASSES) * GOOD_PER_CLASS, 2):
            key = f"good_{i}"
            writer.write({"__key__": key, **good_sample(key, i % len(CLASSES), i, with_source)})
            good_keys.append(key)
        writer.commit({"index": index})
    bad_path = shard_path(root, "train", 2)
    bad = write_bad_shard(bad_path, with_source)
    records = [read_record(shard_path(root, "train", i)) for i in range(2)]
    records.append(
        {
            "name": bad_path.name,
            "sha256": files.sha256_file(bad_path),
            "bytes": bad_path.stat().st_size,
            "samples": bad + 2,
        }
    )
    files.atomic_write_json(record_path(bad_path), records[-1])
    manifest = build_manifest(
        CLASSES,
        {"train": {"shards": records, "skipped": [], "complete": True}},
        {"synthesis": {"encoder": "random"}, "seed": 0},
        with_source,
    )
    files.atomic_write_json(root / MANIFEST_NAME, manifest)
    assert verify(root) == []
    return {"good": len(good_keys) + 2, "bad": bad, "classes": CLASSES}


def make_clean_set(root: Path, splits: tuple[str, ...] = ("train", "val"), per_split: int = 4):
    """A small set of good samples only, textures without sources (as sets are published), with
    one shard of ``per_split`` samples per split and a manifest whose sha256 values match."""
    records = {}
    for s, split in enumerate(splits):
        writer = ShardWriter(shard_path(root, split, 0))
        for i in range(per_split):
            key = f"{split}_{i}"
            writer.write({"__key__": key, **good_sample(key, i % len(CLASSES), s + i, False)})
        records[split] = {"shards": [writer.commit({"index": 0})], "skipped": [], "complete": True}
    manifest = build_manifest(CLASSES, records, {"synthesis": {"encoder": "random"}}, False)
    files.atomic_write_json(root / MANIFEST_NAME, manifest)
    return root
