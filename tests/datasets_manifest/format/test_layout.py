"""The layout of a real shard set (``texture_shards``): split folders hold only shards, and every
outside client (Hugging Face, Ray Data, webdataset, tar) reads a split by folder."""

import subprocess
import tarfile

from nsneg.datasets_manifest.format.manifest import load_manifest, shard_paths
from nsneg.datasets_manifest.format.naming import MANIFEST_NAME
from nsneg.datasets_manifest.format.sample_reader import iter_samples


def test_split_folders_hold_only_shards_and_samples_keep_no_private_path(texture_shards):
    shards, tree = texture_shards
    assert {p.suffix for p in (shards / "train").iterdir()} == {".tar"}
    records = sorted(p.name for p in (shards / "records").iterdir())
    assert records == [p.name + ".json" for p in shard_paths(shards, "train")]
    for sample in iter_samples(shards, "train"):
        relpath = sample.meta["source_path"]
        assert (
            relpath == f"train/{sample.meta['wnid']}/{sample.meta['source_name']}"
            and not relpath.startswith("/")
        )
        assert (tree / relpath).read_bytes() == sample.source_bytes
    assert str(tree) not in (shards / MANIFEST_NAME).read_text()


def test_hf_datasets_loads_the_set_by_folder(texture_shards, tmp_path):
    from datasets import load_dataset

    shards, _ = texture_shards
    samples = load_manifest(shards)["splits"]["train"]["samples"]
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
    samples = load_manifest(shards)["splits"]["train"]["samples"]
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
