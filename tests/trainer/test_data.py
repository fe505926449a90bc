"""The loader: crops (the texture gets its query's box), skipped samples, refused shards."""

import io
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from nsneg.datasets_manifest.format import files
from nsneg.trainer.crops import apply_box, crop_box, draft_for_crops
from nsneg.trainer.data import BadShards, resolve_urls, views, worker_seed
from nsneg_testing import encode, photo


def test_texture_gets_its_querys_crop_box():
    """Source == texture image: the loader's texture crop must equal the query crop pixel for pixel."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8))
    png = files.png_bytes(np.asarray(img))
    raw = {"__key__": "a", "texture.png": png, "source.img": png, "cls": b"0", "json": b"{}"}
    for q, _k, t, skipped in views(iter([raw] * 5), 64, seed=1):
        assert torch.equal(q, t) and skipped == 0
    rng = random.Random(0)
    boxes = [crop_box(300, 200, rng) for _ in range(50)]
    assert all(
        0.2 - 1e-6 <= fraction <= 1 and 3 / 4 - 0.02 <= ratio <= 4 / 3 + 0.02
        for fraction, ratio, _, _ in boxes
    )
    assert apply_box(img, boxes[0], 48).shape == (3, 48, 48)


def test_undecodable_samples_are_skipped_counted_and_named(caplog):
    good = {
        "__key__": "g",
        "texture.png": files.png_bytes(np.zeros((224, 224, 3), np.uint8)),
        "cls": b"0",
        "json": b"{}",
    }
    good["source.img"] = good["texture.png"]
    bad = {
        **good,
        "__key__": "b",
        "__url__": "shards/train/x-000001.tar",
        "source.img": b"not an image",
    }
    with caplog.at_level("WARNING", logger="nsneg.datasets_manifest.format.skip_log"):
        counts = [s for *_, s in views(iter([good, bad, bad, good, bad]), 32, seed=0)]
    assert counts == [0, 2]
    named = [r.getMessage() for r in caplog.records if "skipped sample" in r.getMessage()]
    assert len(named) == 3 and all("b in shard shards/train/x-000001.tar" in m for m in named)


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
    assert (len(urls), samples) == (3, 6)  # the suite's set: 6 samples in shards of 2


def jpeg(size: tuple[int, int], quality: int = 90) -> bytes:
    return encode(photo("chelsea.png", size), "JPEG", quality=quality)


def test_jpeg_is_decoded_downscaled_only_as_far_as_the_crops_allow():
    data = jpeg((480, 400))
    whole = (1.0, 480 / 400, 0.5, 0.5)
    img = Image.open(io.BytesIO(data))
    draft_for_crops(img, [whole], 48)  # 400 px shortest side for 48 px out: 1/8 keeps 50 >= 48
    assert img.convert("RGB").size == (60, 50)
    img = Image.open(io.BytesIO(data))
    draft_for_crops(img, [whole, (0.2, 1.0, 0.5, 0.5)], 48)  # a 196 px crop allows 1/4 only
    assert img.convert("RGB").size == (120, 100)
    img = Image.open(io.BytesIO(data))
    draft_for_crops(img, [(0.2, 1.0, 0.5, 0.5)], 224)  # would lose pixels: decoded whole
    assert img.convert("RGB").size == (480, 400)
    png = Image.open(io.BytesIO(files.png_bytes(np.zeros((400, 480, 3), np.uint8))))
    draft_for_crops(png, [whole], 48)
    assert png.convert("RGB").size == (480, 400)  # not a JPEG: untouched


def test_drafted_crops_match_full_decodes_closely():
    data = jpeg((500, 375))
    png = files.png_bytes(np.zeros((64, 64, 3), np.uint8))
    raw = {"__key__": "a", "texture.png": png, "source.img": data, "cls": b"0", "json": b"{}"}
    full = Image.open(io.BytesIO(data)).convert("RGB")
    rng = random.Random(worker_seed(3))
    for q, k, _t, _skipped in views(iter([raw] * 6), 32, seed=3):
        box_q, box_k = crop_box(*full.size, rng), crop_box(*full.size, rng)
        diff = lambda view, box: (view.float() - apply_box(full, box, 32).float()).abs().mean()  # noqa: E731
        assert diff(q, box_q) < 4 and diff(k, box_k) < 4  # of 255
        assert diff(q, box_k) > 3 * diff(
            q, box_q
        )  # while another crop of the same photo is far off


def test_image_folder_batches_repeat_from_their_seed_and_unreadable_files_are_counted(
    texture_shards, tmp_path
):
    from pathlib import Path

    from nsneg.trainer.data import image_folder, make_folder_loader

    tree = Path(shutil.copytree(texture_shards[1] / "train", tmp_path / "train"))
    (tree / "n00000001" / "broken.JPEG").write_bytes(b"not an image")
    paths = image_folder(tree)
    assert len(paths) == 7 and image_folder(tmp_path / "nothing") is None
    assert image_folder(texture_shards[0]) is None  # a shard set is not an image folder

    def batches(seed):
        loader = make_folder_loader(
            paths, batch_size=3, image_size=24, steps=4, workers=0, seed=seed
        )
        return list(loader)

    first, again = batches(1), batches(1)
    assert len(first) == 4
    for (q, k, t, skipped), (q2, k2, _t2, skipped2) in zip(first, again):
        assert q.shape == k.shape == (3, 3, 24, 24) and q.dtype == torch.uint8 and t.shape == (3, 0)
        assert torch.equal(q, q2) and torch.equal(k, k2) and list(skipped) == list(skipped2)
    assert sum(int(b[3].sum()) for b in first) >= 1  # 12 draws from 7 files: the broken one came up
    assert not torch.equal(first[0][0], batches(2)[0][0])
