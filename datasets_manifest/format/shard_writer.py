"""Writing shards: one sample's members, and ``ShardWriter``, which makes a shard appear under its
final name only when it is complete, with its record beside it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from nsneg.datasets_manifest.format.constants import TEXTURE_SIZE
from nsneg.datasets_manifest.format.files import atomic_write_json, png_bytes, sha256_file
from nsneg.datasets_manifest.format.naming import (
    CLASS_FIELD,
    META_FIELD,
    SOURCE_FIELD,
    TEXTURE_FIELD,
    record_path,
)


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
    if not (tar_path.exists() and rec_path.exists()):
        return None
    try:
        return json.loads(rec_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
