"""``nsneg-data stats`` reports the textures' spatial fingerprint and, with source pixels, their
noise ratio, the crops cut again from the source exactly as the job cut them."""

from __future__ import annotations

import json

import numpy as np

from nsneg.datasets_manifest import cli as data_cli
from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.manifest import build_manifest
from nsneg.datasets_manifest.format.naming import MANIFEST_NAME, shard_path
from nsneg.datasets_manifest.format.sample_reader import iter_samples
from nsneg.datasets_manifest.format.shard_writer import ShardWriter
from nsneg.datasets_manifest.stats import sample_crops, shard_stats
from nsneg.pipeline.images import make_crops
from nsneg_testing import bad_shards


def test_stats_reports_the_fingerprint_of_a_set_without_sources(tmp_path, cli):
    root = bad_shards.make_clean_set(tmp_path / "set", per_split=3)
    result = cli(
        data_cli.main, "stats", root, "--plot", tmp_path / "l.png", "--json", tmp_path / "s.json"
    )
    assert result.exit_code == 0, result.output
    assert "noise ratio: no source pixels" in result.output and "median 4-px spike" in result.output
    fp = json.loads((tmp_path / "s.json").read_text())["splits"]["train"]["fingerprint"]
    assert fp["textures"] == 3 and fp["median_spike"] > 0


def test_noise_ratio_uses_the_crops_the_texture_was_made_from(tmp_path):
    source = bad_shards.source_jpeg(0)
    crops = make_crops(source, np.random.default_rng(5))
    meta = {
        "key": "a",
        "crop_boxes": {"center": list(crops.boxes[0]), "random": list(crops.boxes[1])},
        "resized_size": list(crops.resized_size),
    }
    writer = ShardWriter(shard_path(tmp_path, "train", 0))
    writer.write(
        {
            "__key__": "a",
            "texture.png": bad_shards.texture_png(1),
            "cls": b"0",
            "json": json.dumps(meta).encode(),
            "source.img": source,
        }
    )
    records = {"train": {"shards": [writer.commit({"index": 0})], "skipped": [], "complete": True}}
    manifest = build_manifest(bad_shards.CLASSES, records, {"synthesis": {}}, True)
    files.atomic_write_json(tmp_path / MANIFEST_NAME, manifest)
    sample = next(iter_samples(tmp_path, "train"))
    assert np.array_equal(sample_crops(sample), crops.pixels)
    ratio = shard_stats(tmp_path)["splits"]["train"]["noise_ratio"]
    assert ratio["textures"] == 1 and 0 < ratio["mean"] < 2
