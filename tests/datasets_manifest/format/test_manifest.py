"""Manifests: validated with clear errors, shards verified against sha256 and size."""

import json
import shutil
from pathlib import Path

import pytest

from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.manifest import (
    ManifestError,
    load_manifest,
    shard_paths,
    validate_manifest,
    verify,
)
from nsneg.datasets_manifest.format.naming import (
    FORMAT_VERSION,
)


def test_manifests_are_validated_with_clear_errors(texture_shards):
    shards, _ = texture_shards
    good = load_manifest(shards)
    assert good["format_version"] == FORMAT_VERSION == 2
    for version in (1, 3):
        with pytest.raises(
            ManifestError, match=f"format_version {version}; this nsneg reads version 2"
        ):
            validate_manifest({**good, "format_version": version})
    bad = json.loads(json.dumps(good))
    bad["splits"]["train"]["shards"][0]["name"] = "../escape.tar"
    with pytest.raises(ManifestError, match="invalid at splits/train/shards/0/name"):
        validate_manifest(bad)
    with pytest.raises(ManifestError, match="invalid at splits/train/shards/0/sha256"):
        bad["splits"]["train"]["shards"][0].update(name="x.tar", sha256="nope")
        validate_manifest(bad)


def test_verify_names_the_shard_and_both_sha256(texture_shards, tmp_path):
    shards, _ = texture_shards
    copy = Path(shutil.copytree(shards, tmp_path / "copy"))
    assert verify(copy) == [] and verify(copy, ["train"]) == []
    shard = shard_paths(copy, "train")[1]
    data = bytearray(shard.read_bytes())
    data[700] ^= 1  # same size, other bytes
    shard.write_bytes(bytes(data))
    expected = load_manifest(copy)["splits"]["train"]["shards"][1]["sha256"]
    (problem,) = verify(copy)
    assert (
        problem
        == f"{shard}: sha256 mismatch (manifest {expected}, file {files.sha256_file(shard)})"
    )
