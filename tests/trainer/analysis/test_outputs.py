"""Default output folders of nsneg-analyze: beside the checkpoint (not the working folder), named
after the model, never reused for another model's report, and ``--compare`` beside an earlier
report."""

import json
import shutil

import pytest
from PIL import Image

from nsneg_testing.analysis import SIZE

SMALL = ["--image-size", SIZE, "--batch-size", 8, "--workers", 0]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_shape_bias_defaults_to_its_checkpoint_folder_and_never_overwrites_another(
    invoke, shards, ckpt, head, in_tmp
):
    args = ["--linear-head", head, "--from-shards", shards, "--n", 6, *SMALL]
    first = invoke("shape-bias", "--checkpoint", ckpt, *args)
    assert first.exit_code == 0, first.output
    own = ckpt.parent / "shape-bias-moco_v2_released" / "shape-bias.json"
    assert not (in_tmp / "shape-bias").exists()
    report = json.loads(own.read_text())
    assert report["name"] == "moco_v2_released" and report["evaluated"] == str(ckpt.resolve())
    decided = report["counts"]["shape"] + report["counts"]["texture"]
    assert report["shape_bias_estimate"]["n"] == decided and report["chance"]["shape_bias"] == 0.5
    assert "chance (random decisions)" in first.output and "(n=" in first.output
    before = own.read_bytes()
    # Rerunning the same checkpoint replaces its own report.
    assert invoke("shape-bias", "--checkpoint", ckpt, *args).exit_code == 0

    # Another checkpoint's report folder given as --out-dir: refused, nothing touched.
    twin = in_tmp / "elsewhere" / ckpt.name
    twin.parent.mkdir()
    shutil.copyfile(ckpt, twin)
    refused = invoke("shape-bias", "--checkpoint", twin, "--out-dir", own.parent, *args)
    assert refused.exit_code == 1
    assert f"is the report of {ckpt.resolve()}, not of {twin.resolve()}" in refused.output
    assert own.read_bytes() == before
    assert not (own.parent / "cue-conflict-from-shards" / "x").exists()

    # With its own name it gets its own folder, and compares itself with the first.
    other = invoke("shape-bias", "--checkpoint", twin, "--name", "twin", "--compare", own, *args)
    assert other.exit_code == 0, other.output
    md = (twin.parent / "shape-bias-twin" / "shape-bias.md").read_text()
    assert "## Compared" in md and "| twin |" in md and "| moco_v2_released |" in md
    assert (
        "The evaluations differ only in the checkpoints' weights." in md
    )  # same images, same head
    assert "vs twin" in other.output
    bad = invoke("shape-bias", "--checkpoint", twin, "--compare", head, *args)
    assert bad.exit_code == 2 and "is not readable JSON" in bad.output


@pytest.mark.slow
def test_texture_classes_defaults_to_its_model_folder_and_compares(invoke, shards, ckpt, in_tmp):
    args = ["--shards", shards, "--epochs", 5, *SMALL]
    pixels = invoke("texture-classes", *args)
    assert pixels.exit_code == 0, pixels.output
    pixels_json = in_tmp / "texture-classes" / f"pixels-{shards.name}" / "texture-classes.json"
    report = json.loads(pixels_json.read_text())
    assert report["evaluated"] == f"pixels features of {shards.resolve()}"
    assert "chance 16.7%" in pixels.output and "(Wilson 95%)" in pixels.output  # 6 classes
    assert report["batch_size_requested"] == 8 and report["batch_size"] == min(
        8, report["texture_train"]
    )

    ours = invoke("texture-classes", "--checkpoint", ckpt, "--compare", pixels_json, *args)
    assert ours.exit_code == 0, ours.output
    beside = ckpt.parent / "texture-classes-moco_v2_released"
    md = (beside / "texture-classes.md").read_text()
    assert "## Compared" in md and f"| pixels-{shards.name} |" in md
    assert "* features: moco_v2_released frozen resnet18 backbone of" in md
    assert pixels_json.exists() and json.loads(pixels_json.read_text()) == report  # untouched
    # The plot gains a panel of both models' top-1s.
    with (
        Image.open(pixels_json.with_suffix(".png")) as alone,
        Image.open(beside / "texture-classes.png") as both,
    ):
        assert both.width > alone.width + 300 and both.height == alone.height

    # A pixels analysis of another shard set with the same folder name may not take its place.
    twin = in_tmp / "other" / shards.name
    shutil.copytree(shards, twin)
    refused = invoke("texture-classes", "--shards", twin, "--epochs", 5, *SMALL)
    assert refused.exit_code == 1 and "is the report of pixels features of" in refused.output
