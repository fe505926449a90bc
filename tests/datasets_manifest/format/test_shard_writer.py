"""Writing shards: samples refused when wrong, shards and records committed atomically."""

import json

import numpy as np
import pytest

from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.constants import TEXTURE_SIZE
from nsneg.datasets_manifest.format.naming import (
    SOURCE_FIELD,
    record_path,
    shard_path,
)
from nsneg.datasets_manifest.format.shard_writer import ShardWriter, encode_sample, read_record


def test_encode_sample_refuses_wrong_textures_and_dotted_keys():
    texture = np.zeros((TEXTURE_SIZE, TEXTURE_SIZE, 3), np.uint8)
    sample = encode_sample("k", texture, 3, {"wnid": "n1"}, b"src")
    assert (
        sample["cls"] == b"3"
        and sample["source.img"] == b"src"
        and json.loads(sample["json"]) == {"wnid": "n1"}
    )
    assert SOURCE_FIELD not in encode_sample("k", texture, 3, {}, None)
    with pytest.raises(ValueError, match="uint8 224x224x3"):
        encode_sample("k", texture[:10], 0, {}, None)
    with pytest.raises(ValueError, match="contains a dot"):
        encode_sample("k.x", texture, 0, {}, None)


def test_shard_writer_commits_atomically_and_keeps_records_out_of_the_split_folder(tmp_path):
    texture = np.full((TEXTURE_SIZE, TEXTURE_SIZE, 3), 7, np.uint8)
    final = shard_path(tmp_path, "train", 0)
    writer = ShardWriter(final)
    writer.write(encode_sample("a", texture, 1, {}, None))
    assert not final.exists() and read_record(final) is None  # nothing final before commit
    record = writer.commit({"fingerprint": "f"})
    assert record["sha256"] == files.sha256_file(final) and record["samples"] == 1
    assert record_path(final) == tmp_path / "records" / f"{final.name}.json"
    assert read_record(final) == record
    assert [p.name for p in (tmp_path / "train").iterdir()] == [final.name]  # only the shard
    aborted = ShardWriter(shard_path(tmp_path, "train", 1))
    aborted.abort()
    assert [p.name for p in (tmp_path / "train").iterdir()] == [final.name]
