"""The loader: crops (the texture gets its query's box), skipped samples, refused shards."""

import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline import files
from trainer.data import BadShards, apply_box, crop_box, resolve_urls, views


def test_texture_gets_its_querys_crop_box():
    """Source == texture image: the loader's texture crop must equal the query crop pixel for pixel."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8))
    png = files.png_bytes(np.asarray(img))
    raw = {"__key__": "a", "texture.png": png, "source.img": png, "cls": b"0", "json": b"{}"}
    for q, k, t, skipped in views(iter([raw] * 5), 64, seed=1):
        assert torch.equal(q, t) and skipped == 0
    rng = random.Random(0)
    boxes = [crop_box(300, 200, rng) for _ in range(50)]
    assert all(0.2 - 1e-6 <= fraction <= 1 and 3 / 4 - 0.02 <= ratio <= 4 / 3 + 0.02 for fraction, ratio, _, _ in boxes)
    assert apply_box(img, boxes[0], 48).shape == (3, 48, 48)


def test_undecodable_samples_are_skipped_and_counted():
    good = {"__key__": "g", "texture.png": files.png_bytes(np.zeros((224, 224, 3), np.uint8)), "cls": b"0", "json": b"{}"}
    good["source.img"] = good["texture.png"]
    bad = {**good, "__key__": "b", "source.img": b"not an image"}
    counts = [s for *_, s in views(iter([good, bad, bad, good, bad]), 32, seed=0)]
    assert counts == [0, 2]


def test_tampered_shards_are_refused(shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    tar = sorted((copy / "train").glob("*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[1000] ^= 0xFF
    tar.write_bytes(bytes(data))
    with pytest.raises(BadShards, match="sha256 mismatch"):
        resolve_urls(str(copy))
    urls, samples = resolve_urls(str(shards))
    assert len(urls) == 2 and samples == 8
