"""nsneg-analyze texture-classes: the pixel descriptor, the held-out split, and the command end to end
on a real shard set and a checkpoint in the paper's released format, every number checked against a
direct computation."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nsneg.datasets_manifest.format.constants import IMAGENET_MEAN, IMAGENET_STD
from nsneg.datasets_manifest.format.manifest import load_manifest
from nsneg.datasets_manifest.format.sample_reader import iter_samples
from nsneg.trainer import checkpoint
from nsneg.trainer.analysis import texture_classes, texture_classes_report
from nsneg.trainer.eval import probes, stats
from nsneg_testing import keep_sample
from nsneg_testing.analysis import CLASSES, SIZE, direct_counts, write_tree


def texture_classes_command(invoke, shards, out, *args):
    """``nsneg-analyze texture-classes --shards SHARDS ARGS --out-dir OUT`` at the tests' small
    image size, with few epochs and no loader workers."""
    small = ["--image-size", SIZE, "--epochs", 20, "--batch-size", 8, "--workers", 0]
    return invoke("texture-classes", "--shards", shards, *small, *args, "--out-dir", out)


def test_pixel_statistics_reads_colour_and_orientation():
    x = torch.zeros(2, 3, 32, 32)
    x[0, :, :, ::4] = 1.0  # vertical stripes: gradients along x (orientation bin 0)
    x[1, :, ::4, :] = 1.0  # horizontal stripes: gradients along y (orientation bin 4)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    normalised = (x - mean) / std
    out = texture_classes.PixelStatistics()(normalised)
    assert out.shape == (2, texture_classes.PixelStatistics.DIM) == (2, 48)
    colour = out[:, :24].view(2, 3, 8)
    assert torch.allclose(colour.sum(dim=2), torch.ones(2, 3))
    assert torch.allclose(
        colour[:, :, 7], torch.full((2, 3), 0.25)
    )  # a quarter of the pixels are white
    assert torch.allclose(colour[:, :, 0], torch.full((2, 3), 0.75))
    fine = out[:, 24:32]
    assert (
        fine[0].argmax() == 0 and fine[1].argmax() == 4 and fine[0, 4] < 1e-6 and fine[1, 0] < 1e-6
    )  # round-off only


def test_held_out_split_is_by_key_alone():
    keys = [f"n0000000{i % 7}_{i}" for i in range(5000)]
    held = [texture_classes.is_held_out(k, 0.2) for k in keys]
    assert 0.18 < np.mean(held) < 0.22
    assert held == [texture_classes.is_held_out(k, 0.2) for k in keys]
    assert all(
        texture_classes.is_held_out(k, 0.3) for k in keys if texture_classes.is_held_out(k, 0.1)
    )  # nested fractions


# --------------------------------------------------------------------------- texture-classes


def test_texture_classes_with_released_checkpoint(invoke, shards, ckpt, tmp_path, tmp_path_factory):
    out = tmp_path / "out"
    result = texture_classes_command(
        invoke, shards, out, "--checkpoint", ckpt, "--holdout", 0.35, "--top", 2
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "texture-classes.json").read_text())
    assert all((out / f"texture-classes.{ext}").stat().st_size > 0 for ext in ("md", "json", "png"))
    assert (
        report["features"]["kind"] == "checkpoint"
        and f"frozen resnet18 backbone of {ckpt}" in result.output
    )
    assert report["features"]["image_size"] == SIZE and report["real"]["source"].startswith(
        "the shards' source photos"
    )

    # Direct computation: every sample, one at a time, through the backbone and the saved probe.
    classes = load_manifest(shards)["classes"]
    assert classes == sorted(CLASSES)
    samples = list(iter_samples(shards, "train"))
    held = [s for s in samples if texture_classes.is_held_out(s.key, 0.35)]
    assert 0 < len(held) < len(samples) and report["texture_held_out"] == len(held)
    assert report["texture_train"] == len(samples) - len(held)
    probe, info = probes.load_linear_head(out / "texture-probe.pt")
    assert info["classes"] == classes and info["image_size"] == SIZE
    backbone, _ = checkpoint.load_backbone(ckpt)
    tex_correct, tex_total = direct_counts(
        backbone, probe, [(s.texture, s.cls) for s in held], SIZE, len(classes)
    )
    real_correct, real_total = direct_counts(
        backbone, probe, [(s.source(), s.cls) for s in held], SIZE, len(classes)
    )
    rows = report["classes"]
    assert [r["wnid"] for r in rows] == classes
    assert [(r["texture_correct"], r["texture_n"]) for r in rows] == list(
        zip(tex_correct, tex_total)
    )
    assert [(r["real_correct"], r["real_n"]) for r in rows] == list(zip(real_correct, real_total))
    for r in rows:
        assert r["texture_acc"] == (
            r["texture_correct"] / r["texture_n"] if r["texture_n"] else None
        )
        assert r["group"] == ("dog breeds" if r["wnid"] in ("n02085620", "n02099849") else "rest")
    assert report["top1"]["texture_held_out"] == pytest.approx(sum(tex_correct) / len(held))
    assert report["top1"]["real"] == pytest.approx(sum(real_correct) / len(held))

    # Fine vs rest: macro means over the classes with held-out textures.
    for group in ("dog breeds", "rest"):
        accs = [
            r["texture_acc"] for r in rows if r["group"] == group and r["texture_acc"] is not None
        ]
        assert report["groups"][group]["mean_texture_acc"] == pytest.approx(np.mean(accs))
    assert "dog breeds (n02084071): held-out texture accuracy" in report["fine_vs_rest"]
    # Pooled counts with their intervals; a conclusion only when the difference's interval excludes 0.
    for group in ("dog breeds", "rest"):
        members = [r for r in rows if r["group"] == group]
        pooled = report["groups"][group]["texture_held_out"]
        assert (pooled["correct"], pooled["n"]) == (
            sum(r["texture_correct"] for r in members),
            sum(r["texture_n"] for r in members),
        )
    found = report["fine_vs_rest_comparison"]["dog breeds"]
    assert found["conclusive"] == stats.excludes_zero(found["difference"])
    assert found["conclusion"] in report["fine_vs_rest"]
    for r in rows:
        if r["texture_n"]:
            assert r["texture_interval"] == pytest.approx(
                list(stats.wilson(r["texture_correct"], r["texture_n"]))
            )
    assert report["top1"]["texture_held_out_estimate"]["n"] == len(held)
    tested = [r for r in rows if r["texture_acc"] is not None]
    most = sorted(tested, key=lambda r: (-r["texture_acc"], r["wnid"]))
    least = sorted(tested, key=lambda r: (r["texture_acc"], r["wnid"]))
    assert report["most_recognisable"] == [r["wnid"] for r in most[:2]]
    assert report["least_recognisable"] == [r["wnid"] for r in least[:2]]
    md = (out / "texture-classes.md").read_text()
    assert "## Fine-grained classes vs the rest" in md and all(w in md for w in classes)
    for name in ("texture-classes.md", "texture-classes.png"):
        keep_sample(out / name, tmp_path_factory.getbasetemp())


def test_texture_classes_default_pixels_with_val_tree(invoke, shards, tmp_path):
    val = write_tree(tmp_path / "val", 2, offset=5, classes={**CLASSES, "n09999999": "coffee.png"})
    out = tmp_path / "out"
    result = texture_classes_command(invoke, shards, out, "--val", val)
    assert result.exit_code == 0, result.output
    assert "features: pixels: colour histograms" in result.output and "n09999999" in result.output
    report = json.loads((out / "texture-classes.json").read_text())
    assert report["features"]["kind"] == "pixels" and report["real"]["dropped_classes"] == [
        "n09999999"
    ]
    assert report["real"]["samples"] == 2 * len(CLASSES)
    probe, info = probes.load_linear_head(out / "texture-probe.pt")
    assert info["arch"] == "pixels" and probe.in_features == texture_classes.PixelStatistics.DIM
    classes = sorted(CLASSES)
    val_images = [
        (Image.open(p).convert("RGB"), classes.index(p.parent.name))
        for p in sorted(val.glob("*/*.png"))
        if p.parent.name in CLASSES
    ]
    correct, total = direct_counts(
        texture_classes.PixelStatistics(), probe, val_images, SIZE, len(classes)
    )
    assert [(r["real_correct"], r["real_n"]) for r in report["classes"]] == list(
        zip(correct, total)
    )


def test_texture_classes_errors(invoke, shards, ckpt, tmp_path):
    result = invoke(
        "texture-classes", "--shards", shards, "--checkpoint", ckpt, "--features", "pixels"
    )
    assert result.exit_code == 2 and "not both" in result.output
    result = invoke("texture-classes", "--shards", tmp_path, "--out-dir", tmp_path / "o")
    assert result.exit_code == 1 and "manifest.json not found" in result.output
    result = invoke("texture-classes", "--shards", shards, "--checkpoint", tmp_path / "missing.pt")
    assert result.exit_code == 1 and "not found" in result.output


# --------------------------------------------------------------------------- the conclusion, both ways

DOG, OTHERS = (
    "n02085620",
    ["n01440764", "n03085013", "n03594734"],
)  # Chihuahua; tench, keyboard, jean


def crafted_report(dog: tuple[int, int], others: list[tuple[int, int]]) -> dict:
    """The report of crafted probe outputs: (correct, held-out textures) of the dog class and of the
    other classes, as ``per_class_counts`` gives them."""
    classes = [DOG, *OTHERS]
    counts = [dog, *others]
    correct, total = (np.array([c[i] for c in counts]) for i in (0, 1))
    body = texture_classes_report.texture_class_report(
        classes, (correct, total), None, np.full(len(classes), 10), top=2
    )
    comparison = texture_classes_report.fine_comparison(body["groups"])
    return {
        **body,
        "comparison": comparison,
        "verdict": texture_classes_report.fine_verdict(body["groups"], comparison),
    }


def test_one_dog_class_with_two_textures_concludes_nothing():
    """+33 points from 2 / 2 against 4 / 6: the interval includes zero, and the report says so."""
    report = crafted_report((2, 2), [(2, 2), (1, 2), (1, 2)])
    found = report["comparison"]["dog breeds"]
    assert found["difference"]["value"] == pytest.approx(1 - 4 / 6)
    assert found["difference"]["low"] < 0 < found["difference"]["high"] and not found["conclusive"]
    assert "the data cannot tell (the interval includes zero)" in report["verdict"]
    assert (
        "more recognisable" not in report["verdict"]
        and "less recognisable" not in report["verdict"]
    )
    assert "100.0% [34.2, 100.0] (n=2) over 1 class(es)" in report["verdict"]
    row = report["classes"][0]
    assert row["texture_interval"] == pytest.approx([0.3424, 1.0], abs=5e-5)


def test_many_textures_support_a_conclusion_both_ways():
    more = crafted_report((45, 50), [(20, 50), (25, 50), (15, 50)])
    assert more["comparison"]["dog breeds"]["conclusive"]
    assert "dog breeds are more recognisable from texture than the rest." in more["verdict"]
    less = crafted_report((5, 50), [(40, 50), (30, 50), (35, 50)])
    assert less["comparison"]["dog breeds"]["difference"]["high"] < 0
    assert "dog breeds are less recognisable from texture than the rest." in less["verdict"]
    untested = crafted_report((0, 0), [(1, 2), (1, 2), (1, 2)])
    assert "not comparable" in untested["verdict"]
