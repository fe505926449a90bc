"""The shard contract on its own: keys, samples, atomic shards and records, manifests, layout v2 and its
upgrade from v1, and a real shard set (``texture_shards``) read by folder with every outside client."""

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from nsneg.pipeline import contract, files
from nsneg_testing import as_v1


def test_safe_key_has_no_dot_and_keeps_distinct_stems_apart():
    assert contract.safe_key("n01_x") == "n01_x"
    a, b = contract.safe_key("a.b"), contract.safe_key("a_b.")
    assert "." not in a and a != b and a.startswith("a_b-")


def test_encode_sample_refuses_wrong_textures_and_dotted_keys():
    texture = np.zeros((contract.TEXTURE_SIZE, contract.TEXTURE_SIZE, 3), np.uint8)
    sample = contract.encode_sample("k", texture, 3, {"wnid": "n1"}, b"src")
    assert (
        sample["cls"] == b"3"
        and sample["source.img"] == b"src"
        and json.loads(sample["json"]) == {"wnid": "n1"}
    )
    assert contract.SOURCE_FIELD not in contract.encode_sample("k", texture, 3, {}, None)
    with pytest.raises(ValueError, match="uint8 224x224x3"):
        contract.encode_sample("k", texture[:10], 0, {}, None)
    with pytest.raises(ValueError, match="contains a dot"):
        contract.encode_sample("k.x", texture, 0, {}, None)


def test_shard_writer_commits_atomically_and_keeps_records_out_of_the_split_folder(tmp_path):
    texture = np.full((contract.TEXTURE_SIZE, contract.TEXTURE_SIZE, 3), 7, np.uint8)
    final = contract.shard_path(tmp_path, "train", 0)
    writer = contract.ShardWriter(final)
    writer.write(contract.encode_sample("a", texture, 1, {}, None))
    assert not final.exists() and contract.read_record(final) is None  # nothing final before commit
    record = writer.commit({"fingerprint": "f"})
    assert record["sha256"] == files.sha256_file(final) and record["samples"] == 1
    assert contract.record_path(final) == tmp_path / "records" / f"{final.name}.json"
    assert contract.read_record(final) == record
    assert [p.name for p in (tmp_path / "train").iterdir()] == [final.name]  # only the shard
    aborted = contract.ShardWriter(contract.shard_path(tmp_path, "train", 1))
    aborted.abort()
    assert [p.name for p in (tmp_path / "train").iterdir()] == [final.name]


def test_manifests_are_validated_with_clear_errors(texture_shards):
    shards, _ = texture_shards
    good = contract.load_manifest(shards)
    assert good["format_version"] == contract.FORMAT_VERSION == 2
    assert contract.validate_manifest({**good, "format_version": 1})  # version 1 still reads
    with pytest.raises(
        contract.ManifestError, match="format_version 3; this nsneg reads versions 1, 2"
    ):
        contract.validate_manifest({**good, "format_version": 3})
    bad = json.loads(json.dumps(good))
    bad["splits"]["train"]["shards"][0]["name"] = "../escape.tar"
    with pytest.raises(contract.ManifestError, match="invalid at splits/train/shards/0/name"):
        contract.validate_manifest(bad)
    with pytest.raises(contract.ManifestError, match="invalid at splits/train/shards/0/sha256"):
        bad["splits"]["train"]["shards"][0].update(name="x.tar", sha256="nope")
        contract.validate_manifest(bad)


def test_verify_names_the_shard_and_both_sha256(texture_shards, tmp_path):
    shards, _ = texture_shards
    copy = Path(shutil.copytree(shards, tmp_path / "copy"))
    assert contract.verify(copy) == [] and contract.verify(copy, ["train"]) == []
    shard = contract.shard_paths(copy, "train")[1]
    data = bytearray(shard.read_bytes())
    data[700] ^= 1  # same size, other bytes
    shard.write_bytes(bytes(data))
    expected = contract.load_manifest(copy)["splits"]["train"]["shards"][1]["sha256"]
    (problem,) = contract.verify(copy)
    assert (
        problem
        == f"{shard}: sha256 mismatch (manifest {expected}, file {files.sha256_file(shard)})"
    )


def test_split_folders_hold_only_shards_and_samples_keep_no_private_path(texture_shards):
    shards, tree = texture_shards
    assert {p.suffix for p in (shards / "train").iterdir()} == {".tar"}
    records = sorted(p.name for p in (shards / "records").iterdir())
    assert records == [p.name + ".json" for p in contract.shard_paths(shards, "train")]
    for sample in contract.iter_samples(shards, "train"):
        relpath = sample.meta["source_path"]
        assert (
            relpath == f"train/{sample.meta['wnid']}/{sample.meta['source_name']}"
            and not relpath.startswith("/")
        )
        assert (tree / relpath).read_bytes() == sample.source_bytes
    assert str(tree) not in (shards / contract.MANIFEST_NAME).read_text()


def test_hf_datasets_loads_the_set_by_folder(texture_shards, tmp_path):
    from datasets import load_dataset

    shards, _ = texture_shards
    samples = contract.load_manifest(shards)["splits"]["train"]["samples"]
    by_folder = load_dataset(str(shards), cache_dir=str(tmp_path / "hf1"))
    assert list(by_folder) == ["train"] and by_folder["train"].num_rows == samples
    row = by_folder["train"][0]
    assert row["texture.png"].size == (224, 224) and row["json"]["wnid"].startswith("n0")
    by_data_dir = load_dataset(
        "webdataset", data_dir=str(shards / "train"), cache_dir=str(tmp_path / "hf2")
    )
    assert by_data_dir["train"].num_rows == samples


def test_ray_data_webdataset_and_tar_read_the_split_folder(texture_shards, ray_session):
    import ray.data
    import webdataset as wds

    shards, _ = texture_shards
    samples = contract.load_manifest(shards)["splits"]["train"]["samples"]
    rows = ray.data.read_webdataset(str(shards / "train"), decoder=None).take_all()
    assert len(rows) == samples and {"texture.png", "json", "cls", "source.img"} <= set(rows[0])
    urls = [str(p) for p in sorted((shards / "train").iterdir())]
    assert len(list(wds.WebDataset(urls, shardshuffle=False))) == samples
    for shard in urls:
        listed = subprocess.run(
            ["tar", "-tf", shard], capture_output=True, text=True, check=True
        ).stdout.split()
        with tarfile.open(shard) as tar:
            assert listed == tar.getnames()


def test_a_version_1_set_reads_and_upgrades(texture_shards, tmp_path):
    shards, _ = texture_shards
    old = as_v1(shards, tmp_path / "v1")
    assert contract.load_manifest(old)["format_version"] == 1
    assert (
        len(list(contract.iter_samples(old, "train")))
        == contract.load_manifest(shards)["splits"]["train"]["samples"]
    )
    first = contract.shard_paths(old, "train")[0]
    assert contract.read_record(first) == json.loads(contract.v1_record_path(first).read_text())
    assert contract.upgrade(old) is True and contract.upgrade(old) is False
    assert contract.load_manifest(old)["format_version"] == 2
    assert {p.suffix for p in (old / "train").iterdir()} == {".tar"}
    assert contract.read_record(first) == json.loads(contract.record_path(first).read_text())
    assert contract.verify(old) == []
