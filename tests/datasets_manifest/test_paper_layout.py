"""The paper's folder layout both ways: an export reads back through the paper trainer's pairing
rule; a folder in that layout (made here, bad files included) imports into shards that nsneg's
readers, Hugging Face ``datasets`` and Ray Data read, and resumes."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nsneg.datasets_manifest.cli import main as data_cli
from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.manifest import load_manifest, verify
from nsneg.datasets_manifest.format.sample_reader import iter_samples
from nsneg.datasets_manifest.format.skip_log import SkipLog
from nsneg.pipeline.cli import main as textures_cli
from nsneg.trainer.analysis.cli import main as analyze_cli
from nsneg_testing import PHOTOS, encode, photo
from nsneg_testing.bad_shards import make_bad_set, png_bomb

WNIDS = ("n01000001", "n01000002")


def duo_path(path: str) -> str:
    """``DuoImageNetFolder.__getitem__`` of the paper's code, verbatim."""
    return path.replace("-texture", "").replace("png", "JPEG")


@pytest.fixture
def data(cli):
    def run(*args):
        result = cli(data_cli, *args)
        assert "Traceback" not in result.output, result.output
        return result

    return run


@pytest.mark.slow
def test_an_export_reads_back_with_the_papers_pairing_rule(data, tmp_path):
    from torchvision import datasets

    shards = tmp_path / "set"
    expected = make_bad_set(shards, with_source=True)
    out, photos = tmp_path / "in4-texture", tmp_path / "in4"
    args = ["export", shards, "--to", out, "--sources-to", photos, "--max-skip-fraction", 0.9]
    result = data(*args)
    assert result.exit_code == 0, result.output
    assert (
        f"{expected['good'] + 1} textures written" in result.output
    )  # truncated source: header ok
    folder = datasets.ImageFolder(str(out / "train"))
    assert folder.classes == expected["classes"] and len(folder) == expected["good"] + 1
    samples = {s.key: s for s in iter_samples(shards, "train", SkipLog(1.0))}
    for path, target in folder.samples:
        key = Path(path).stem  # the fixture's source files are <key>.JPEG
        texture = Image.open(path)
        assert texture.size == (224, 224) and texture.mode == "RGB"
        assert np.array_equal(np.asarray(texture), np.asarray(samples[key].texture))
        assert Path(duo_path(path)).read_bytes() == samples[key].source_bytes
        assert folder.classes[target] == expected["classes"][samples[key].cls]
    again = data(*args)
    assert again.exit_code == 0 and "0 textures written" in again.output  # resumed, nothing redone
    wrong = data("export", shards, "--to", tmp_path / "textures", "--sources-to", photos)
    assert wrong.exit_code == 1 and "replacing '-texture'" in wrong.output


def paper_folder(root: Path, imagenet: Path) -> dict:
    """``root/{train,val}/<wnid>/<stem>.png`` (224 px RGB) with ImageNet's ``<stem>.JPEG`` photos,
    plus files a real folder holds that must not become samples."""
    good = 0
    for split, per_class in (("train", 3), ("val", 1)):
        for c, wnid in enumerate(WNIDS):
            for i in range(per_class):
                stem = f"{wnid}_{split}{i}"
                img = photo(PHOTOS[(c * 3 + i) % len(PHOTOS)], (224, 224))
                (root / split / wnid).mkdir(parents=True, exist_ok=True)
                (root / split / wnid / f"{stem}.png").write_bytes(files.png_bytes(np.asarray(img)))
                (imagenet / split / wnid).mkdir(parents=True, exist_ok=True)
                (imagenet / split / wnid / f"{stem}.JPEG").write_bytes(encode(photo(), "JPEG"))
                good += 1
    bad = root / "train" / WNIDS[0]
    whole = (bad / f"{WNIDS[0]}_train0.png").read_bytes()
    (bad / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (bad / "small.png").write_bytes(encode(photo(size=(100, 100))))
    (bad / "bomb.png").write_bytes(png_bomb())
    (bad / "no_photo.png").write_bytes(whole)  # no ImageNet file of that stem
    (bad / "notes.txt").write_text("not an image file: not listed")
    for name in ("truncated", "small", "bomb"):
        (imagenet / "train" / WNIDS[0] / f"{name}.JPEG").write_bytes(encode(photo(), "JPEG"))
    return {"good": good, "bad": {"truncated", "small", "bomb", "no_photo"}}


@pytest.mark.slow
def test_an_import_of_the_papers_folder_is_read_by_every_reader(data, cli, tmp_path, ray_session):
    from datasets import load_dataset

    folder, imagenet, shards = tmp_path / "imagenet-texture", tmp_path / "imagenet", tmp_path / "s"
    expected = paper_folder(folder, imagenet)
    not_layout = data("import", folder / "train", "--to", tmp_path / "x")
    assert not_layout.exit_code == 1 and "not in the paper's layout" in not_layout.output
    args = ["import", folder, "--to", shards, "--imagenet", imagenet, "--shard-size", 2]
    stopped = data(*args)
    assert stopped.exit_code == 1 and "above --max-skip-fraction" in stopped.output
    imported = data(*args, "--max-skip-fraction", 0.9)
    assert imported.exit_code == 0, imported.output
    manifest = load_manifest(shards)
    assert manifest["generator"]["external"]["layout"] == "<root>/<split>/<wnid>/<stem>.png"
    assert manifest["classes"] == list(WNIDS) and manifest["has_source"] is True
    assert verify(shards) == [] and list(manifest["splits"]) == ["train", "val"]
    skipped = {Path(s["path"]).stem: s["reason"] for s in manifest["splits"]["train"]["skipped"]}
    assert set(skipped) == expected["bad"] and "decompression bomb" in skipped["bomb"]
    assert skipped["small"].startswith("texture is 100x100")
    samples = sum(i["samples"] for i in manifest["splits"].values())
    assert samples == expected["good"]
    again = data(*args, "--max-skip-fraction", 0.9)
    assert "(0 written now)" in again.output and load_manifest(shards) == manifest

    stats = data("stats", shards, "--plot", tmp_path / "l.png", "--json", tmp_path / "s.json")
    assert stats.exit_code == 0, stats.output
    assert (
        json.loads((tmp_path / "s.json").read_text())["splits"]["train"]["bad_samples"]["skipped"]
        == 0
    )
    classes = cli(
        analyze_cli, "texture-classes", "--shards", shards, "--features", "pixels", "--epochs", 1,
        "--holdout", 0.5, "--out-dir", tmp_path / "tc", "--device", "cpu", "--workers", 0,
        "--image-size", 32,
    )  # fmt: skip
    assert classes.exit_code == 0, classes.output
    from nsneg.trainer.data import make_loader, resolve_urls

    urls, n = resolve_urls(str(shards))
    batch = next(iter(make_loader(urls, batch_size=2, image_size=32, steps=1, workers=0, seed=0)))
    assert batch[0].shape == (2, 3, 32, 32) and n == 6

    loaded = load_dataset(str(shards), cache_dir=str(tmp_path / "hf"))
    assert sum(len(s) for s in loaded.values()) == samples
    rows = ray_session.data.read_webdataset(str(shards / "train"), decoder=None).take_all()
    assert len(rows) == manifest["splits"]["train"]["samples"]

    bare = data("import", folder, "--to", tmp_path / "bare", "--max-skip-fraction", 0.9)
    assert bare.exit_code == 0 and load_manifest(tmp_path / "bare")["has_source"] is False
    paired = cli(
        textures_cli, "pair", "--textures", tmp_path / "bare", "--imagenet", imagenet, "--out",
        tmp_path / "paired", "--quiet",
    )  # fmt: skip
    assert paired.exit_code == 0 and "paired     6" in paired.output, paired.output
